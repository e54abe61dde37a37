/*
 * The replicas of a cluster handle: per replica a pool of m3_client
 * connections (lazily opened, bounded, LIFO so that warm connections are
 * reused), health state with exponential backoff and the slow mark of
 * lost hedge races, the order a call tries a shard's replicas in, the
 * reference layout that every server must match, and the prober thread
 * that brings backed-off replicas back after a Hello and a Health call.
 * Owns cl->shards (each replica's fields under its mu) and cl->reps.
 *
 * Messages of failures here say why, not which replica: callers hold the
 * replica and name it (as the error's shard and replica fields, and in
 * the text of per-shard lists).
 *
 * Workload: a handful of shards x replicas, tens of worker threads, calls of
 * a few ms; every lock here is held for a few instructions, never across
 * I/O.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "m3/error.h"
#include "m3/log.h"

static void *prober_main(void *arg);

/* ---- init / free ---------------------------------------------------- */

int m3__replicas_init(m3_cluster *cl, const m3_cluster_map *map) {
  const m3_cluster_options *o = &cl->o;
  m3__reps *rs = &cl->reps;
  pthread_mutex_init(&rs->mu, NULL);
  m3__cond_init(&rs->cv);
  if (o->check_fingerprint) {
    rs->want_fp_set = 1;
    rs->want_fp = o->codec_fingerprint;
    snprintf(rs->ref_from, sizeof rs->ref_from, "the worker's codec fingerprint %016llx",
             (unsigned long long)o->codec_fingerprint);
  } else if (map->has_fp) {
    rs->want_fp_set = 1;
    rs->want_fp = map->fp;
    snprintf(rs->ref_from, sizeof rs->ref_from, "the cluster map's codec_fingerprint %016llx",
             (unsigned long long)map->fp);
  }
  cl->shards = calloc(map->n_shards, sizeof *cl->shards);
  if (cl->shards == NULL) return M3_ENOMEM;
  cl->n_shards = map->n_shards;
  for (uint32_t s = 0; s < map->n_shards; s++) {
    m3__shard *sh = &cl->shards[s];
    sh->r = calloc(map->n_replicas[s], sizeof *sh->r);
    if (sh->r == NULL) return M3_ENOMEM;
    sh->n = map->n_replicas[s];
    atomic_init(&sh->rr, 0);
    for (uint32_t r = 0; r < sh->n; r++) {
      m3__replica *rep = &sh->r[r];
      snprintf(rep->addr, sizeof rep->addr, "%s", map->replicas[s][r]);
      rep->shard = s;
      rep->idx = r;
      pthread_mutex_init(&rep->mu, NULL);
      m3__cond_init(&rep->cv);
      rep->idle = calloc((size_t)o->max_conns_per_replica, sizeof *rep->idle);
      if (rep->idle == NULL) return M3_ENOMEM;
    }
  }
  return 0;
}

int m3__replicas_start_prober(m3_cluster *cl) {
  if (cl->o.probe_interval_ms <= 0) return 0;
  if (pthread_create(&cl->reps.prober, NULL, prober_main, cl) != 0)
    return m3__seterr(M3_EIO, "m3_cluster_open: cannot start the prober thread");
  cl->reps.prober_on = 1;
  return 0;
}

void m3__replicas_stop_prober(m3_cluster *cl) {
  pthread_mutex_lock(&cl->reps.mu);
  cl->reps.stop = 1;
  pthread_cond_broadcast(&cl->reps.cv);
  pthread_mutex_unlock(&cl->reps.mu);
  if (cl->reps.prober_on) pthread_join(cl->reps.prober, NULL);
  cl->reps.prober_on = 0;
}

void m3__replicas_free(m3_cluster *cl) {
  for (uint32_t s = 0; cl->shards && s < cl->n_shards; s++) {
    m3__shard *sh = &cl->shards[s];
    for (uint32_t r = 0; sh->r && r < sh->n; r++) {
      m3__replica *rep = &sh->r[r];
      for (unsigned i = 0; i < rep->n_idle; i++) {
        m3_client_close(rep->idle[i]->c);
        free(rep->idle[i]);
      }
      free(rep->idle);
      pthread_mutex_destroy(&rep->mu);
      pthread_cond_destroy(&rep->cv);
    }
    free(sh->r);
  }
  free(cl->shards);
  cl->shards = NULL;
  pthread_mutex_destroy(&cl->reps.mu);
  pthread_cond_destroy(&cl->reps.cv);
}

