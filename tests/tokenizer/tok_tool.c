/*
 * tok_tool: a command-line front end to m3's tokenizer for the parity
 * scripts, printing what spm_encode prints so the two can be diffed.
 *
 *   tok_tool encode MODEL [FILE]   one line of space-separated ids per input
 *                                  line (spm_encode --output_format=id)
 *   tok_tool pieces MODEL [FILE]   the pieces instead of the ids
 *   tok_tool roundtrip MODEL [FILE] decode(encode(line)) per line
 *   tok_tool info MODEL            kind, vocab size, special ids
 * Input lines lose their trailing '\n' only, as spm_encode's do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m3/error.h"
#include "m3/tokenizer.h"

static int usage(void) {
  fprintf(stderr, "usage: tok_tool encode|pieces|roundtrip|info MODEL [FILE]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 3)
    return usage();
  const char *cmd = argv[1];
  m3_tokenizer *tok = NULL;
  int rc = m3_tokenizer_load(argv[2], &tok);
  if (rc != 0) {
    fprintf(stderr, "tok_tool: %s: %s\n", m3_err_name(rc), m3_errmsg());
    return 1;
  }
  if (strcmp(cmd, "info") == 0) {
    printf("kind=%s vocab=%zu bos=%d eos=%d unk=%d pad=%d\n",
           m3_tokenizer_kind_name(m3_tokenizer_get_kind(tok)),
           m3_tokenizer_vocab_size(tok), m3_tokenizer_bos_id(tok),
           m3_tokenizer_eos_id(tok), m3_tokenizer_unk_id(tok),
           m3_tokenizer_pad_id(tok));
    m3_tokenizer_free(tok);
    return 0;
  }
  int mode = strcmp(cmd, "encode") == 0   ? 0
             : strcmp(cmd, "pieces") == 0 ? 1
             : strcmp(cmd, "roundtrip") == 0 ? 2
                                             : -1;
  if (mode < 0) {
    m3_tokenizer_free(tok);
    return usage();
  }
  FILE *in = argc > 3 ? fopen(argv[3], "rb") : stdin;
  if (!in) {
    perror(argv[3]);
    m3_tokenizer_free(tok);
    return 1;
  }
  char *line = NULL;
  size_t lcap = 0, cap = 16;
  int32_t *ids = malloc(cap * sizeof(*ids));
  char *text = NULL;
  size_t tcap = 0;
  ssize_t l;
  int status = 0;
  while (ids && (l = getline(&line, &lcap, in)) >= 0) {
    if (l > 0 && line[l - 1] == '\n')
      line[--l] = '\0';
    size_t n = 0;
    rc = m3_tokenizer_encode(tok, line, (size_t)l, 0, ids, cap, &n);
    if (rc == M3_ERANGE && n > cap) {
      cap = n;
      free(ids);
      if (!(ids = malloc(cap * sizeof(*ids))))
        break;
      rc = m3_tokenizer_encode(tok, line, (size_t)l, 0, ids, cap, &n);
    }
    if (rc != 0) {
      fprintf(stderr, "tok_tool: encode: %s: %s\n", m3_err_name(rc),
              m3_errmsg());
      status = 1;
      break;
    }
    if (mode == 2) {
      size_t tl = 0;
      rc = m3_tokenizer_decode(tok, ids, n, text, tcap, &tl);
      if (rc == M3_ERANGE && tl + 1 > tcap) {
        tcap = tl + 1;
        free(text);
        if (!(text = malloc(tcap)))
          break;
        rc = m3_tokenizer_decode(tok, ids, n, text, tcap, &tl);
      }
      if (rc != 0) {
        fprintf(stderr, "tok_tool: decode: %s: %s\n", m3_err_name(rc),
                m3_errmsg());
        status = 1;
        break;
      }
      fwrite(text, 1, tl, stdout);
    } else {
      for (size_t i = 0; i < n; i++) {
        if (mode == 0)
          printf(i ? " %d" : "%d", ids[i]);
        else
          printf(i ? " %s" : "%s", m3_tokenizer_id_to_piece(tok, ids[i]));
      }
    }
    putchar('\n');
  }
  free(line);
  free(ids);
  free(text);
  if (in != stdin)
    fclose(in);
  m3_tokenizer_free(tok);
  return status;
}
