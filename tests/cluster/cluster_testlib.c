/* See cluster_testlib.h. */
#include "cluster/cluster_testlib.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static cl_cluster *running[8];
static int n_running;

static const char *launcher(char *buf, size_t cap) {
  const char *src = getenv("M3_SOURCE_DIR");
  snprintf(buf, cap, "%s/deploy/local/m3-cluster", src ? src : ".");
  return buf;
}

static void down_all(void) {
  for (int i = 0; i < n_running; i++)
    if (running[i]) cl_down(running[i]);
}

void cl_up(cl_cluster *c, const char *store, const char *rundir, unsigned shards,
           unsigned replicas) {
  cl_up_args(c, store, rundir, shards, replicas, NULL);
}

void cl_up_args(cl_cluster *c, const char *store, const char *rundir, unsigned shards,
                unsigned replicas, const char *server_flags) {
  char bin[4096], sh[4096];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  if (access(bin, X_OK) != 0) {
    print_message("no m3-server at %s: skipped\n", bin);
    exit(77);
  }
  memset(c, 0, sizeof *c);
  snprintf(c->dir, sizeof c->dir, "%s", rundir);
  snprintf(c->map, sizeof c->map, "%s/cluster.json", rundir);
  c->shards = shards;
  c->replicas = replicas;
  if (shards * replicas > CL_MAX_SERVERS) fail_msg("too many servers");
  int rc = m3t_sh("bash %s up --store %s --shards %u --replicas %u --dir %s %s%s > %s.up.log 2>&1",
                 launcher(sh, sizeof sh), store, shards, replicas, rundir,
                 server_flags ? "-- " : "", server_flags ? server_flags : "", rundir);
  if (rc != 0) {
    m3t_sh("cat %s.up.log >&2", rundir);
    fail_msg("m3-cluster up failed (exit %d)", rc);
  }
  if (n_running == 0) atexit(down_all);
  if (n_running < 8) running[n_running++] = c;
  char path[700];
  snprintf(path, sizeof path, "%s/servers", rundir);
  FILE *f = fopen(path, "r");
  if (f == NULL) fail_msg("no %s", path);
  unsigned s, r;
  int pid, port, hport;
  char dir[600];
  while (fscanf(f, "%u %u %d %d %d %599s", &s, &r, &pid, &port, &hport, dir) == 6) {
    unsigned i = s * replicas + r;
    c->pid[i] = pid;
    snprintf(c->addr[i], sizeof c->addr[i], "127.0.0.1:%d", port);
  }
  fclose(f);
  for (unsigned i = 0; i < shards * replicas; i++)
    if (c->pid[i] <= 0) fail_msg("server %u missing from %s", i, path);
}

void cl_down(cl_cluster *c) {
  char sh[4096];
  for (int i = 0; i < n_running; i++)
    if (running[i] == c) running[i] = NULL;
  if (c->dir[0] == '\0') return;
  m3t_sh("bash %s down --dir %s >/dev/null 2>&1", launcher(sh, sizeof sh), c->dir);
  c->dir[0] = '\0';
}

/* Alive and not a zombie (a killed server whose parent, the launcher, is
 * gone waits for init to reap it). */
