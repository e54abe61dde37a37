/* The in-process m3-server of fuzz_rpc and fuzz_http (server_harness.h). */
#include "server_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define main m3_server_main
#include "main.c"
#undef main

extern char **environ;

static fz_server fz;
static char fz_dir[64];
static char *fz_argv[32];
static volatile int fz_stopped;

static void *server_thread(void *arg) {
  (void)arg;
  int argc = 0;
  while (fz_argv[argc]) argc++;
  int rc = m3_server_main(argc, fz_argv);
  fz_stopped = 1;
  fprintf(stderr, "fuzz: the in-process m3-server returned %d\n", rc);
  return NULL;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
    abort();
  }
}

static char *dup_printf(const char *fmt, const char *a) {
  char buf[512];
  snprintf(buf, sizeof buf, fmt, a);
  return strdup(buf);
}

static void cleanup(void) {
  if (fz_dir[0]) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
    if (system(cmd) != 0) {
    }
  }
}

const fz_server *fz_server_get(void) {
  if (fz.rpc_port) return &fz;
  snprintf(fz_dir, sizeof fz_dir, "/tmp/m3fuzz-srv.XXXXXX");
  if (!mkdtemp(fz_dir)) abort();
  atexit(cleanup);
  /* the store: m3-bench gen, from the fuzzer's own bin/ */
  char self[4096], bench[4200], store[128];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) abort();
  self[n] = '\0';
  *strrchr(self, '/') = '\0';
  snprintf(bench, sizeof bench, "%s/m3-bench", self);
  snprintf(store, sizeof store, "%s/store", fz_dir);
  char *gen[] = {bench, "gen", "--store", store, "--count", "64", "--emb-dim", "8", NULL};
  pid_t pid;
  int ws;
  if (posix_spawn(&pid, bench, NULL, NULL, gen, environ) != 0 || waitpid(pid, &ws, 0) != pid ||
      !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
    fprintf(stderr, "fuzz: %s gen --store %s failed\n", bench, store);
    abort();
  }
  static const char read_tok[] = "fuzz-read-token-0123456789abcdef";
  static const char admin_tok[] = "fuzz-admin-token-0123456789abcdef";
  char path[160];
  snprintf(path, sizeof path, "%s/token", fz_dir);
  write_file(path, read_tok);
  snprintf(path, sizeof path, "%s/admin", fz_dir);
  write_file(path, admin_tok);
  int a = 0;
  fz_argv[a++] = "m3-server";
  fz_argv[a++] = "--store";
  fz_argv[a++] = strdup(store);
  fz_argv[a++] = "--listen=127.0.0.1:0";
  fz_argv[a++] = "--http=127.0.0.1:0";
  fz_argv[a++] = dup_printf("--port-file=%s/ports", fz_dir);
  fz_argv[a++] = dup_printf("--token-file=%s/token", fz_dir);
  fz_argv[a++] = dup_printf("--admin-token-file=%s/admin", fz_dir);
  fz_argv[a++] = "--auth-fail-limit=0";
  fz_argv[a++] = "--max-connections=100000";
  fz_argv[a++] = "--max-http-connections=60000";
  fz_argv[a++] = "--max-frame-mb=2";
  fz_argv[a++] = "--max-queries=16";
  fz_argv[a++] = "--max-ids=64";
  fz_argv[a++] = "--default-timeout-ms=2000";
  fz_argv[a++] = NULL;
  m3_log_set_level(M3_LOG_OFF);
  pthread_t th;
  if (pthread_create(&th, NULL, server_thread, NULL) != 0) abort();
  pthread_detach(th);
  snprintf(path, sizeof path, "%s/ports", fz_dir);
  for (int i = 0; i < 30000 && !fz_stopped; i++) {
    FILE *f = fopen(path, "r");
    if (f) {
      int r = fscanf(f, "rpc=%d http=%d", &fz.rpc_port, &fz.http_port);
      fclose(f);
      if (r == 2 && fz.rpc_port > 0) break;
      fz.rpc_port = 0;
    }
    usleep(1000);
  }
  if (fz.rpc_port <= 0) {
    fprintf(stderr, "fuzz: the in-process m3-server did not start\n");
    abort();
  }
  fz.admin_token = admin_tok;
  return &fz;
}

/* The server thread's allocations outlive the input that caused them
 * (connections are freed in later loop passes), which would make libFuzzer
 * run a leak check after nearly every input: leaks are the sanitizer test
 * suite's to find (LeakSanitizer at each server's exit), not these
 * targets'. Flags are parsed after this runs. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  char **nv = calloc((size_t)*argc + 2, sizeof *nv);
  if (!nv) abort();
  nv[0] = (*argv)[0];
  nv[1] = "-detect_leaks=0";
  for (int i = 1; i < *argc; i++) nv[i + 1] = (*argv)[i];
  *argv = nv;
  (*argc)++;
  return 0;
}

int fz_connect(int port) {
  if (fz_stopped) return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct linger lg = {1, 0};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fz_exchange(int fd, const uint8_t *buf, size_t len, int shut_wr, int timeout_ms,
                 int (*on_read)(void *ud, const uint8_t *p, size_t n), void *ud) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  size_t off = 0;
  int shut = 0;
  long long last = now_ms();
  uint8_t rb[65536];
  for (;;) {
    if (off == len && shut_wr && !shut) {
      shutdown(fd, SHUT_WR);
      shut = 1;
    }
    struct pollfd p = {fd, (short)(POLLIN | (off < len ? POLLOUT : 0)), 0};
    int r = poll(&p, 1, 50);
    if (r < 0 && errno != EINTR) return FZ_CLOSED;
    if (r > 0 && (p.revents & POLLOUT) && off < len) {
      ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) return FZ_CLOSED; /* closed on us */
      if (w > 0) off += (size_t)w, last = now_ms();
    }
    if (r > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = recv(fd, rb, sizeof rb, 0);
      if (got == 0) return FZ_CLOSED;
      if (got < 0 && errno != EAGAIN && errno != EINTR) return FZ_CLOSED;
      if (got > 0) {
        last = now_ms();
        if (on_read && on_read(ud, rb, (size_t)got) && off == len) return FZ_DONE;
      }
    }
    if (now_ms() - last > timeout_ms) return FZ_TIMEOUT;
  }
}