/* ---- connections ---------------------------------------------------- */

static void layout_str(const m3_client_info *i, char *buf, size_t cap) {
  char shape[64];
  m3_spec_format(&i->layout.spec, shape, sizeof shape);
  snprintf(buf, cap, "%s codec %u x %u B fingerprint %016llx, %u-dim embeddings", shape,
           i->layout.codec_kind, i->layout.code_bytes, (unsigned long long)i->layout.codec_fp,
           i->layout.emb_dim);
}

/* Connect to rep and check its layout against the reference (or, with
 * may_set_ref and none yet, make it the reference). */
static int dial(m3_cluster *cl, m3__replica *rep, int timeout_ms, int may_set_ref,
                m3_client **out) {
  m3_client_options co;
  m3_client_options_init(&co);
  co.connect_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
  co.call_timeout_ms = cl->o.try_timeout_ms;
  co.token = cl->token;
  co.client_name = cl->client_name;
  co.tls_ca = cl->tls_ca;
  co.tls_cert = cl->tls_cert;
  co.tls_key = cl->tls_key;
  co.tls_name = cl->tls_name;
  co.codec_fingerprint = cl->o.codec_fingerprint;
  co.check_fingerprint = cl->o.check_fingerprint;
  m3_client *c = NULL;
  int rc = m3_client_connect(rep->addr, &co, &c);
  if (rc) {
    return rc; /* m3_errmsg() names the address and says why */
  }
  const m3_client_info *in = m3_client_info_get(c);
  char have[160], want[160];
  pthread_mutex_lock(&cl->reps.mu);
  if (!cl->reps.have_ref) {
    if (cl->reps.want_fp_set && in->layout.codec_fp != cl->reps.want_fp) {
      pthread_mutex_unlock(&cl->reps.mu);
      layout_str(in, have, sizeof have);
      m3_client_close(c);
      return m3__seterr(M3_EFINGERPRINT,
                        "refused: m3-server %s holds %s; the cluster expects %s", rep->addr,
                        have, cl->reps.ref_from);
    }
    if (!may_set_ref) {
      pthread_mutex_unlock(&cl->reps.mu);
      m3_client_close(c);
      return m3__seterr(M3_EBUSY, "no reference layout yet");
    }
    cl->reps.ref = *in;
    cl->reps.have_ref = 1;
    if (!cl->reps.want_fp_set)
      snprintf(cl->reps.ref_from, sizeof cl->reps.ref_from, "the layout of the first server, %s",
               rep->addr);
  } else if (!m3_layout_equal(&in->layout, &cl->reps.ref.layout) ||
             in->memory_bytes != cl->reps.ref.memory_bytes) {
    layout_str(in, have, sizeof have);
    layout_str(&cl->reps.ref, want, sizeof want);
    pthread_mutex_unlock(&cl->reps.mu);
    m3_client_close(c);
    return m3__seterr(M3_EFINGERPRINT,
                      "refused: m3-server %s holds %s; the cluster's reference (%s) is %s",
                      rep->addr, have, cl->reps.ref_from, want);
  }
  pthread_mutex_unlock(&cl->reps.mu);
  M3__COUNT(cl, connects, 1);
  if (in->shard != rep->shard)
    M3_DEBUG("cluster", "m3-server %s announces shard %u, the map says %u", rep->addr, in->shard,
             rep->shard);
  *out = c;
  return 0;
}

