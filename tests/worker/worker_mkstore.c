/*
 * worker_mkstore DIR KIND N: write DIR/store (N memories of shape 4x2x8x16,
 * 8-dim embeddings, chunk ids 0..N-1, texts "worker memory <i>") and
 * DIR/codecs.m3c, the codec set that coded it. KIND: raw-f32 (the codes are
 * the vectors) or pq (a PQ8x4np codec trained here on random vectors).
 * Also writes DIR/kv.f32: the original vectors (N, L, 2, H, T, D) and
 * DIR/pos.u16 (N, L, H, T), for the Python binding test.
 */
#include <stdio.h>
#include <stdlib.h>

#include "worker/worker_testlib.h"

static void write_file(const char *dir, const char *name, const void *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "worker_mkstore: write %s failed\n", path);
    exit(2);
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: worker_mkstore DIR raw-f32|pq N\n");
    return 2;
  }
  const m3_spec spec = {4, 2, 8, 16};
  const char *dir = argv[1];
  size_t n = strtoul(argv[3], NULL, 10);
  m3_codec_set *cs = NULL;
  int rc;
  if (strcmp(argv[2], "raw-f32") == 0) {
    rc = m3_codec_set_create_raw(M3_CODEC_RAW_F32, spec.head_dim, &cs);
  } else {
    const size_t nt = 2000;
    float *x = malloc(2 * nt * spec.head_dim * sizeof(float));
    uint64_t s = 77;
    for (size_t i = 0; i < 2 * nt * spec.head_dim; i++)
      x[i] = (float)((double)(m3t_rand(&s) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    m3_codec_sample sm[2] = {{x, nt}, {x + nt * spec.head_dim, nt}};
    m3_codec_train_opts o = {0};
    o.kind = M3_CODEC_FAISS;
    o.head_dim = spec.head_dim;
    o.factory_k = "PQ8x4np";
    o.seed = 5;
    rc = m3_codec_set_train(&o, sm, &cs);
    free(x);
  }
  if (rc) {
    fprintf(stderr, "worker_mkstore: codec: %s: %s\n", m3_err_name(rc), m3_errmsg());
    return 1;
  }
  wt_mems m;
  wt_mems_make(&m, cs, &spec, n, 8, 1234);
  if (m.layout.codec_kind == M3_CODEC_RAW_F32)
    wt_mems_encode_raw(&m);
  else if ((rc = m3_codec_encode(cs, &spec, m.kv, n, m.codes)) != 0) {
    fprintf(stderr, "worker_mkstore: encode: %s: %s\n", m3_err_name(rc), m3_errmsg());
    return 1;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/store", dir);
  wt_store_write(&m, path);
  snprintf(path, sizeof path, "%s/codecs.m3c", dir);
  if ((rc = m3_codec_set_save(cs, path)) != 0) {
    fprintf(stderr, "worker_mkstore: save: %s: %s\n", m3_err_name(rc), m3_errmsg());
    return 1;
  }
  write_file(dir, "kv.f32", m.kv, n * m3_spec_vectors(&spec) * spec.head_dim * sizeof(float));
  write_file(dir, "pos.u16", m.pos, n * m3_spec_positions(&spec) * sizeof(uint16_t));
  printf("{\"memories\": %zu, \"fingerprint\": \"%016llx\"}\n", n,
         (unsigned long long)m3_codec_set_fingerprint(cs));
  wt_mems_free(&m);
  m3_codec_set_close(cs);
  return 0;
}
