/*
 * The config file: `key = value` lines with the long option names, '#'
 * comments; command-line flags win over it; a bad line is refused naming
 * FILE:LINE.
 *  - --config with max-k = 7, max-ids = 17, name = ..., a comment and a
 *    blank line, plus the flag --max-k 9: Hello announces max_k 9 (the flag
 *    won), max_ids_per_call 17 and the name (from the file); Search with k 9
 *    is accepted and k 10 refused;
 *  - options that the file alone sets (store, listen, http, port-file) work;
 *  - an unknown key, a line without '=', a value that is not a number and
 *    a missing file each make m3-server exit 2 with a message naming the
 *    file and line (the key, for unknown keys), before it opens the store.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "srvtest.h"

#define COUNT 300
#define DIM 32

static char *dir;
static char store[4200];

static int setup(void **state) {
  (void)state;
  dir = m3t_mkdtemp("config");
  snprintf(store, sizeof store, "%s/store", dir);
  st_gen_store(store, COUNT, DIM);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  m3t_rmrf(dir);
  free(dir);
  return 0;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_config_and_flags(void **state) {
  (void)state;
  char cfg[4300], text[8192];
  snprintf(cfg, sizeof cfg, "%s/m3.conf", dir);
  snprintf(text, sizeof text,
           "# m3-server test config\n"
           "\n"
           "store = %s\n"
           "max-k = 7   # the flag says 9\n"
           "max-ids=17\n"
           "  name = from-the-config  \n"
           "idle-timeout-ms = 60000\n",
           store);
  write_file(cfg, text);
  const char *args[] = {"--config", cfg, "--max-k", "9", NULL};
  st_server srv;
  /* st_server_start passes --store too; the file's store is the same. */
  st_server_start(&srv, dir, store, args, NULL);
  st_conn c;
  st_conn_open(&c, srv.rpc_port);
  M3__HelloResponse *h;
  int st = st_hello(&c, 1, NULL, &h);
  if (st) fail_msg("Hello: %s", m3_status_name(st));
  ST_EQ_U64(h->limits->max_k, 9);
  ST_EQ_U64(h->limits->max_ids_per_call, 17);
  ST_EQ_U64(h->limits->idle_timeout_ms, 60000);
  ST_EQ_STR(h->server_name, "from-the-config");
  m3__hello_response__free_unpacked(h, NULL);
  float q[DIM];
  uint64_t seed = 1;
  m3t_rand_unit(&seed, q, DIM);
  M3__SearchResponse *s = st_search_ok(&c, 2, q, 1, DIM, 9);
  m3__search_response__free_unpacked(s, NULL);
  M3__SearchRequest req = M3__SEARCH_REQUEST__INIT;
  req.queries = st_queries(q, 1, DIM);
  req.n_queries = 1;
  req.k = 10;
  st_result r;
  st_call(&c, M3_METHOD_SEARCH, 3, 0, &req.base, NULL, 0, &r);
  ST_STATUS(r, M3__STATUS_CODE__INVALID_ARGUMENT);
  st_result_free(&r);
  st_queries_free(req.queries, 1);
  st_conn_close(&c);
  st_server_stop(&srv, 30000);
}

static void test_config_only(void **state) {
  (void)state;
  char cfg[4300], text[16384], ports[4300], log[4300];
  snprintf(cfg, sizeof cfg, "%s/only.conf", dir);
  snprintf(ports, sizeof ports, "%s/only.ports", dir);
  snprintf(log, sizeof log, "%s/only.log", dir);
  snprintf(text, sizeof text,
           "store = %s\nlisten = 127.0.0.1:0\nhttp = 127.0.0.1:0\nport-file = %s\nshard = 3\n",
           store, ports);
  write_file(cfg, text);
  const char *argv[] = {"m3-server", "--config", cfg, NULL};
  pid_t pid = st_spawn_server(argv, NULL, log);
  long long end = m3t_now_ms() + 60000;
  FILE *f;
  while ((f = fopen(ports, "r")) == NULL) {
    int ws;
    if (st_wait_pid(pid, 0, &ws)) fail_msg("m3-server --config %s exited (%#x) before listening", cfg, ws);
    if (m3t_now_ms() > end) fail_msg("no port file");
    m3t_sleep_ms(10);
  }
  int rpc = 0, http = 0;
  if (fscanf(f, "rpc=%d http=%d", &rpc, &http) != 2) fail_msg("bad port file");
  fclose(f);
  st_conn c;
  st_conn_open(&c, rpc);
  M3__HelloResponse *h;
  if (st_hello(&c, 1, NULL, &h) != 0) fail_msg("Hello failed");
  ST_EQ_U64(h->shard, 3);
  m3__hello_response__free_unpacked(h, NULL);
  st_conn_close(&c);
  ST_EQ_U64(st_http_get(http, "/healthz", NULL), 200);
  kill(pid, SIGTERM);
  int ws;
  if (!st_wait_pid(pid, 30000, &ws)) fail_msg("no exit after SIGTERM");
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) fail_msg("exit status %#x, want 0", ws);
}

/* m3-server with config text must exit 2 naming want (FILE:LINE ...). */
static void expect_refused(const char *name, const char *text, int line, const char *also) {
  char cfg[4300], log[4400], where[4400];
  snprintf(cfg, sizeof cfg, "%s/%s", dir, name);
  snprintf(log, sizeof log, "%s.log", cfg);
  if (text) write_file(cfg, text);
  const char *argv[] = {"m3-server", "--config", cfg, "--store", store, "--listen", "127.0.0.1:0",
                        "--http", "off", NULL};
  char *out = st_spawn_expect_exit2(argv, log, name);
  if (line) snprintf(where, sizeof where, "%s:%d", cfg, line);
  else snprintf(where, sizeof where, "%s", cfg);
  ST_CONTAINS(out, where);
  if (also) ST_CONTAINS(out, also);
  free(out);
}

static void test_bad_config(void **state) {
  (void)state;
  expect_refused("badkey.conf", "max-k = 5\n# fine so far\nbogus-key = 1\n", 3, "bogus-key");
  expect_refused("noeq.conf", "\nmax-k 5\n", 2, NULL);
  expect_refused("notnum.conf", "max-k = 5\nmax-ids = many\n", 2, "many");
  expect_refused("help.conf", "help = 1\n", 1, "help");
  expect_refused("range.conf", "max-k = 5\nmax-frame-mb = 4096\n", 2, "out of range");
  expect_refused("missing.conf", NULL, 0, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_and_flags),
      cmocka_unit_test(test_config_only),
      cmocka_unit_test(test_bad_config),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
