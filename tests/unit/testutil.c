/* Shared helpers for the store tests; see testutil.h. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

m3_layout tu_layout_m3_14(void) {
  m3_layout l;
  memset(&l, 0, sizeof l);
  l.spec = M3_SPEC_MEMORY3;
  l.codec_kind = M3_CODEC_FAISS;
  l.code_bytes = 14;
  l.codec_fp = 0x5eed0000c0dec0deull;
  return l;
}

m3_layout tu_layout_small(void) {
  m3_layout l = tu_layout_m3_14();
  l.spec = (m3_spec){2, 2, 8, 16};
  l.code_bytes = 4;
  l.emb_dim = 8;
  return l;
}

m3_layout tu_layout_m3_bf16(void) {
  m3_layout l;
  memset(&l, 0, sizeof l);
  l.spec = M3_SPEC_MEMORY3;
  l.codec_kind = M3_CODEC_RAW_BF16;
  l.code_bytes = 160;
  l.codec_fp = 0;
  return l;
}

void tu_text(char *buf, size_t cap, uint64_t id, uint32_t version) {
  if (version == 0)
    snprintf(buf, cap, "chunk %llu", (unsigned long long)id);
  else
    snprintf(buf, cap, "chunk %llu version %u", (unsigned long long)id, version);
}

void tu_mem_make(tu_mem *m, const m3_layout *l, uint64_t id, uint32_t version) {
  size_t npos = m3_spec_positions(&l->spec), ncode = m3_layout_codes_bytes(l);
  memset(m, 0, sizeof *m);
  m->pos = malloc(npos * sizeof *m->pos);
  m->codes = malloc(ncode);
  assert_non_null(m->pos);
  assert_non_null(m->codes);
  uint64_t st = id * 0x100000001B3ull + version * 0x9E37ull + 12345;
  for (size_t i = 0; i < npos; i++) m->pos[i] = (uint16_t)(m3t_rand(&st) % 4096);
  for (size_t i = 0; i < ncode; i += 8) {
    uint64_t r = m3t_rand(&st);
    size_t k = ncode - i < 8 ? ncode - i : 8;
    memcpy(m->codes + i, &r, k);
  }
  tu_text(m->text, sizeof m->text, id, version);
  m->in.chunk_id = id;
  m->in.chunk_len = (uint32_t)(64 + id % 449 + version);
  m->in.positions = m->pos;
  m->in.codes = m->codes;
  m->in.text = m->text;
  m->in.text_len = strlen(m->text);
}

void tu_mem_free(tu_mem *m) {
  free(m->pos);
  free(m->codes);
  m->pos = NULL;
  m->codes = NULL;
}

uint8_t *tu_expected(const m3_layout *l, uint64_t id, uint32_t version, size_t *len) {
  tu_mem m;
  tu_mem_make(&m, l, id, version);
  size_t size = m3_record_size(l, m.in.text_len);
  uint8_t *buf = malloc(size);
  assert_non_null(buf);
  long k = m3_record_encode(buf, size, l, &m.in);
  tu_mem_free(&m);
  if (k != (long)size) fail_msg("encode of %llu: %ld, want %zu", (unsigned long long)id, k, size);
  *len = size;
  return buf;
}

int tu_put_range(m3_store *s, uint64_t first, size_t n, uint32_t version) {
  const m3_layout *l = m3_store_layout(s);
  tu_mem *m = calloc(n, sizeof *m);
  m3_record_in *in = calloc(n, sizeof *in);
  assert_non_null(m);
  assert_non_null(in);
  for (size_t i = 0; i < n; i++) {
    tu_mem_make(&m[i], l, first + i, version);
    in[i] = m[i].in;
  }
  int rc = m3_store_put(s, in, n);
  for (size_t i = 0; i < n; i++) tu_mem_free(&m[i]);
  free(m);
  free(in);
  return rc;
}

void tu_check_fetch(m3_store *s, uint64_t id, uint32_t version) {
  size_t cap = m3_store_fetch_cap(s), len;
  void *buf = m3_store_buf_alloc(s, cap);
  assert_non_null(buf);
  m3_fetch_item it = {.chunk_id = id, .buf = buf, .cap = cap};
  CHECK_OK(m3_store_fetch(s, &it, 1));
  if (it.status != 0)
    fail_msg("fetch %llu: status %d (%s), want 0: %s", (unsigned long long)id, it.status,
             m3_err_name(it.status), m3_errmsg());
  uint8_t *want = tu_expected(m3_store_layout(s), id, version, &len);
  size_t mem = m3_record_mem_size(m3_store_layout(s));
  CHECK_U64(it.len, mem);
  assert_non_null(it.data);
  if (memcmp(it.data, want, mem) != 0) {
    size_t i = 0;
    while (it.data[i] == want[i]) i++;
    fail_msg("fetch %llu v%u: byte %zu is %02x, want %02x", (unsigned long long)id, version, i,
             it.data[i], want[i]);
  }
  char *text = NULL;
  size_t tlen = 0;
  CHECK_OK(m3_store_get_text(s, id, &text, &tlen));
  char wt[64];
  tu_text(wt, sizeof wt, id, version);
  assert_string_equal(text, wt);
  CHECK_U64(tlen, strlen(wt));
  free(text);
  free(want);
  free(buf);
}

void tu_opts(m3_store_options *o, const m3_layout *l, int create, uint64_t segment_bytes) {
  m3_store_options_init(o);
  o->layout = *l;
  o->create = create;
  if (segment_bytes) o->segment_bytes = segment_bytes;
}

m3_store *tu_open(const char *dir, const m3_layout *l, int create, uint64_t segment_bytes) {
  m3_store_options o;
  tu_opts(&o, l, create, segment_bytes);
  m3_store *s = NULL;
  CHECK_OK(m3_store_open(dir, &o, &s));
  return s;
}

/* M3_SOAK_SCALE (the user's knob: 1 in CI, 10+ for a real soak) times
 * M3_SOAK_FACTOR (set by a test's `slow` registration). */