static int alive(int pid) {
  if (kill(pid, 0) != 0) return 0;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  return !(p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'));
}

void cl_kill(cl_cluster *c, unsigned s, unsigned r) {
  int pid = c->pid[s * c->replicas + r];
  if (kill(pid, SIGKILL) != 0 && errno != ESRCH) fail_msg("kill %d: %s", pid, strerror(errno));
  /* Not our child (the launcher detached it): wait until it is reaped. */
  long long end = m3t_now_ms() + 10000;
  while (alive(pid) && m3t_now_ms() < end) usleep(10000);
}

void cl_restart(cl_cluster *c, unsigned s, unsigned r) {
  unsigned i = s * c->replicas + r;
  const char *port = strrchr(c->addr[i], ':');
  if (port == NULL) fail_msg("no port in '%s'", c->addr[i]);
  char bin[4096], sd[700], path[800];
  m3t_bin_path(bin, sizeof bin, "m3-server");
  snprintf(sd, sizeof sd, "%s/s%ur%u", c->dir, s, r);
  snprintf(path, sizeof path, "%s/ports", sd);
  unlink(path);
  /* As m3-cluster up starts it (setsid: $! is the server itself). */
  int rc = m3t_sh("setsid %s --store %s/store --listen 127.0.0.1:%s --http off --port-file %s "
                 "--shard %u --name shard-%u-replica-%u </dev/null >>%s/log 2>&1 & "
                 "echo $! >%s/pid",
                 bin, sd, port + 1, path, s, s, r, sd, sd);
  if (rc != 0) fail_msg("restarting shard %u replica %u: exit %d", s, r, rc);
  snprintf(path, sizeof path, "%s/pid", sd);
  FILE *f = fopen(path, "r");
  int pid = 0;
  if (f == NULL || fscanf(f, "%d", &pid) != 1 || pid <= 0) fail_msg("no pid in %s", path);
  fclose(f);
  c->pid[i] = pid;
  /* The servers file is what m3-cluster down stops. */
  char list[700], line[1024], out[8192] = "";
  size_t len = 0;
  snprintf(list, sizeof list, "%s/servers", c->dir);
  if ((f = fopen(list, "r")) == NULL) fail_msg("no %s", list);
  while (fgets(line, sizeof line, f)) {
    unsigned ls, lr;
    int lpid, n = 0;
    if (sscanf(line, "%u %u %d %n", &ls, &lr, &lpid, &n) == 3 && ls == s && lr == r && n > 0)
      len += (size_t)snprintf(out + len, sizeof out - len, "%u %u %d %s", s, r, pid, line + n);
    else
      len += (size_t)snprintf(out + len, sizeof out - len, "%s", line);
    if (len >= sizeof out) fail_msg("%s too long", list);
  }
  fclose(f);
  if ((f = fopen(list, "w")) == NULL || fputs(out, f) < 0) fail_msg("cannot rewrite %s", list);
  fclose(f);
  snprintf(path, sizeof path, "%s/ports", sd);
  long long end = m3t_now_ms() + 30000;
  struct stat sb;
  while (stat(path, &sb) != 0 || sb.st_size == 0) {
    if (!alive(pid)) fail_msg("restarted shard %u replica %u exited (see %s/log)", s, r, sd);
    if (m3t_now_ms() > end) fail_msg("restarted shard %u replica %u did not listen in 30 s", s, r);
    usleep(20000);
  }
}

static int paused[CL_MAX_SERVERS * 8];
static int n_paused;

static void resume_all(void) {
  for (int i = 0; i < n_paused; i++)
    if (paused[i] > 0) kill(paused[i], SIGCONT);
}

void cl_pause(cl_cluster *c, unsigned s, unsigned r) {
  int pid = c->pid[s * c->replicas + r];
  if (n_paused == 0) atexit(resume_all); /* runs before down_all: registered later */
  if (n_paused < (int)(sizeof paused / sizeof paused[0])) paused[n_paused++] = pid;
  if (kill(pid, SIGSTOP) != 0) fail_msg("SIGSTOP %d: %s", pid, strerror(errno));
}

void cl_resume(cl_cluster *c, unsigned s, unsigned r) {
  int pid = c->pid[s * c->replicas + r];
  if (kill(pid, SIGCONT) != 0) fail_msg("SIGCONT %d: %s", pid, strerror(errno));
  for (int i = 0; i < n_paused; i++)
    if (paused[i] == pid) paused[i] = 0;
}

m3_cluster *cl_open(const cl_cluster *c, const m3_cluster_options *o) {
  m3_cluster_map *map = NULL;
  CHECK_OK(m3_cluster_map_load(c->map, &map));
  m3_cluster *cl = NULL;
  CHECK_OK(m3_cluster_open(map, o, &cl));
  m3_cluster_map_free(map);
  return cl;
}

void cl_round_init(cl_round *r, size_t nq, uint32_t k) {
  memset(r, 0, sizeof *r);
  r->nq = nq;
  r->k = k;
  r->h = calloc(nq * k, sizeof *r->h);
  if (r->h == NULL) fail_msg("out of memory");
}

void cl_round_free(cl_round *r) {
  for (size_t i = 0; r->h && i < r->nq * r->k; i++) free(r->h[i].data);
  free(r->h);
  r->h = NULL;
}

static int round_bad(cl_round *r, const char *why, const m3_client_memory *m) {
  if (r->bad++ == 0)
    snprintf(r->why, sizeof r->why, "%s (query %u rank %u chunk %llu)", why, m->query, m->rank,
             (unsigned long long)m->chunk_id);
  return 0;
}

int cl_round_on_mem(void *ud, const m3_client_memory *m) {
  cl_round *r = ud;
  if (m->query >= r->nq || m->rank >= r->k) return round_bad(r, "tag out of range", m);
  if (m->record) {
    const uint8_t *lo = m->data, *hi = m->data + m->len;
    const uint8_t *codes = m->record->codes, *pos = (const uint8_t *)m->record->positions;
    if (m->data == NULL || m->record->chunk_id != m->chunk_id || codes < lo || codes >= hi ||
        pos < lo || pos >= hi)
      return round_bad(r, "m.record is not the parse of m.data", m);
  }
  cl_hit *h = &r->h[(size_t)m->query * r->k + m->rank];
  h->seen++;
  h->id = m->chunk_id;
  h->score = m->score;
  h->status = m->status;
  free(h->data);
  h->data = NULL;
  h->len = 0;
  if (m->data) {
    h->data = malloc(m->len);
    if (h->data == NULL) fail_msg("out of memory");
    memcpy(h->data, m->data, m->len);
    h->len = m->len;
  }
  snprintf(h->text, sizeof h->text, "%s", m->text ? m->text : "");
  return 0;
}

void cl_round_expect_equal(const cl_round *want, const cl_round *got, const char *what) {
  if (want->bad || got->bad)
    fail_msg("%s: bad deliveries: %d (%s) / %d (%s)", what, want->bad, want->why, got->bad,
             got->why);
  if (want->nq != got->nq || want->k != got->k)
    fail_msg("%s: shapes differ: %zu x %u vs %zu x %u", what, want->nq, want->k, got->nq, got->k);
  for (size_t i = 0; i < want->nq * want->k; i++) {
    const cl_hit *x = &want->h[i], *y = &got->h[i];
    size_t q = i / want->k, rk = i % want->k;
    if (x->seen != y->seen || y->seen > 1)
      fail_msg("%s: query %zu rank %zu delivered %d times, want %d", what, q, rk, y->seen,
               x->seen);
    if (!x->seen) continue;
    if (x->id != y->id || x->status != y->status)
      fail_msg("%s: query %zu rank %zu: chunk %llu status %d (%.7f), want chunk %llu status %d "
               "(%.7f)", what, q, rk, (unsigned long long)y->id, y->status, (double)y->score,
               (unsigned long long)x->id, x->status, (double)x->score);
    if (x->score != y->score && (x->score - y->score > 1e-6f || y->score - x->score > 1e-6f))
      fail_msg("%s: query %zu rank %zu chunk %llu: score %.7f, want %.7f", what, q, rk,
               (unsigned long long)y->id, (double)y->score, (double)x->score);
    if (x->len != y->len || (x->len && memcmp(x->data, y->data, x->len) != 0))
      fail_msg("%s: query %zu rank %zu chunk %llu: record bytes differ (%zu vs %zu bytes)", what,
               q, rk, (unsigned long long)y->id, y->len, x->len);
    if (strcmp(x->text, y->text) != 0)
      fail_msg("%s: query %zu rank %zu chunk %llu: text '%s', want '%s'", what, q, rk,
               (unsigned long long)y->id, y->text, x->text);
  }
}

void cl_store_up(cl_cluster *c, ct_store *st, size_t n, unsigned emb_dim, unsigned shards,
                 unsigned replicas) {
  ct_store_make(st, n, emb_dim);
  char run[600];
  snprintf(run, sizeof run, "%s/run", st->dir);
  cl_up(c, st->store, run, shards, replicas);
}

void cl_store_down(cl_cluster *c, ct_store *st) {
  cl_down(c);
  ct_store_free(st);
}
