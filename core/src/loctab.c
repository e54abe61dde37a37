/* The in-RAM location table; see loctab.h. */
#include "loctab.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "m3/crc32c.h"
#include "m3/error.h"
#include "m3/log.h"

/* A slot is empty when rec_len is 0: every record has a header. */
typedef struct slot {
  uint32_t id_lo, id_hi;
  uint32_t seg, off_units, rec_len, mem_crc, text_crc;
} slot;

struct m3_loctab {
  slot *v;
  size_t mask;  /* capacity - 1, capacity a power of two */
  int bits;     /* log2 capacity */
  size_t n;
  uint32_t mem_len, align;
};

static uint64_t slot_id(const slot *s) { return (uint64_t)s->id_hi << 32 | s->id_lo; }

static size_t home(const m3_loctab *t, uint64_t id) {
  return (size_t)((id * 0x9E3779B97F4A7C15ull) >> (64 - t->bits));
}

static int alloc_slots(m3_loctab *t, int bits) {
  slot *v = calloc((size_t)1 << bits, sizeof *v);
  if (v == NULL) return M3_ENOMEM;
  t->v = v;
  t->bits = bits;
  t->mask = ((size_t)1 << bits) - 1;
  return 0;
}

int m3__loctab_create(uint32_t mem_len, uint32_t align, size_t expect, m3_loctab **out) {
  m3_loctab *t = calloc(1, sizeof *t);
  if (t == NULL) return m3__seterr(M3_ENOMEM, "location table: out of memory");
  t->mem_len = mem_len;
  t->align = align;
  int bits = 10;
  while (bits < 62 && ((size_t)1 << bits) / 8 * 7 < expect) bits++;
  if (alloc_slots(t, bits) != 0) {
    free(t);
    return m3__seterr(M3_ENOMEM, "location table of %zu entries: out of memory", expect);
  }
  *out = t;
  return 0;
}

void m3__loctab_destroy(m3_loctab *t) {
  if (t == NULL) return;
  free(t->v);
  free(t);
}

/* Slot of id, or the empty slot where it would go. */
static slot *find(const m3_loctab *t, uint64_t id) {
  size_t i = home(t, id);
  for (;;) {
    slot *s = &t->v[i];
    if (s->rec_len == 0 || (s->id_lo == (uint32_t)id && s->id_hi == (uint32_t)(id >> 32))) return s;
    i = (i + 1) & t->mask;
  }
}

static int grow(m3_loctab *t) {
  slot *old = t->v;
  size_t cap = t->mask + 1;
  if (alloc_slots(t, t->bits + 1) != 0) {
    t->v = old; /* alloc_slots leaves t alone on failure */
    return m3__seterr(M3_ENOMEM, "location table: out of memory growing past %zu entries", t->n);
  }
  for (size_t i = 0; i < cap; i++)
    if (old[i].rec_len) *find(t, slot_id(&old[i])) = old[i];
  free(old);
  return 0;
}

int m3__loctab_put(m3_loctab *t, uint64_t id, const m3_location *loc) {
  if (loc->mem_len != t->mem_len || loc->rec_len == 0 || loc->offset % t->align ||
      loc->offset / t->align > UINT32_MAX)
    return m3__seterr(M3_ECORRUPT,
                      "chunk %llu: location (segment %u offset %llu, %u/%u bytes) does not fit "
                      "the store (%u-byte memories aligned to %u)",
                      (unsigned long long)id, loc->segment, (unsigned long long)loc->offset,
                      loc->mem_len, loc->rec_len, t->mem_len, t->align);
  slot *s = find(t, id);
  if (s->rec_len == 0) {
    if ((t->n + 1) > (t->mask + 1) / 8 * 7) {
      int rc = grow(t);
      if (rc) return rc;
      s = find(t, id);
    }
    t->n++;
  }
  *s = (slot){(uint32_t)id,       (uint32_t)(id >> 32), loc->segment, (uint32_t)(loc->offset / t->align),
              loc->rec_len,       loc->mem_crc,         loc->text_crc};
  return 0;
}

int m3__loctab_del(m3_loctab *t, uint64_t id) {
  slot *s = find(t, id);
  if (s->rec_len == 0) return 0;
  /* Backward-shift: pull later entries of the probe run into the hole so
   * that lookups never need tombstones. */
  size_t hole = (size_t)(s - t->v), i = hole;
  for (;;) {
    i = (i + 1) & t->mask;
    if (t->v[i].rec_len == 0) break;
    size_t h = home(t, slot_id(&t->v[i]));
    /* Move v[i] when its home is not in (hole, i] (cyclically). */
    if (((i - h) & t->mask) >= ((i - hole) & t->mask)) {
      t->v[hole] = t->v[i];
      hole = i;
    }
  }
  memset(&t->v[hole], 0, sizeof t->v[hole]);
  t->n--;
  return 1;
}

static void to_loc(const m3_loctab *t, const slot *s, m3_location *loc) {
  loc->segment = s->seg;
  loc->offset = (uint64_t)s->off_units * t->align;
  loc->mem_len = t->mem_len;
  loc->rec_len = s->rec_len;
  loc->mem_crc = s->mem_crc;
  loc->text_crc = s->text_crc;
}

int m3__loctab_get(const m3_loctab *t, uint64_t id, m3_location *loc) {
  const slot *s = find(t, id);
  if (s->rec_len == 0) return M3_ENOTFOUND;
  to_loc(t, s, loc);
  return 0;
}