uint64_t tu_count_segment_files(const char *dir, uint64_t max_bytes) {
  DIR *d = opendir(dir);
  if (d == NULL) fail_msg("open directory %s: %s", dir, strerror(errno));
  uint64_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len < 9 || strncmp(e->d_name, "seg-", 4) != 0 || strcmp(e->d_name + len - 4, ".m3s") != 0)
      continue;
    char p[4400];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (stat(p, &st) != 0) fail_msg("stat %s: %s", p, strerror(errno));
    if (max_bytes == 0 || (uint64_t)st.st_size <= max_bytes) n++;
  }
  closedir(d);
  return n;
}

int tu_scale(void) {
  const char *s = getenv("M3_SOAK_SCALE"), *f = getenv("M3_SOAK_FACTOR");
  int v = s ? atoi(s) : 1, k = f ? atoi(f) : 1;
  return (v > 0 ? v : 1) * (k > 0 ? k : 1);
}

static int dump_one(void *ud, uint64_t id, const m3_location *loc) {
  tu_dump *d = ud;
  if (d->n == d->cap) {
    d->cap = d->cap ? 2 * d->cap : 64;
    d->v = realloc(d->v, d->cap * sizeof *d->v);
    assert_non_null(d->v);
  }
  memset(&d->v[d->n], 0, sizeof d->v[d->n]);
  d->v[d->n].id = id;
  d->v[d->n].loc = *loc;
  d->n++;
  return 0;
}

void tu_dump_store(m3_store *s, tu_dump *d) {
  memset(d, 0, sizeof *d);
  CHECK_OK(m3_store_iterate(s, dump_one, d));
  size_t cap = m3_store_fetch_cap(s);
  void *buf = m3_store_buf_alloc(s, cap);
  assert_non_null(buf);
  for (size_t i = 0; i < d->n; i++) {
    tu_entry *e = &d->v[i];
    if (i > 0 && e->id <= d->v[i - 1].id)
      fail_msg("iterate: id %llu after %llu (not increasing)", (unsigned long long)e->id,
               (unsigned long long)d->v[i - 1].id);
    CHECK_OK(m3_store_get_text(s, e->id, &e->text, &e->text_len));
    m3_fetch_item it = {.chunk_id = e->id, .buf = buf, .cap = cap};
    CHECK_OK(m3_store_fetch(s, &it, 1));
    if (it.status != 0)
      fail_msg("dump: fetch %llu: %s: %s", (unsigned long long)e->id, m3_err_name(it.status),
               m3_errmsg());
    e->mem_len = it.len;
    e->mem = malloc(it.len);
    assert_non_null(e->mem);
    memcpy(e->mem, it.data, it.len);
  }
  free(buf);
  CHECK_OK(m3_store_stats_get(s, &d->st));
}

