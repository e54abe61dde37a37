/* libFuzzer target for the retrieval index's stamp (DIR/index/stamp, the
 * text that says which index file is current for which store). The stamp
 * functions are static in core/src/index.c, so this file includes it (and
 * links what index.c needs, not m3index). Each input is parsed as it is and
 * with its last line rewritten to the right "crc32c X", so that the fuzzer
 * gets past the checksum to the fields; a stamp that parses must format
 * back to one that parses to the same fields. */
#include "../../core/src/index.c"

static void check(const char *text, size_t len) {
  stamp st, again;
  char why[128] = "";
  if (stamp_parse(text, len, &st, why, sizeof why) != 0) {
    M3_ASSERT(why[0] != '\0');
    return;
  }
  char buf[STAMP_MAX + 1];
  int n = stamp_format(buf, sizeof buf, &st);
  M3_ASSERT(n > 0);
  M3_ASSERT(stamp_parse(buf, (size_t)n, &again, why, sizeof why) == 0);
  M3_ASSERT(again.version == st.version && again.dim == st.dim && again.count == st.count);
  M3_ASSERT(again.seqno == st.seqno && again.index_bytes == st.index_bytes);
  M3_ASSERT(again.index_crc == st.index_crc);
  M3_ASSERT(!strcmp(again.factory, st.factory) && !strcmp(again.metric, st.metric));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > STAMP_MAX) return 0; /* index.c reads at most this much */
  char *text = malloc(size + 40);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  /* what index.c does: a stamp with a NUL inside is malformed */
  if (strlen(text) == size) check(text, size);
  /* the same with its checksum line made right */
  size_t body = size;
  while (body > 0 && text[body - 1] != '\n') body--;
  if (body > 0 && text[body - 1] == '\n') {
    /* drop the last line (or the trailing partial one) and append the crc */
    size_t last = body - 1;
    while (last > 0 && text[last - 1] != '\n') last--;
    size_t keep = body == size ? last : body;
    int n = snprintf(text + keep, 40, "crc32c %08" PRIx32 "\n", m3_crc32c(0, text, keep));
    if (strlen(text) == keep + (size_t)n) check(text, keep + (size_t)n);
  }
  free(text);
  return 0;
}
