/*
 * Command-line helpers shared by the programs (m3, m3-server, m3-encode,
 * m3-bench); header-only, no state.
 *
 * m3_cli_exact_long: getopt_long takes any unique prefix of a long option
 * ("--tok" for "--token-file"), so a mistyped or shortened option can mean
 * another one silently (`--token` was `--token-file`). Every program calls
 * this once before its getopt_long loop: a long option on the command line
 * that is not spelled in full is refused, naming it and what it would have
 * matched. Options not in the table at all are left to getopt_long's own
 * "unrecognized option" message.
 *
 * m3_cli_check_addr: a HOST:PORT option checked before it is used, so that
 * a port out of range is refused naming the option and the value instead
 * of wrapping (":99999" used to become port 34463).
 */
#ifndef M3_INTERNAL_CLI_H
#define M3_INTERNAL_CLI_H

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Scan argv[1..argc) as getopt_long would (values of options that take one
 * are skipped; "--" ends the options). Returns 0 when every long option is
 * an exact name of opts; otherwise prints "PROG: option '--tok' is not
 * spelled in full (long options are not abbreviated): --token-file" on
 * stderr and returns -1 (the caller exits with its usage status).
 * shortopts: getopt's short option string (values of "k:" are skipped).
 */
static inline int m3_cli_exact_long(int argc, char **argv, const char *shortopts,
                                    const struct option *opts, const char *prog) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) break;
    if (a[0] != '-' || a[1] == '\0') continue; /* an operand, or "-" */
    if (a[1] != '-') {                         /* short options: -k5, -k 5, -h */
      int takes = 0;
      for (const char *p = a + 1; *p && !takes; p++) {
        for (const char *q = shortopts; q && *q; q++)
          if (*q == *p && *q != ':' && q[1] == ':') takes = 1 + (p[1] == '\0');
      }
      if (takes == 2) i++; /* the value is the next argument */
      continue;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const struct option *hit = NULL;
    for (const struct option *o = opts; o->name; o++)
      if (strlen(o->name) == len && !strncmp(o->name, name, len)) hit = o;
    if (hit) {
      if (hit->has_arg == required_argument && !eq) i++;
      continue;
    }
    char cands[512];
    size_t n = 0;
    cands[0] = '\0';
    for (const struct option *o = opts; o->name; o++)
      if (len && !strncmp(o->name, name, len) && n + strlen(o->name) + 5 < sizeof cands)
        n += (size_t)snprintf(cands + n, sizeof cands - n, "%s--%s", n ? ", " : "", o->name);
    if (n == 0) continue; /* unknown: getopt_long says so */
    fprintf(stderr,
            "%s: option '--%.*s' is not spelled in full (long options are not abbreviated): %s\n",
            prog, (int)len, name, cands);
    return -1;
  }
  return 0;
}

/*
 * addr must be "HOST:PORT" or "[V6]:PORT" (HOST an address or a name, e.g.
 * localhost) with PORT a decimal number in port_min..65535 (1 for a client,
 * 0 for a listening address: a free port). Returns 0, or -1 after printing
 * "PROG: OPT 'ADDR': ..." on stderr.
 */
static inline int m3_cli_check_addr(const char *prog, const char *opt, const char *addr,
                                    long port_min) {
  const char *colon = NULL;
  if (addr[0] == '[') {
    const char *end = strchr(addr, ']');
    if (end && end[1] == ':') colon = end + 1;
  } else {
    colon = strrchr(addr, ':');
  }
  if (colon == NULL || colon == addr || colon[1] == '\0') {
    fprintf(stderr, "%s: %s '%s': expected HOST:PORT (e.g. 127.0.0.1:7600 or localhost:7600)\n",
            prog, opt, addr);
    return -1;
  }
  const char *p = colon + 1;
  if (strspn(p, "0123456789") != strlen(p)) {
    fprintf(stderr, "%s: %s '%s': port '%s' is not a number\n", prog, opt, addr, p);
    return -1;
  }
  errno = 0;
  long port = strtol(p, NULL, 10);
  if (errno || port < port_min || port > 65535) {
    fprintf(stderr, "%s: %s '%s': port %s is out of range (%ld to 65535)\n", prog, opt, addr, p,
            port_min);
    return -1;
  }
  return 0;
}

#endif /* M3_INTERNAL_CLI_H */