void tu_dump_compare(const tu_dump *a, const tu_dump *b, int with_locations) {
  CHECK_U64(a->n, b->n);
  for (size_t i = 0; i < a->n; i++) {
    const tu_entry *x = &a->v[i], *y = &b->v[i];
    CHECK_U64(x->id, y->id);
    if (with_locations) {
      if (x->loc.segment != y->loc.segment || x->loc.offset != y->loc.offset ||
          x->loc.mem_len != y->loc.mem_len || x->loc.rec_len != y->loc.rec_len ||
          x->loc.mem_crc != y->loc.mem_crc || x->loc.text_crc != y->loc.text_crc)
        fail_msg("chunk %llu: location seg %u off %llu mem %u rec %u != seg %u off %llu mem %u rec %u",
                 (unsigned long long)x->id, x->loc.segment, (unsigned long long)x->loc.offset,
                 x->loc.mem_len, x->loc.rec_len, y->loc.segment,
                 (unsigned long long)y->loc.offset, y->loc.mem_len, y->loc.rec_len);
    } else {
      CHECK_U64(x->loc.mem_crc, y->loc.mem_crc);
      CHECK_U64(x->loc.text_crc, y->loc.text_crc);
      CHECK_U64(x->loc.rec_len, y->loc.rec_len);
    }
    CHECK_U64(x->text_len, y->text_len);
    assert_string_equal(x->text, y->text);
    CHECK_U64(x->mem_len, y->mem_len);
    if (memcmp(x->mem, y->mem, x->mem_len) != 0)
      fail_msg("chunk %llu: fetched bytes differ", (unsigned long long)x->id);
  }
  CHECK_U64(a->st.records, b->st.records);
  CHECK_U64(a->st.payload_bytes, b->st.payload_bytes);
  CHECK_U64(a->st.record_bytes, b->st.record_bytes);
  CHECK_U64(a->st.text_bytes, b->st.text_bytes);
  if (with_locations) {
    CHECK_U64(a->st.segments, b->st.segments);
    CHECK_U64(a->st.segment_bytes, b->st.segment_bytes);
    CHECK_U64(a->st.dead_bytes, b->st.dead_bytes);
  }
}

void tu_dump_free(tu_dump *d) {
  for (size_t i = 0; i < d->n; i++) {
    free(d->v[i].text);
    free(d->v[i].mem);
  }
  free(d->v);
  memset(d, 0, sizeof *d);
}

/* ---- child processes ------------------------------------------------- */

void tu_child_start(tu_child *c, char *const argv[], char *const env[]) {
  int in[2], out[2];
  memset(c, 0, sizeof *c);
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
    fail_msg("pipe: %s", strerror(errno));
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (getenv("M3_TEST_VERBOSE") == NULL) {
      int dn = open("/dev/null", O_WRONLY);
      if (dn >= 0) dup2(dn, 2);
    }
    for (int i = 0; env && env[i]; i++) putenv(env[i]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  c->pid = pid;
  c->in_fd = in[1];
  c->out_fd = out[0];
  c->cap = 4096;
  c->out = malloc(c->cap);
  c->out[0] = '\0';
}

static int child_read_some(tu_child *c) {
  if (c->len + 4096 + 1 > c->cap) {
    c->cap *= 2;
    c->out = realloc(c->out, c->cap);
  }
  ssize_t k = read(c->out_fd, c->out + c->len, c->cap - c->len - 1);
  if (k < 0 && errno == EINTR) return 0;
  if (k <= 0) return 1;
  c->len += (size_t)k;
  c->out[c->len] = '\0';
  return 0;
}

int tu_child_read_until(tu_child *c, long long deadline_ms) {
  for (;;) {
    long long left = deadline_ms - m3t_now_ms();
    if (left < 0) return 0;
    struct pollfd p = {c->out_fd, POLLIN, 0};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    if (child_read_some(c)) return 1;
  }
}

int tu_child_wait_line(tu_child *c, const char *prefix, long long timeout_ms) {
  long long deadline = m3t_now_ms() + timeout_ms;
  size_t plen = strlen(prefix);
  for (;;) {
    for (const char *p = c->out; p && *p;) {
      const char *nl = strchr(p, '\n');
      if (nl == NULL) break;
      if ((size_t)(nl - p) >= plen && !strncmp(p, prefix, plen)) return 1;
      p = nl + 1;
    }
    if (m3t_now_ms() >= deadline) return 0;
    long long step = m3t_now_ms() + 20;
    if (tu_child_read_until(c, step < deadline ? step : deadline)) {
      /* EOF: one last look */
      for (const char *p = c->out; *p;) {
        const char *nl = strchr(p, '\n');
        if (nl == NULL) break;
        if ((size_t)(nl - p) >= plen && !strncmp(p, prefix, plen)) return 1;
        p = nl + 1;
      }
      return 0;
    }
  }
}

int tu_child_finish(tu_child *c, int kill_it) {
  if (c->in_fd >= 0) {
    close(c->in_fd);
    c->in_fd = -1;
  }
  if (kill_it) kill(c->pid, SIGKILL);
  int status = 0;
  while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!child_read_some(c)) {
  }
  close(c->out_fd);
  c->out_fd = -1;
  return status;
}

void tu_child_free(tu_child *c) {
  if (c->in_fd >= 0) close(c->in_fd);
  if (c->out_fd >= 0) close(c->out_fd);
  free(c->out);
  memset(c, 0, sizeof *c);
}

int tu_teardown(void **state) {
  tu_fixture *f = *state;
  m3_store_close(f->s);
  m3t_rmrf(f->dir);
  free(f->dir);
  free(f);
  return 0;
}
