/* libFuzzer target for a model folder's config.json (m3_model_config_parse):
 * any bytes give a config that holds what the loader promises (sizes > 0,
 * heads a multiple of the KV heads, an even head_dim) or an error. */
#include <stddef.h>
#include <stdint.h>

#include "m3/error.h"
#include "m3/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  m3_model_config c;
  if (m3_model_config_parse("config.json", (const char *)data, size, &c) != 0) return 0;
  M3_ASSERT(c.hidden_size > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0);
  M3_ASSERT(c.head_dim > 0 && c.head_dim % 2 == 0 && c.intermediate_size > 0 && c.vocab_size > 0);
  M3_ASSERT(c.n_heads % c.n_kv_heads == 0);
  M3_ASSERT(c.rms_norm_eps > 0 && c.rope_theta > 0);
  return 0;
}