int m3__conn_get(m3_cluster *cl, m3__replica *rep, int64_t deadline, m3__pconn **out,
                 int *reused) {
  *out = NULL;
  *reused = 0;
  pthread_mutex_lock(&rep->mu);
  for (;;) {
    if (rep->n_idle > 0) {
      *out = rep->idle[--rep->n_idle];
      *reused = 1;
      pthread_mutex_unlock(&rep->mu);
      return 0;
    }
    if (rep->n_open < (unsigned)cl->o.max_conns_per_replica) break;
    struct timespec ts;
    m3__abs_time(deadline, &ts);
    if (pthread_cond_timedwait(&rep->cv, &rep->mu, &ts) != 0 && m3__now_ms() >= deadline) {
      pthread_mutex_unlock(&rep->mu);
      return m3__seterr(M3_EBUSY, "all %d connections busy until the deadline",
                        cl->o.max_conns_per_replica);
    }
  }
  rep->n_open++;
  pthread_mutex_unlock(&rep->mu);

  int64_t left = deadline - m3__now_ms();
  int t = (int)(left < cl->o.connect_timeout_ms ? left : cl->o.connect_timeout_ms);
  m3_client *c = NULL;
  int rc = t > 0 ? dial(cl, rep, t, 0, &c)
                 : m3__seterr(M3_EBUSY, "deadline passed before connect");
  m3__pconn *pc = rc ? NULL : calloc(1, sizeof *pc);
  if (rc == 0 && pc == NULL) {
    m3_client_close(c);
    rc = m3__seterr(M3_ENOMEM, "out of memory");
  }
  if (rc) {
    pthread_mutex_lock(&rep->mu);
    rep->n_open--;
    pthread_cond_signal(&rep->cv);
    pthread_mutex_unlock(&rep->mu);
    return rc;
  }
  pc->c = c;
  *out = pc;
  return 0;
}

void m3__conn_put(m3_cluster *cl, m3__replica *rep, m3__pconn *pc, int keep) {
  if (pc == NULL) return;
  m3_client_counters cc;
  m3_client_counters_get(pc->c, &cc);
  M3__COUNT(cl, bytes_read, cc.bytes_read - pc->read_seen);
  pc->read_seen = cc.bytes_read;
  keep = keep && m3_client_ok(pc->c);
  pthread_mutex_lock(&rep->mu);
  if (keep && rep->n_idle < (unsigned)cl->o.max_conns_per_replica) {
    rep->idle[rep->n_idle++] = pc;
    pc = NULL;
  } else {
    rep->n_open--;
  }
  pthread_cond_signal(&rep->cv);
  pthread_mutex_unlock(&rep->mu);
  if (pc) {
    m3_client_close(pc->c);
    free(pc);
  }
}

void m3__replica_drop_idle(m3_cluster *cl, m3__replica *rep) {
  (void)cl;
  m3__pconn *drop[256];
  unsigned n = 0;
  pthread_mutex_lock(&rep->mu);
  while (rep->n_idle > 0 && n < 256) {
    drop[n++] = rep->idle[--rep->n_idle];
    rep->n_open--;
  }
  pthread_cond_broadcast(&rep->cv);
  pthread_mutex_unlock(&rep->mu);
  for (unsigned i = 0; i < n; i++) {
    m3_client_close(drop[i]->c);
    free(drop[i]);
  }
}

/* ---- health --------------------------------------------------------- */

void m3__replica_fail(m3_cluster *cl, m3__replica *rep, int refused, const char *err) {
  pthread_mutex_lock(&rep->mu);
  rep->failures++;
  rep->errors++;
  unsigned sh = rep->failures - 1 < 20 ? rep->failures - 1 : 20;
  int64_t b = (int64_t)cl->o.backoff_min_ms << sh;
  if (b > cl->o.backoff_max_ms || refused) b = cl->o.backoff_max_ms;
  int was_down = rep->down;
  rep->down = 1;
  rep->refused = refused;
  rep->down_until = m3__now_ms() + b;
  snprintf(rep->last_err, sizeof rep->last_err, "%s", err ? err : "");
  pthread_mutex_unlock(&rep->mu);
  if (!was_down)
    M3_WARN("cluster", "shard %u replica %s down for %lld ms: %s", rep->shard, rep->addr,
            (long long)b, err ? err : "");
  /* A dead server leaves every pooled connection dead. */
  m3__replica_drop_idle(cl, rep);
}

void m3__replica_slow(m3_cluster *cl, m3__replica *rep) {
  pthread_mutex_lock(&rep->mu);
  unsigned sh = rep->slow_streak < 20 ? rep->slow_streak : 20;
  rep->slow_streak++;
  int64_t b = (int64_t)cl->o.backoff_min_ms << sh;
  if (b > cl->o.backoff_max_ms) b = cl->o.backoff_max_ms;
  rep->slow_until = m3__now_ms() + b;
  pthread_mutex_unlock(&rep->mu);
  M3_DEBUG("cluster", "shard %u replica %s lost a hedge race still working: tried after the "
                      "others for %lld ms", rep->shard, rep->addr, (long long)b);
}

