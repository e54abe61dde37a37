/* libFuzzer target for m3-server's config file (--config FILE: `key =
 * value` lines, '#' comments, the long options' names and ranges). The
 * parser is main.c's own (static there), so this file includes main.c with
 * its main renamed; the parser ends the process with exit(2) and a message
 * on a bad line, which here returns to the fuzzer instead (longjmp), with
 * the message sent to /dev/null. Every config accepted must hold values in
 * their ranges (a MiB option shifted into bytes must not wrap: issue 14,
 * defect 11). */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static jmp_buf fz_jmp;
static FILE *fz_null, *fz_file;

_Noreturn static void fz_exit(int code) { longjmp(fz_jmp, code == 0 ? 256 : code); }

static FILE *fz_fopen(const char *path, const char *mode) {
  FILE *f = fopen(path, mode);
  fz_file = f;
  return f;
}

#define main m3_server_main
#define exit(code) fz_exit(code)
#define fopen fz_fopen
#undef stderr
#define stderr fz_null
#include "main.c"
#undef main
#undef exit
#undef fopen
#undef stderr

static int mfd = -1;
static char mpath[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_null = fopen("/dev/null", "w");
  mfd = memfd_create("m3-server.conf", 0);
  if (!fz_null || mfd < 0) abort();
  snprintf(mpath, sizeof mpath, "/proc/self/fd/%d", mfd);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (ftruncate(mfd, 0) != 0 || (size && pwrite(mfd, data, size, 0) != (ssize_t)size)) abort();
  static server_config c; /* static: setjmp may not keep locals */
  server_config_defaults(&c);
  fz_file = NULL;
  if (setjmp(fz_jmp) == 0) {
    load_config(&c, mpath);
    fz_file = NULL; /* load_config closed it */
    M3_ASSERT(c.max_frame_bytes >= (1u << 20));
    M3_ASSERT(c.write_high_water >= ((size_t)1 << 20));
    M3_ASSERT(c.fetch_memory >= ((size_t)1 << 20));
    M3_ASSERT(c.max_connections >= 1 && c.max_http_connections >= 1 && c.max_inflight >= 1);
    M3_ASSERT(c.max_queries >= 1 && c.max_k >= 1 && c.max_ids >= 1);
    M3_ASSERT(c.search_budget >= 1 && c.max_batch_queries >= 1);
  } else if (fz_file) {
    fclose(fz_file); /* exit(2) left it open */
    fz_file = NULL;
  }
  for (size_t i = 0; i < n_config_values; i++) free(config_values[i]);
  free(config_values);
  config_values = NULL;
  n_config_values = 0;
  return 0;
}
