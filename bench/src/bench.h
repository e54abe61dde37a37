/* Shared helpers of m3-bench subcommands. */
#ifndef M3_BENCH_H
#define M3_BENCH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fast, seedable, good enough for synthetic data and sampling. */
static inline uint64_t bench_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* The q-quantile (0..1) of n sorted values. */
double bench_quantile(const double *sorted, size_t n, double q);
void bench_sort(double *v, size_t n);

/* Print j (consumed) on stdout, indented. Returns 0. */
int bench_print_json(json_t *j);

/* Report a failed m3 call and return exit code 2. */
int bench_fail(const char *what, int rc);

int bench_gen(int argc, char **argv);
int bench_storage(int argc, char **argv);
int m3_bench_codec(int argc, char **argv);

#endif /* M3_BENCH_H */
