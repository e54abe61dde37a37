/*
 * CRC32C (Castagnoli), the checksum of every record, segment header and
 * payload on the wire. Backed by ISA-L's crc32_iscsi (PCLMUL folding on x86,
 * PMULL on Arm): tens of GB/s, so checking every byte read costs little next
 * to the read itself.
 */
#ifndef M3_CRC32C_H
#define M3_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extend crc (0 to start) over len bytes of buf. m3_crc32c(0, "123456789", 9)
 * is 0xE3069283, the standard check value. */
uint32_t m3_crc32c(uint32_t crc, const void *buf, size_t len);

/* The CRC32C of A followed by B from crc_a = CRC32C(A), crc_b = CRC32C(B) and
 * B's length, without touching the bytes (zlib's crc32_combine, for the
 * Castagnoli polynomial): O(log len_b) work. */
uint32_t m3_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* Copy len bytes from src to dst (not overlapping) and return crc extended
 * over them, in one pass: each block is checked while it is in cache, then
 * copied, so the bytes cross the memory bus once. */
uint32_t m3_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

#endif /* M3_CRC32C_H */
