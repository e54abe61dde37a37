/*
 * Training options: the sample size a factory string needs (and the refusal
 * of too small a sample, with the numbers), FAISS's thread teams sized for
 * the training and restored after, and per-codec checkpoints: a training
 * that finds a codec's checkpoint reads it back instead of training it.
 */
#include <dlfcn.h>
#include <unistd.h>

#include "codec_testlib.h"

#define DIM 16
#define FACTORY "Residual2x4,PQ4x4"

static void expect_size(const char *f, size_t min, size_t want) {
  size_t a = 1, b = 1;
  m3_codec_train_sample_size(f, &a, &b);
  if (a != min || b != want)
    fail_msg("'%s': sample size %zu / %zu, expected %zu / %zu", f, a, b, min, want);
}

static void test_sample_sizes(void **st) {
  (void)st;
  expect_size("OPQ20_80,Residual2x14,PQ8x10", 16384, 638976);
  expect_size("OPQ20_80,Residual2x10,PQ8x10", 1024, 39936);
  expect_size("PQ8x8np", 256, 9984);
  expect_size("OPQ16_80,PQ16", 256, 9984);
  expect_size("IVF4096,PQ8x6", 4096, 159744);
  expect_size("Residual300,PQ4x4", 300, 11700);
  expect_size("RQ2x6_1x11", 2048, 79872);
  expect_size("SQ8", 0, 0);
  expect_size("PCAR16,SQ4", 0, 0);
}

static m3_codec_train_opts opts(const char *ckpt) {
  m3_codec_train_opts o = {0};
  o.kind = M3_CODEC_FAISS;
  o.head_dim = DIM;
  o.factory_k = FACTORY;
  o.seed = 3;
  o.threads = 1;
  o.checkpoint_dir = ckpt;
  return o;
}

static void test_too_few_vectors_refused(void **st) {
  (void)st;
  float *x = ct_vectors(200, DIM, 1, 0);
  m3_codec_sample sm[2] = {{x, 200}, {x, 200}};
  m3_codec_train_opts o = opts(NULL);
  o.factory_k = "Residual2x8,PQ4x4"; /* 256 centroids per half */
  m3_codec_set *cs = NULL;
  assert_int_equal(m3_codec_set_train(&o, sm, &cs), M3_EINVAL);
  assert_null(cs);
  if (!strstr(m3_errmsg(), "200 training vectors") || !strstr(m3_errmsg(), "at least 256") ||
      !strstr(m3_errmsg(), "9984"))
    fail_msg("unexpected message: %s", m3_errmsg());
  free(x);
}

static void test_threads_restored(void **st) {
  (void)st;
  int (*omp_get)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
  int (*blas_get)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
  assert_non_null(omp_get);
  assert_non_null(blas_get);
  int omp0 = omp_get(), blas0 = blas_get();
  float *x = ct_vectors(2000, DIM, 2, 0);
  m3_codec_sample sm[2] = {{x, 2000}, {x, 2000}};
  m3_codec_train_opts o = opts(NULL);
  o.factory_k = "PQ4x4np";
  o.threads = 2;
  m3_codec_set *cs = NULL;
  CHECK_OK(m3_codec_set_train(&o, sm, &cs));
  assert_int_equal(omp_get(), omp0);
  assert_int_equal(blas_get(), blas0);
  m3_codec_set_close(cs);
  free(x);
}

static void test_checkpoint_read_back(void **st) {
  (void)st;
  char dir[] = "/tmp/m3-codec-ckpt-XXXXXX";
  assert_non_null(mkdtemp(dir));
  const size_t n = 3000;
  float *x = ct_vectors(n, DIM, 10, 0), *y = ct_vectors(n, DIM, 20, 1.0);
  m3_codec_sample sx[2] = {{x, n}, {x, n}}, sy[2] = {{y, n}, {y, n}};
  m3_codec_train_opts o = opts(dir);
  m3_codec_set *a = NULL, *b = NULL, *fresh = NULL;
  CHECK_OK(m3_codec_set_train(&o, sx, &a));
  int files = 0;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "ls %s/codec-0-*.faiss %s/codec-1-*.faiss 2>/dev/null | wc -l", dir, dir);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  assert_int_equal(fscanf(p, "%d", &files), 1);
  pclose(p);
  assert_int_equal(files, 2);
  /* other data, same options: both codecs come from the checkpoints */
  CHECK_OK(m3_codec_set_train(&o, sy, &b));
  o.checkpoint_dir = NULL;
  CHECK_OK(m3_codec_set_train(&o, sy, &fresh));
  const size_t cb = m3_codec_set_code_bytes(a), nt = 500;
  float *t = ct_vectors(nt, DIM, 30, 0.5);
  uint8_t *ca = malloc(nt * cb), *cbb = malloc(nt * cb), *cf = malloc(nt * cb);
  for (int kv = 0; kv < 2; kv++) {
    CHECK_OK(m3_codec_encode_vectors(a, 0, kv, t, nt, ca));
    CHECK_OK(m3_codec_encode_vectors(b, 0, kv, t, nt, cbb));
    CHECK_OK(m3_codec_encode_vectors(fresh, 0, kv, t, nt, cf));
    assert_memory_equal(ca, cbb, nt * cb);           /* b's codebooks are a's */
    assert_memory_not_equal(ca, cf, nt * cb);        /* which training on y does not give */
  }
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
  free(ca);
  free(cbb);
  free(cf);
  free(t);
  free(x);
  free(y);
  m3_codec_set_close(a);
  m3_codec_set_close(b);
  m3_codec_set_close(fresh);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sample_sizes),
      cmocka_unit_test(test_too_few_vectors_refused),
      cmocka_unit_test(test_threads_restored),
      cmocka_unit_test(test_checkpoint_read_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
