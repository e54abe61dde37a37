/* libFuzzer target for m3-encode's input lines (encoder/src/cmd/
 * encode_input.c): a JSONL knowledge base, line by line: JSON, "text",
 * "id", "meta", "embedding", chunking of long texts, id collisions. The
 * first byte picks the reader's options (external embeddings, the
 * long-chunk policy, the id scheme, the token budget, skip or stop at a bad
 * line); the rest is the file, given to the reader through a memfd. Every
 * chunk it yields must fit the token budget. The tokenizer is a small BPE
 * trained at start-up with m3-encode's own trainer. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "encode_int.h"
#include "m3/error.h"
#include "m3/tokenizer.h"

static m3_tokenizer *tok;
static int mfd = -1;
static char mpath[64];

static const char corpus[] =
    "The quick brown fox jumps over the lazy dog.\n"
    "Memory layers store keys and values for each reference chunk.\n"
    "A knowledge base is encoded once and served by many shards.\n"
    "Caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9, 123 456 789.\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char dir[] = "/tmp/m3fuzz-jsonl.XXXXXX";
  if (!mkdtemp(dir)) abort();
  char path[128];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  enc_bpe_opts o = {.vocab_size = 320, .min_frequency = 2};
  unsigned nv;
  if (enc_bpe_train(corpus, sizeof corpus - 1, &o, path, &nv) != 0 ||
      m3_tokenizer_load(path, &tok) != 0) {
    fprintf(stderr, "fuzz_jsonl: tokenizer: %s\n", m3_errmsg());
    abort();
  }
  unlink(path);
  rmdir(dir);
  mfd = memfd_create("kb.jsonl", 0);
  if (mfd < 0) abort();
  snprintf(mpath, sizeof mpath, "/proc/self/fd/%d", mfd);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned sel = data[0];
  data++, size--;
  if (ftruncate(mfd, 0) != 0 || (size && pwrite(mfd, data, size, 0) != (ssize_t)size)) abort();
  enc_input_opts o;
  memset(&o, 0, sizeof o);
  o.path = mpath;
  o.tok = tok;
  o.prefix = (sel & 0x40) ? "Reference: " : "";
  o.max_tokens = (sel & 0x10) ? 16 : 64;
  o.external_emb = sel & 1;
  o.emb_dim = (sel & 0x80) ? 4 : 0;
  o.long_chunks = (enc_long_policy)(((sel >> 1) & 3) % 3);
  o.ids = (sel & 8) ? ENC_ID_SEQUENTIAL : ENC_ID_HASH;
  o.id_base = (sel & 8) ? UINT64_MAX - 8 : 0; /* ids that run out */
  o.skip_bad = !(sel & 0x20);
  enc_input *in = NULL;
  if (enc_input_open(&o, &in) != 0) return 0;
  enc_chunk c;
  int rc;
  unsigned n = 0;
  while ((rc = enc_input_next(in, &c)) > 0) {
    M3_ASSERT(c.n_tokens > 0 && c.n_tokens <= o.max_tokens);
    M3_ASSERT(c.n_prefix >= 0 && c.n_prefix <= c.n_tokens);
    M3_ASSERT(c.text != NULL && c.text[c.text_len] == '\0');
    M3_ASSERT(!o.external_emb || c.emb != NULL);
    enc_chunk_free(&c);
    if (++n > 100000) break;
  }
  enc_input_close(in);
  return 0;
}