void m3__loctab_get_many(const m3_loctab *t, const uint64_t *ids, size_t n, m3_location *locs,
                         int *status) {
  enum { AHEAD = 8 };
  for (size_t i = 0; i < n && i < AHEAD; i++) __builtin_prefetch(&t->v[home(t, ids[i])]);
  for (size_t i = 0; i < n; i++) {
    if (i + AHEAD < n) __builtin_prefetch(&t->v[home(t, ids[i + AHEAD])]);
    status[i] = m3__loctab_get(t, ids[i], &locs[i]);
  }
}

void m3__loctab_clear(m3_loctab *t) {
  memset(t->v, 0, (t->mask + 1) * sizeof *t->v);
  t->n = 0;
}

size_t m3__loctab_count(const m3_loctab *t) { return t->n; }

size_t m3__loctab_bytes(const m3_loctab *t) { return sizeof *t + (t->mask + 1) * sizeof(slot); }

int m3__loctab_each(const m3_loctab *t, int (*fn)(void *ud, uint64_t id, const m3_location *loc),
                    void *ud) {
  for (size_t i = 0; i <= t->mask; i++) {
    if (t->v[i].rec_len == 0) continue;
    m3_location loc;
    to_loc(t, &t->v[i], &loc);
    int rc = fn(ud, slot_id(&t->v[i]), &loc);
    if (rc) return rc;
  }
  return 0;
}

/* ---- snapshot ------------------------------------------------------- */

#define SNAP_MAGIC "M3LTSNAP"
#define SNAP_VERSION 1u
#define SNAP_HEADER 96

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); } /* little-endian hosts only */
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

static int write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t k = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return k < 0 ? errno : EIO;
    p += k;
    len -= (size_t)k;
  }
  return 0;
}

static int read_all(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t k = read(fd, p, len > (1u << 30) ? (1u << 30) : len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return k < 0 ? errno : EIO;
    p += k;
    len -= (size_t)k;
  }
  return 0;
}

int m3__loctab_save(const m3_loctab *t, const char *path, uint64_t seqno, const char *identity) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  size_t slots = (t->mask + 1) * sizeof(slot);
  uint8_t h[SNAP_HEADER] = {0};
  memcpy(h, SNAP_MAGIC, 8);
  put32(h + 8, SNAP_VERSION);
  put32(h + 12, (uint32_t)t->bits);
  put64(h + 16, t->n);
  put32(h + 24, t->mem_len);
  put32(h + 28, t->align);
  put64(h + 32, seqno);
  snprintf((char *)h + 40, 48, "%s", identity);
  put32(h + 88, m3_crc32c(0, t->v, slots));
  put32(h + 92, m3_crc32c(0, h, 92));
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return m3__syserr(errno, "location table snapshot: create %s", tmp);
  int err = write_all(fd, h, sizeof h);
  if (err == 0) err = write_all(fd, t->v, slots);
  if (close(fd) != 0 && err == 0) err = errno;
  /* No fdatasync: the CRCs catch a file the disk did not get whole, and a
   * bad or stale snapshot only means the table is built from the catalog. */
  if (err == 0 && rename(tmp, path) != 0) err = errno;
  if (err) {
    unlink(tmp);
    return m3__syserr(err, "location table snapshot: write %s", path);
  }
  return 0;
}

int m3__loctab_load(const char *path, uint32_t mem_len, uint32_t align, uint64_t seqno,
                    const char *identity, m3_loctab **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? M3_ENOTFOUND : m3__syserr(errno, "open %s", path);
  uint8_t h[SNAP_HEADER];
  m3_loctab *t = NULL;
  int rc = M3_ENOTFOUND;
  const char *why = NULL;
  if (read_all(fd, h, sizeof h) != 0) why = "short header";
  else if (memcmp(h, SNAP_MAGIC, 8) != 0 || get32(h + 92) != m3_crc32c(0, h, 92)) why = "bad header";
  else if (get32(h + 8) != SNAP_VERSION) why = "other version";
  else if (get64(h + 32) != seqno) why = "catalog changed since";
  else if (strncmp((const char *)h + 40, identity, 48) != 0) why = "another catalog";
  else if (get32(h + 24) != mem_len || get32(h + 28) != align) why = "other layout";
  else if (get32(h + 12) < 10 || get32(h + 12) > 40) why = "bad size";
  if (why) goto out;
  t = calloc(1, sizeof *t);
  int bits = (int)get32(h + 12);
  size_t cap = (size_t)1 << bits;
  if (t == NULL || (t->v = malloc(cap * sizeof(slot))) == NULL) {
    rc = m3__seterr(M3_ENOMEM, "location table snapshot %s: out of memory", path);
    goto out;
  }
  t->bits = bits;
  t->mask = cap - 1;
  t->n = (size_t)get64(h + 16);
  t->mem_len = mem_len;
  t->align = align;
  if (read_all(fd, t->v, cap * sizeof(slot)) != 0) why = "short";
  else if (m3_crc32c(0, t->v, cap * sizeof(slot)) != get32(h + 88)) why = "slots fail their CRC";
  if (!why) {
    size_t n = 0;
    for (size_t i = 0; i < cap; i++) n += t->v[i].rec_len != 0;
    if (n != t->n || n > cap / 8 * 7) why = "count differs";
  }
  if (!why) {
    *out = t;
    t = NULL;
    rc = 0;
  }
out:
  if (why) M3_INFO("store", "%s: not used (%s); building the location table from the catalog", path, why);
  close(fd);
  m3__loctab_destroy(t);
  return rc;
}
