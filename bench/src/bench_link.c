/*
 * The link's own limit and the server's CPU, measured beside every rpc run.
 *
 * loopback_mb_per_s: C plain TCP streams between two endpoints on the
 * server's interface, each a writer thread writing the same write size the
 * server writes (one memory frame) and a reader thread reading it into one
 * buffer, for a fixed time. No m3 code runs in it: it is what the kernel and
 * the machine's memory bandwidth allow, so `served / loopback` says how much
 * of the link m3-server uses.
 *
 * Server CPU: when the server listens on this machine, its process is found
 * through /proc (the listening socket's inode in /proc/net/tcp{,6}, then the
 * process holding that inode among /proc/PID/fd) and its user and system
 * time read from /proc/PID/stat before and after the measured window.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"

typedef struct link_stream {
  int wfd, rfd;
  size_t write_bytes;
  uint64_t t_measure, t_end; /* ns: count from t_measure, stop at t_end */
  uint64_t bytes;            /* read in [t_measure, t_end) */
  pthread_t wt, rt;
} link_stream;

static void *link_writer(void *arg) {
  link_stream *s = arg;
  char *buf = malloc(s->write_bytes);
  if (buf == NULL) return NULL;
  memset(buf, 0x5a, s->write_bytes);
  while (bench_now_ns() < s->t_end) {
    size_t off = 0;
    while (off < s->write_bytes) {
      ssize_t k = write(s->wfd, buf + off, s->write_bytes - off);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) goto out;
      off += (size_t)k;
    }
  }
out:
  shutdown(s->wfd, SHUT_WR);
  free(buf);
  return NULL;
}

static void *link_reader(void *arg) {
  link_stream *s = arg;
  size_t cap = 1u << 20;
  char *buf = malloc(cap);
  if (buf == NULL) return NULL;
  for (;;) {
    ssize_t k = read(s->rfd, buf, cap);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    uint64_t now = bench_now_ns();
    if (now >= s->t_measure && now < s->t_end) s->bytes += (uint64_t)k;
  }
  free(buf);
  return NULL;
}

int bench_loopback(const char *host, unsigned conns, size_t write_bytes, double seconds,
                   double *mb_per_s) {
  int rc = -1, lfd = -1;
  link_stream *st = calloc(conns, sizeof *st);
  if (st == NULL) return -1;
  for (unsigned i = 0; i < conns; i++) st[i].wfd = st[i].rfd = -1;
  struct sockaddr_in sa = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, (int)conns) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
    fprintf(stderr, "m3-bench: loopback baseline on %s: %s\n", host, strerror(errno));
    goto out;
  }
  uint64_t t0 = bench_now_ns();
  /* A quarter second to reach steady state, then the measured window. */
  uint64_t t_measure = t0 + 250000000ull, t_end = t_measure + (uint64_t)(seconds * 1e9);
  for (unsigned i = 0; i < conns; i++) {
    st[i].wfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (st[i].wfd < 0 || connect(st[i].wfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        (st[i].rfd = accept(lfd, NULL, NULL)) < 0) {
      fprintf(stderr, "m3-bench: loopback baseline connect: %s\n", strerror(errno));
      goto out;
    }
    int one = 1;
    setsockopt(st[i].wfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    st[i].write_bytes = write_bytes;
    st[i].t_measure = t_measure;
    st[i].t_end = t_end;
  }
  for (unsigned i = 0; i < conns; i++) {
    pthread_create(&st[i].rt, NULL, link_reader, &st[i]);
    pthread_create(&st[i].wt, NULL, link_writer, &st[i]);
  }
  uint64_t total = 0;
  for (unsigned i = 0; i < conns; i++) {
    pthread_join(st[i].wt, NULL);
    pthread_join(st[i].rt, NULL);
    total += st[i].bytes;
  }
  *mb_per_s = (double)total / 1e6 / seconds;
  rc = 0;
out:
  for (unsigned i = 0; i < conns; i++) {
    if (st[i].wfd >= 0) close(st[i].wfd);
    if (st[i].rfd >= 0) close(st[i].rfd);
  }
  if (lfd >= 0) close(lfd);
  free(st);
  return rc;
}

/* The inode of the socket listening on port in one /proc/net/tcp file. */
static unsigned long listen_inode(const char *table, unsigned port) {
  FILE *f = fopen(table, "r");
  if (f == NULL) return 0;
  char line[512];
  unsigned long inode = 0;
  if (fgets(line, sizeof line, f) == NULL) goto out; /* the column names */
  while (fgets(line, sizeof line, f)) {
    char local[128];
    unsigned st;
    unsigned long ino;
    /* sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode */
    if (sscanf(line, " %*s %127s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &ino) != 3) continue;
    char *colon = strrchr(local, ':');
    if (st == 0x0A && colon && strtoul(colon + 1, NULL, 16) == port) {
      inode = ino;
      break;
    }
  }
out:
  fclose(f);
  return inode;
}

long bench_proc_find_listener(unsigned port) {
  unsigned long inode = listen_inode("/proc/net/tcp", port);
  if (inode == 0) inode = listen_inode("/proc/net/tcp6", port);
  if (inode == 0) return -1;
  char want[64];
  snprintf(want, sizeof want, "socket:[%lu]", inode);
  DIR *proc = opendir("/proc");
  if (proc == NULL) return -1;
  long found = -1;
  struct dirent *p;
  while (found < 0 && (p = readdir(proc))) {
    if (p->d_name[0] < '0' || p->d_name[0] > '9') continue;
    char fddir[300];
    snprintf(fddir, sizeof fddir, "/proc/%s/fd", p->d_name);
    DIR *fds = opendir(fddir);
    if (fds == NULL) continue;
    struct dirent *e;
    while ((e = readdir(fds))) {
      char path[600], target[64];
      snprintf(path, sizeof path, "%s/%s", fddir, e->d_name);
      ssize_t n = readlink(path, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      if (!strcmp(target, want)) {
        found = strtol(p->d_name, NULL, 10);
        break;
      }
    }
    closedir(fds);
  }
  closedir(proc);
  return found;
}

int bench_proc_cpu(long pid, double *user_s, double *sys_s) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* Fields after the command, which is in parentheses and may hold spaces. */
  char *p = strrchr(buf, ')');
  if (p == NULL) return -1;
  unsigned long long ut, stt;
  /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2)
    return -1;
  double hz = (double)sysconf(_SC_CLK_TCK);
  *user_s = (double)ut / hz;
  *sys_s = (double)stt / hz;
  return 0;
}
