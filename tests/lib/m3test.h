/*
 * The helpers every C test shares, whatever it tests: deterministic random
 * numbers, scratch directories and their removal, clocks, paths of the
 * built programs, files on disk, shell commands. The component test
 * libraries (unit/testutil, server/srvtest, client/client_testlib,
 * cluster/cluster_testlib, index/index_testlib, codec/codec_testlib) build
 * on these instead of each writing its own; tests/lib/m3test.sh is the same
 * for the shell tests.
 *
 * Failures fail the running cmocka test (fail_msg) with what was wrong.
 */
#ifndef M3_TEST_LIB_H
#define M3_TEST_LIB_H

#include <stddef.h>
#include <stdint.h>

/* ---- random numbers (splitmix64: one stream per state, deterministic) -- */

uint64_t m3t_rand(uint64_t *state);
/* Uniform in [0, 1), 53 bits. */
double m3t_unif(uint64_t *state);
/* Uniform in [-1, 1). */
float m3t_randf(uint64_t *state);
/* dim floats, each m3t_randf. */
void m3t_randvec(uint64_t *state, float *v, unsigned dim);
/* A random unit vector of dim floats (each component a sum of 4 uniforms,
 * then normalised in double). */
void m3t_rand_unit(uint64_t *state, float *v, unsigned dim);

/* ---- scratch space ----------------------------------------------------- */

/* A fresh directory $TMPDIR/m3test-TAG-XXXXXX (TMPDIR unset: /tmp);
 * malloc'ed path, the caller frees it. */
char *m3t_mkdtemp(const char *tag);
/* Remove path and everything below it (NULL: nothing). With M3_TEST_KEEP
 * set it is kept and its path printed, to look at stores and logs. */
void m3t_rmrf(const char *path);
/* Write content and a newline to dir/name; malloc'ed path, the caller frees. */
char *m3t_write_file(const char *dir, const char *name, const char *content);
/* Bytes of a file, or -1 when it cannot be stat'ed. */
long long m3t_file_size(const char *path);
/* xor 0xff into the byte at off of path, synced (damage for fault tests). */
void m3t_flip_byte(const char *path, uint64_t off);

/* ---- time -------------------------------------------------------------- */

/* CLOCK_MONOTONIC in milliseconds. */
long long m3t_now_ms(void);
void m3t_sleep_ms(int ms);

/* ---- programs ---------------------------------------------------------- */

/* The path of the built program name: in $M3_BIN_DIR (set by CTest), else
 * beside this test's executable. Not checked: callers that need it say so
 * (or skip) with access(). */
void m3t_bin_path(char *buf, size_t cap, const char *name);
/* Run a shell command line (printf format); returns its exit status, 128 +
 * the signal when killed (fails the test when it cannot run at all). */
int m3t_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* M3_TEST_LIB_H */