void m3__replica_ok(m3_cluster *cl, m3__replica *rep) {
  (void)cl;
  pthread_mutex_lock(&rep->mu);
  int was_down = rep->down;
  rep->slow_streak = 0;
  rep->slow_until = 0;
  rep->failures = 0;
  rep->down = 0;
  rep->refused = 0;
  rep->calls++;
  pthread_mutex_unlock(&rep->mu);
  if (was_down) M3_INFO("cluster", "shard %u replica %s is back", rep->shard, rep->addr);
}

uint32_t m3__replica_order(m3_cluster *cl, uint32_t shard, uint32_t *order) {
  m3__shard *sh = &cl->shards[shard];
  uint32_t n = sh->n, start = atomic_fetch_add(&sh->rr, 1) % n, nu = 0, ns = 0, nd = 0;
  int64_t until[256];
  uint32_t downs[256], slows[256];
  int64_t now = m3__now_ms();
  int probing = cl->reps.prober_on; /* set before any call, unset after */
  for (uint32_t i = 0; i < n && i < 256; i++) {
    m3__replica *rep = &sh->r[(start + i) % n];
    pthread_mutex_lock(&rep->mu);
    /* Without a prober, a replica whose backoff ended is tried again by
     * the next call as if it were up. */
    int down = rep->down && (probing || now < rep->down_until);
    int slow = now < rep->slow_until;
    int64_t u = rep->down_until;
    pthread_mutex_unlock(&rep->mu);
    if (!down && !slow) {
      order[nu++] = rep->idx;
    } else if (!down) {
      slows[ns++] = rep->idx;
    } else {
      uint32_t j = nd++;
      while (j > 0 && until[j - 1] > u) {
        until[j] = until[j - 1];
        downs[j] = downs[j - 1];
        j--;
      }
      until[j] = u;
      downs[j] = rep->idx;
    }
  }
  for (uint32_t j = 0; j < ns; j++) order[nu + j] = slows[j];
  for (uint32_t j = 0; j < nd; j++) order[nu + ns + j] = downs[j];
  return nu + ns + nd;
}

int m3__cluster_ensure_ref(m3_cluster *cl, int64_t deadline) {
  pthread_mutex_lock(&cl->reps.mu);
  int have = cl->reps.have_ref;
  pthread_mutex_unlock(&cl->reps.mu);
  if (have) return 0;
  char errs[900] = "";
  size_t len = 0;
  int refused = 0, tried = 0;
  for (uint32_t s = 0; s < cl->n_shards; s++) {
    for (uint32_t r = 0; r < cl->shards[s].n; r++) {
      m3__replica *rep = &cl->shards[s].r[r];
      int64_t left = deadline - m3__now_ms();
      if (left <= 0) goto none;
      m3_client *c = NULL;
      int rc = dial(cl, rep, (int)(left < cl->o.connect_timeout_ms ? left
                                                                   : cl->o.connect_timeout_ms),
                    1, &c);
      tried++;
      if (rc == 0) {
        m3__pconn *pc = calloc(1, sizeof *pc);
        if (pc == NULL) {
          m3_client_close(c);
          return m3__seterr(M3_ENOMEM, "out of memory");
        }
        pc->c = c;
        pthread_mutex_lock(&rep->mu);
        rep->n_open++;
        pthread_mutex_unlock(&rep->mu);
        m3__conn_put(cl, rep, pc, 1);
        return 0;
      }
      if (rc == M3_EFINGERPRINT) refused++;
      m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, m3_errmsg());
      if (len < sizeof errs - 1)
        len += (size_t)snprintf(errs + len, sizeof errs - len, "%sshard %u replica %s: %s",
                                len ? "; " : "", s, rep->addr, m3_errmsg());
      pthread_mutex_lock(&cl->reps.mu);
      have = cl->reps.have_ref; /* another thread may have got there */
      pthread_mutex_unlock(&cl->reps.mu);
      if (have) return 0;
    }
  }
none:
  if (refused && refused == tried) return m3__seterr(M3_EFINGERPRINT, "%s", errs);
  return m3__seterr(M3_EBUSY, "no server of the cluster answers: %s", errs[0] ? errs : "deadline");
}

/* ---- prober --------------------------------------------------------- */

