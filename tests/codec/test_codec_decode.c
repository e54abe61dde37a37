/*
 * The CPU decoder writes whole memories in (layer, K|V, head, token, dim)
 * order, picks each layer's codec in per-layer sets, converts to f16 / bf16
 * exactly as the shared element functions do, and its vectorized row sums are
 * bit-identical to m3__tdec_elem, the per-element function the CUDA kernel
 * runs.
 */
#include "codec_testlib.h"

#include "../../core/src/codec_internal.h"

static const m3_spec kSpec = {3, 2, 4, 16}; /* 3 layers, 2 heads, 4 tokens, 16 dims */

static void test_memory_layout_and_dtypes(void **state) {
  m3_codec_set *cs = ct_train("OPQ4_16,Residual2x4,PQ4x4", 16, 3, 1500, 77);
  assert_int_equal(m3_codec_set_n_layers(cs), 3);
  const size_t nmem = 3, nv = m3_spec_vectors(&kSpec) * nmem, cb = m3_codec_set_code_bytes(cs);
  float *kv = ct_vectors(nv, 16, 5, 0.1);
  uint8_t *codes = malloc(nv * cb);
  CHECK_OK(m3_codec_encode(cs, &kSpec, kv, nmem, codes));
  float *out = malloc(nv * 16 * 4), *ref = malloc(nv * 16 * 4);
  uint16_t *h = malloc(nv * 16 * 2);
  CHECK_OK(m3_codec_decode(cs, &kSpec, codes, nmem, M3_DTYPE_F32, out));
  /* block by block with the (layer, kv) codec; per-layer codecs differ */
  const size_t per_block = 2 * 4;
  size_t v = 0;
  for (size_t m = 0; m < nmem; m++)
    for (unsigned layer = 0; layer < 3; layer++)
      for (int k = 0; k < 2; k++, v += per_block) {
        uint8_t c1[8 * 8];
        CHECK_OK(m3_codec_encode_vectors(cs, layer, k, kv + v * 16, per_block, c1));
        assert_memory_equal(c1, codes + v * cb, per_block * cb);
        CHECK_OK(m3_codec_decode_vectors(cs, layer, k, codes + v * cb, per_block, M3_DTYPE_F32,
                                         ref + v * 16));
      }
  assert_memory_equal(out, ref, nv * 16 * 4);
  /* another layer's codec decodes the same codes differently */
  CHECK_OK(m3_codec_decode_vectors(cs, 1, M3_KV_K, codes, per_block, M3_DTYPE_F32, ref));
  assert_true(memcmp(ref, out, per_block * 16 * 4) != 0);
  /* bit-identical to the shared per-element function */
  uint32_t rows[16];
  for (v = 0; v < nv; v++) {
    unsigned layer = (unsigned)(v / per_block / 2 % 3);
    int k = (int)(v / per_block % 2);
    const m3__codec *c = &cs->codecs[m3__codec_index(cs, layer, k)];
    assert_int_equal(m3__code_rows(codes + v * cb, (uint32_t)cb, c->fields, c->n_fields, rows), 0);
    for (uint32_t j = 0; j < 16; j++) {
      float e = m3__tdec_elem(c->bias, c->tables, rows, c->n_fields, 16, j);
      if (memcmp(&e, &out[v * 16 + j], 4) != 0)
        fail_msg("vector %zu dim %u: decoder %a, element function %a", v, j,
                 (double)out[v * 16 + j], (double)e);
    }
  }
  CHECK_OK(m3_codec_decode(cs, &kSpec, codes, nmem, M3_DTYPE_F16, h));
  for (size_t i = 0; i < nv * 16; i++)
    assert_int_equal(h[i], m3__f32_to_f16(out[i]));
  CHECK_OK(m3_codec_decode(cs, &kSpec, codes, nmem, M3_DTYPE_BF16, h));
  for (size_t i = 0; i < nv * 16; i++)
    assert_int_equal(h[i], m3__f32_to_bf16(out[i]));
  /* a per-layer set needs the shape's layer count */
  m3_spec two = kSpec;
  two.n_layers = 2;
  CHECK_RC(m3_codec_decode(cs, &two, codes, 1, M3_DTYPE_F32, out), M3_ESHAPE);
  m3_codec_info info;
  CHECK_RC(m3_codec_set_info(cs, 3, M3_KV_K, &info), M3_EINVAL);
  free(h);
  free(ref);
  free(out);
  free(codes);
  free(kv);
  m3_codec_set_close(cs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_memory_layout_and_dtypes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
