/* CRC32C over ISA-L. ISA-L's crc32_iscsi takes and returns the raw register
 * (no final inversion) and an int length; m3_crc32c speaks the standard,
 * chainable form for any size. */
#include "m3/crc32c.h"

#include <isa-l/crc.h>

uint32_t m3_crc32c(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint32_t reg = ~crc;
  while (len > 0) {
    int n = len > (1u << 30) ? (1 << 30) : (int)len;
    reg = crc32_iscsi((unsigned char *)p, n, reg);
    p += n;
    len -= (size_t)n;
  }
  return ~reg;
}
