/* libFuzzer target for safetensors files (the encoder's checkpoints): the
 * 8-byte header length, the JSON header, every tensor's dtype, shape (its
 * element count and byte size, which must not wrap) and data_offsets. A file
 * that opens must describe only bytes inside itself, and every readable
 * tensor converts to f32 with its own shape. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  m3_safetensors *st = NULL;
  if (m3_safetensors_open_mem("fuzz.safetensors", data, size, &st) != 0) return 0;
  for (size_t i = 0; i < m3_safetensors_count(st); i++) {
    const m3_tensor *t = m3_safetensors_at(st, i);
    const uint8_t *b = t->data;
    M3_ASSERT(b >= data && b <= data + size && t->nbytes <= (size_t)(data + size - b));
    M3_ASSERT(t->ndim >= 0 && t->ndim <= M3_TENSOR_MAX_DIMS);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      M3_ASSERT(t->shape[d] >= 0);
      M3_ASSERT(!__builtin_mul_overflow(numel, (size_t)t->shape[d], &numel));
    }
    M3_ASSERT(numel == t->numel);
    if (t->dtype == M3_TENSOR_DTYPE_OTHER) continue;
    M3_ASSERT(t->numel * m3_dtype_size(t->dtype) == t->nbytes);
    if (t->numel > (1u << 16)) continue; /* keep each run fast */
    float *dst = malloc((t->numel ? t->numel : 1) * sizeof *dst);
    if (!dst) continue;
    M3_ASSERT(m3_safetensors_read_f32(st, t->name, t->ndim, t->shape, dst) == 0);
    free(dst);
  }
  m3_tensor t;
  (void)m3_safetensors_find(st, "model.embed_tokens.weight", &t);
  m3_safetensors_close(st);
  return 0;
}
