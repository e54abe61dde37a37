/* libFuzzer target for tokenizer files, built twice: fuzz_spm (SentencePiece
 * model files, protobuf) and fuzz_tokenizer_json (Hugging Face
 * tokenizer.json), which differ in their seed corpora only: both go through
 * m3_tokenizer_load_mem, which tells the kind from the content. A tokenizer
 * that loads must encode any text (fixed samples and the input's own bytes)
 * into ids of its vocabulary, and decode them back. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/tokenizer.h"

static void roundtrip(m3_tokenizer *tok, const char *text, size_t len) {
  int32_t ids[512];
  size_t n = 0;
  int rc = m3_tokenizer_encode(tok, text, len, 1, ids, sizeof ids / sizeof *ids, &n);
  if (rc == M3_ERANGE) {
    M3_ASSERT(n > sizeof ids / sizeof *ids);
    n = sizeof ids / sizeof *ids;
  } else if (rc != 0) {
    return;
  }
  size_t vocab = m3_tokenizer_vocab_size(tok);
  for (size_t i = 0; i < n; i++) {
    M3_ASSERT(ids[i] >= 0 && (size_t)ids[i] < vocab);
    M3_ASSERT(m3_tokenizer_id_to_piece(tok, ids[i]) != NULL);
  }
  char out[4096];
  size_t olen = 0;
  rc = m3_tokenizer_decode(tok, ids, n, out, sizeof out, &olen);
  if (rc == 0) M3_ASSERT(olen < sizeof out && out[olen] == '\0');
  /* A tiny buffer: the truncated-but-terminated path. */
  char small[3];
  (void)m3_tokenizer_decode(tok, ids, n, small, sizeof small, &olen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  m3_tokenizer *tok = NULL;
  if (m3_tokenizer_load_mem(FUZZ_TOKENIZER_NAME, data, size, &tok) != 0) return 0;
  static const char *const samples[] = {
      "Hello world, this is a test.",
      "  leading and   repeated   spaces\t\n",
      "caf\xc3\xa9 na\xc3\xafve \xe2\x96\x81 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
      "\xff\xfe invalid \xc3 UTF-8 \xe2\x82",
      "<s></s><unk><0x41> ",
      "",
  };
  for (size_t i = 0; i < sizeof samples / sizeof *samples; i++)
    roundtrip(tok, samples[i], strlen(samples[i]));
  roundtrip(tok, (const char *)data, size < 256 ? size : 256);
  for (int32_t id = -1; id < 4; id++) {
    (void)m3_tokenizer_id_to_piece(tok, id);
    (void)m3_tokenizer_score(tok, id);
  }
  (void)m3_tokenizer_piece_to_id(tok, "<unk>");
  m3_tokenizer *clone = NULL;
  if (m3_tokenizer_clone(tok, &clone) == 0) {
    roundtrip(clone, samples[0], strlen(samples[0]));
    m3_tokenizer_free(clone);
  }
  m3_tokenizer_free(tok);
  return 0;
}
