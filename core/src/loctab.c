/* The in-RAM location table; see loctab.h. */
#include "loctab.h"

#include <stdlib.h>
#include <string.h>

#include "m3/error.h"

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