static void probe(m3_cluster *cl, m3__replica *rep) {
  M3__COUNT(cl, probes, 1);
  m3_client *c = NULL;
  pthread_mutex_lock(&cl->reps.mu);
  int may_set_ref = !cl->reps.have_ref;
  pthread_mutex_unlock(&cl->reps.mu);
  int rc = dial(cl, rep, cl->o.connect_timeout_ms, may_set_ref, &c);
  char err[300];
  if (rc == 0) {
    int serving = 0;
    char detail[128];
    m3_client_set_timeout(c, cl->o.try_timeout_ms);
    rc = m3_client_health(c, &serving, detail, sizeof detail);
    if (rc == 0 && !serving) {
      rc = M3_EBUSY;
      snprintf(err, sizeof err, "Health: not serving (%s)", detail);
    } else if (rc) {
      const char *msg;
      m3_client_last_status(c, &msg);
      snprintf(err, sizeof err, "Health: %s", msg);
    }
  } else {
    snprintf(err, sizeof err, "%s", m3_errmsg());
  }
  if (rc) {
    m3_client_close(c);
    pthread_mutex_lock(&rep->mu);
    rep->errors--; /* a failed probe is not a failed call */
    pthread_mutex_unlock(&rep->mu);
    m3__replica_fail(cl, rep, rc == M3_EFINGERPRINT, err);
    return;
  }
  M3__COUNT(cl, probes_ok, 1);
  m3__pconn *pc = calloc(1, sizeof *pc);
  pthread_mutex_lock(&rep->mu);
  rep->failures = 0;
  rep->down = 0;
  rep->refused = 0;
  rep->n_open++;
  pthread_mutex_unlock(&rep->mu);
  M3_INFO("cluster", "shard %u replica %s is back (probe)", rep->shard, rep->addr);
  if (pc == NULL) {
    m3_client_close(c);
    pthread_mutex_lock(&rep->mu);
    rep->n_open--;
    pthread_mutex_unlock(&rep->mu);
    return;
  }
  pc->c = c;
  m3__conn_put(cl, rep, pc, 1);
}

static void *prober_main(void *arg) {
  m3_cluster *cl = arg;
  pthread_mutex_lock(&cl->reps.mu);
  while (!cl->reps.stop) {
    struct timespec ts;
    m3__abs_time(m3__now_ms() + cl->o.probe_interval_ms, &ts);
    pthread_cond_timedwait(&cl->reps.cv, &cl->reps.mu, &ts);
    if (cl->reps.stop) break;
    pthread_mutex_unlock(&cl->reps.mu);
    int64_t now = m3__now_ms();
    for (uint32_t s = 0; s < cl->n_shards; s++) {
      for (uint32_t r = 0; r < cl->shards[s].n; r++) {
        m3__replica *rep = &cl->shards[s].r[r];
        pthread_mutex_lock(&rep->mu);
        int due = rep->down && now >= rep->down_until;
        pthread_mutex_unlock(&rep->mu);
        if (due) probe(cl, rep);
      }
    }
    pthread_mutex_lock(&cl->reps.mu);
  }
  pthread_mutex_unlock(&cl->reps.mu);
  return NULL;
}

/* ---- observation ---------------------------------------------------- */

int m3_cluster_replica_get(m3_cluster *cl, uint32_t shard, uint32_t replica,
                           m3_cluster_replica_info *out) {
  memset(out, 0, sizeof *out);
  if (shard >= cl->n_shards || replica >= cl->shards[shard].n)
    return m3__seterr(M3_EINVAL, "no replica %u of shard %u", replica, shard);
  m3__replica *rep = &cl->shards[shard].r[replica];
  int64_t now = m3__now_ms();
  pthread_mutex_lock(&rep->mu);
  snprintf(out->addr, sizeof out->addr, "%s", rep->addr);
  out->up = !rep->down;
  out->failures = rep->failures;
  out->backoff_ms_left = rep->down && rep->down_until > now ? (int)(rep->down_until - now) : 0;
  out->open_conns = rep->n_open;
  out->calls = rep->calls;
  out->errors = rep->errors;
  snprintf(out->last_error, sizeof out->last_error, "%s", rep->last_err);
  pthread_mutex_unlock(&rep->mu);
  return 0;
}

void m3__cluster_ref(m3_cluster *cl, m3_client_info *out) {
  pthread_mutex_lock(&cl->reps.mu);
  *out = cl->reps.ref;
  pthread_mutex_unlock(&cl->reps.mu);
}
