/*
 * Durable file replacement, the one way m3 writes a whole file in place of
 * another (codec sets, index files and stamps, m3-encode's outputs):
 *   write PATH.tmp, fsync it, rename it over PATH, fsync PATH's directory.
 * A crash leaves either the old file or the new one (and perhaps a stray
 * PATH.tmp that the next replace truncates), never a torn one; once a
 * replace returns 0 the new file survives power loss. Internal-but-shared
 * (core/include/m3/internal/README.md); the code is core/src/fsutil.c.
 */
#ifndef M3_INTERNAL_FSUTIL_H
#define M3_INTERNAL_FSUTIL_H

#include <stddef.h>

/* fsync a directory (after a rename, create or unlink in it). 0, or a
 * negative m3 code with the directory named in m3_errmsg(). */
int m3__fsync_dir(const char *dir);

/* Write len bytes at fd's offset, retrying short writes and EINTR.
 * 0, or the errno value of the failure (EIO for a write of 0 bytes). */
int m3__fs_write_all(int fd, const void *buf, size_t len);

/* Writes the new contents to fd (PATH.tmp, opened for writing, empty);
 * tmp is its name for messages. 0, or a negative m3 code with a message. */
typedef int (*m3__fs_writer)(int fd, const char *tmp, void *ud);

/* Replace path with what fn writes (see the top of the file). On failure
 * PATH.tmp is removed, path is untouched unless the failure came after the
 * rename (the directory fsync), and m3_errmsg() names the file and step. */
int m3__fs_replace_fn(const char *path, m3__fs_writer fn, void *ud);

/* Replace path with buf[0..len). */
int m3__fs_replace(const char *path, const void *buf, size_t len);

#endif /* M3_INTERNAL_FSUTIL_H */
