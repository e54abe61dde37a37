/*
 * safetensors checkpoints: single files and sharded folders
 * (model.safetensors.index.json), memory-mapped read-only. Everything in a
 * header is checked when the file is opened, so that a truncated download
 * or a wrong file fails at once with the file and the tensor named, not
 * later with a fault inside the forward.
 *
 * Workload: a handful of files of up to tens of GB, a few hundred to a few
 * thousand tensors; lookups are linear (a model load does a few hundred).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "m3/error.h"
#include "m3/model.h"

/* Refuse headers larger than this: real ones are well under 10 MB. */
#define ST_MAX_HEADER (256u << 20)

typedef struct st_file {
  char *path;
  const uint8_t *map;  /* our mapping (unmapped at close), or NULL */
  const uint8_t *data; /* the file's bytes: map, or the caller's memory */
  size_t size;
} st_file;

struct m3_safetensors {
  char *source;      /* what was opened: the file or the index json */
  st_file *files;
  size_t n_files;
  m3_tensor *tensors;
  size_t n_tensors, cap_tensors;
};

const char *m3_safetensors_dtype_name(int dtype) {
  switch (dtype) {
  case M3_DTYPE_F32: return "F32";
  case M3_DTYPE_F16: return "F16";
  case M3_DTYPE_BF16: return "BF16";
  default: return "?";
  }
}

/* Element sizes of the dtypes safetensors knows, so that the offsets of
 * tensors m3 does not read are checked too; 0 for unknown names. */
static size_t dtype_name_size(const char *s, int *dt) {
  static const struct {
    const char *name;
    size_t size;
    int dt;
  } map[] = {
      {"F32", 4, M3_DTYPE_F32},   {"F16", 2, M3_DTYPE_F16},  {"BF16", 2, M3_DTYPE_BF16},
      {"F64", 8, M3_TENSOR_DTYPE_OTHER}, {"I64", 8, M3_TENSOR_DTYPE_OTHER}, {"U64", 8, M3_TENSOR_DTYPE_OTHER},
      {"I32", 4, M3_TENSOR_DTYPE_OTHER}, {"U32", 4, M3_TENSOR_DTYPE_OTHER}, {"I16", 2, M3_TENSOR_DTYPE_OTHER},
      {"U16", 2, M3_TENSOR_DTYPE_OTHER}, {"I8", 1, M3_TENSOR_DTYPE_OTHER},  {"U8", 1, M3_TENSOR_DTYPE_OTHER},
      {"BOOL", 1, M3_TENSOR_DTYPE_OTHER}, {"F8_E4M3", 1, M3_TENSOR_DTYPE_OTHER},
      {"F8_E5M2", 1, M3_TENSOR_DTYPE_OTHER},
  };
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strcmp(s, map[i].name)) {
      *dt = map[i].dt;
      return map[i].size;
    }
  *dt = M3_TENSOR_DTYPE_OTHER;
  return 0;
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: renormalize */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        exp--;
      }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

void m3_safetensors_convert_f32(int dtype, const void *src, float *dst, size_t n) {
  const uint8_t *p = src;
  switch (dtype) {
  case M3_DTYPE_F32: memcpy(dst, src, n * 4); break;
  case M3_DTYPE_BF16:
    for (size_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2); /* the mapping may be unaligned */
      uint32_t u = (uint32_t)h << 16;
      memcpy(&dst[i], &u, 4);
    }
    break;
  case M3_DTYPE_F16:
    for (size_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      dst[i] = f16_to_f32(h);
    }
    break;
  default: M3_ASSERT(!"m3_safetensors_convert_f32: unreadable dtype");
  }
}

void m3_safetensors_close(m3_safetensors *st) {
  if (!st) return;
  for (size_t i = 0; i < st->n_files; i++) {
    if (st->files[i].map) munmap((void *)st->files[i].map, st->files[i].size);
    free(st->files[i].path);
  }
  for (size_t i = 0; i < st->n_tensors; i++) {
    free((char *)st->tensors[i].name);
    free((char *)st->tensors[i].dtype_name);
  }
  free(st->files);
  free(st->tensors);
  free(st->source);
  free(st);
}

static int add_tensor(m3_safetensors *st, const m3_tensor *t) {
  if (st->n_tensors == st->cap_tensors) {
    size_t cap = st->cap_tensors ? 2 * st->cap_tensors : 64;
    m3_tensor *nt = realloc(st->tensors, cap * sizeof *nt);
    if (!nt) return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
    st->tensors = nt;
    st->cap_tensors = cap;
  }
  st->tensors[st->n_tensors++] = *t;
  return 0;
}

/* Parse one tensor entry of file f's header. */
static int parse_entry(m3_safetensors *st, const st_file *f, const char *name, json_t *v,
                       const uint8_t *data, size_t data_size) {
  m3_tensor t;
  memset(&t, 0, sizeof t);
  t.file = f->path;
  if (!json_is_object(v))
    return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: header entry is not an object", name,
                      f->path);
  json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
         *jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
    return m3__seterr(M3_EBADFORMAT,
                      "tensor '%s' in %s: header entry lacks dtype, shape or data_offsets", name,
                      f->path);
  size_t esize = dtype_name_size(json_string_value(jd), &t.dtype);
  if (json_array_size(js) > M3_TENSOR_MAX_DIMS)
    return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: %zu dims (at most %d)", name, f->path,
                      json_array_size(js), M3_TENSOR_MAX_DIMS);
  t.ndim = (int)json_array_size(js);
  t.numel = 1;
  for (int i = 0; i < t.ndim; i++) {
    json_t *d = json_array_get(js, (size_t)i);
    if (!json_is_integer(d) || json_integer_value(d) < 0 ||
        json_integer_value(d) > (json_int_t)1 << 40)
      return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: bad shape", name, f->path);
    t.shape[i] = json_integer_value(d);
    /* A product that wraps would let a tiny data span pass as a huge tensor. */
    if (__builtin_mul_overflow(t.numel, (size_t)t.shape[i], &t.numel))
      return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: shape has more elements than memory",
                        name, f->path);
  }
  size_t need;
  if (__builtin_mul_overflow(t.numel, esize, &need))
    return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: shape x dtype size overflows", name,
                      f->path);
  json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
  if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
      json_integer_value(e) < json_integer_value(b))
    return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s: bad data_offsets", name, f->path);
  uint64_t ob = (uint64_t)json_integer_value(b), oe = (uint64_t)json_integer_value(e);
  t.nbytes = (size_t)(oe - ob);
  if (esize && t.nbytes != need)
    return m3__seterr(M3_EBADFORMAT,
                      "tensor '%s' in %s: data_offsets span %zu bytes, shape and dtype %s need %zu",
                      name, f->path, t.nbytes, json_string_value(jd), need);
  if (oe > data_size)
    return m3__seterr(M3_EBADFORMAT,
                      "tensor '%s' in %s: data ends at byte %llu of the data section, which has "
                      "only %zu bytes (truncated file?)",
                      name, f->path, (unsigned long long)oe, data_size);
  t.data = data + ob;
  t.name = strdup(name);
  t.dtype_name = strdup(json_string_value(jd));
  if (!t.name || !t.dtype_name) {
    free((char *)t.name);
    free((char *)t.dtype_name);
    return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
  }
  int rc = add_tensor(st, &t);
  if (rc) {
    free((char *)t.name);
    free((char *)t.dtype_name);
  }
  return rc;
}

/* Parse file f's bytes (f->data, f->size: the mapping, or the caller's
 * memory), appending its tensors. */
static int parse_file(m3_safetensors *st, const st_file *f) {
  int rc = 0;
  json_t *root = NULL;
  if (f->size < 8)
    return m3__seterr(M3_EBADFORMAT,
                      "safetensors: %s is %zu bytes, shorter than its 8-byte header length "
                      "(truncated header)",
                      f->path, f->size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->data[i];
  if (hlen > f->size - 8 || hlen > ST_MAX_HEADER || hlen < 2)
    return m3__seterr(M3_EBADFORMAT,
                      "safetensors: %s: header length %llu does not fit the file's %zu bytes "
                      "(truncated or garbage header)",
                      f->path, (unsigned long long)hlen, f->size);
  json_error_t jerr;
  root = json_loadb((const char *)f->data + 8, (size_t)hlen, 0, &jerr);
  if (!root || !json_is_object(root)) {
    rc = m3__seterr(M3_EBADFORMAT, "safetensors: %s: header is not a JSON object (%s)", f->path,
                    root ? "not an object" : jerr.text);
    goto out;
  }
  const uint8_t *data = f->data + 8 + hlen;
  size_t data_size = f->size - 8 - (size_t)hlen;
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (!strcmp(key, "__metadata__")) continue;
    if ((rc = parse_entry(st, f, key, v, data, data_size))) goto out;
  }
out:
  json_decref(root);
  return rc;
}

/* A new st_file entry named path (its bytes not yet set). */
static int add_file(m3_safetensors *st, const char *path, st_file **out) {
  st_file *nf = realloc(st->files, (st->n_files + 1) * sizeof *nf);
  if (!nf) return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
  st->files = nf;
  st_file *f = &st->files[st->n_files];
  memset(f, 0, sizeof *f);
  if (!(f->path = strdup(path))) return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
  st->n_files++;
  *out = f;
  return 0;
}

/* Map and parse one .safetensors file, appending its tensors. */
static int open_file(m3_safetensors *st, const char *path) {
  int rc = 0, fd = -1;
  st_file *f;
  if ((rc = add_file(st, path, &f))) return rc;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    rc = m3__syserr(errno, "safetensors: open %s", path);
    goto out;
  }
  struct stat sb;
  if (fstat(fd, &sb) < 0) {
    rc = m3__syserr(errno, "safetensors: stat %s", path);
    goto out;
  }
  if (sb.st_size < 8) {
    rc = m3__seterr(M3_EBADFORMAT,
                    "safetensors: %s is %lld bytes, shorter than its 8-byte header length "
                    "(truncated header)",
                    path, (long long)sb.st_size);
    goto out;
  }
  f->size = (size_t)sb.st_size;
  void *map = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    rc = m3__syserr(errno, "safetensors: mmap %s", path);
    goto out;
  }
  f->map = f->data = map;
  rc = parse_file(st, f);
out:
  if (fd >= 0) close(fd);
  return rc;
}

int m3_safetensors_open_mem(const char *name, const void *data, size_t size,
                            m3_safetensors **out) {
  *out = NULL;
  m3_safetensors *st = calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
  st_file *f;
  int rc = 0;
  if (!(st->source = strdup(name))) {
    rc = m3__seterr(M3_ENOMEM, "safetensors: out of memory");
    goto out;
  }
  if ((rc = add_file(st, name, &f))) goto out;
  f->data = data;
  f->size = size;
  rc = parse_file(st, f);
out:
  if (rc) m3_safetensors_close(st);
  else *out = st;
  return rc;
}

static int path_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcmp(s + a - b, suf);
}

static const m3_tensor *lookup(const m3_safetensors *st, const char *name) {
  for (size_t i = 0; i < st->n_tensors; i++)
    if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
  return NULL;
}

static int open_index(m3_safetensors *st, const char *index) {
  int rc = 0;
  json_error_t jerr;
  json_t *root = json_load_file(index, 0, &jerr);
  char dir[PATH_MAX], path[PATH_MAX];
  if (!root) {
    if (!path_exists(index)) return m3__seterr(M3_ENOTFOUND, "safetensors: %s: no such file", index);
    return m3__seterr(M3_EBADFORMAT, "safetensors: %s: bad JSON (%s, line %d)", index, jerr.text,
                      jerr.line);
  }
  json_t *wm = json_object_get(root, "weight_map");
  if (!json_is_object(wm)) {
    rc = m3__seterr(M3_EBADFORMAT, "safetensors: %s: no \"weight_map\" object", index);
    goto out;
  }
  snprintf(dir, sizeof dir, "%s", index);
  char *slash = strrchr(dir, '/');
  if (slash) slash[1] = '\0';
  else dir[0] = '\0';
  const char *key;
  json_t *v;
  /* Open each shard once, in the order the map first names it. */
  json_object_foreach(wm, key, v) {
    if (!json_is_string(v) || strchr(json_string_value(v), '/')) {
      rc = m3__seterr(M3_EBADFORMAT, "safetensors: %s: tensor '%s' maps to a bad file name",
                      index, key);
      goto out;
    }
    snprintf(path, sizeof path, "%s%s", dir, json_string_value(v));
    int seen = 0;
    for (size_t i = 0; i < st->n_files && !seen; i++) seen = !strcmp(st->files[i].path, path);
    if (!seen && (rc = open_file(st, path))) goto out;
  }
  /* Every tensor the index lists must be in the shard it names. */
  json_object_foreach(wm, key, v) {
    const m3_tensor *t = lookup(st, key);
    snprintf(path, sizeof path, "%s%s", dir, json_string_value(v));
    if (!t || strcmp(t->file, path)) {
      rc = m3__seterr(M3_EBADFORMAT, "safetensors: tensor '%s' listed in %s not found in %s", key,
                      index, path);
      goto out;
    }
  }
out:
  json_decref(root);
  return rc;
}

int m3_safetensors_open(const char *path, m3_safetensors **out) {
  int rc = 0;
  char buf[PATH_MAX];
  *out = NULL;
  m3_safetensors *st = calloc(1, sizeof *st);
  if (!st) return m3__seterr(M3_ENOMEM, "safetensors: out of memory");
  struct stat sb;
  if (stat(path, &sb) < 0) {
    rc = m3__syserr(errno, "safetensors: %s", path);
    goto out;
  }
  const char *src = path;
  if (S_ISDIR(sb.st_mode)) {
    snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);
    if (!path_exists(buf)) snprintf(buf, sizeof buf, "%s/model.safetensors", path);
    if (!path_exists(buf)) {
      rc = m3__seterr(M3_ENOTFOUND,
                      "safetensors: %s holds neither model.safetensors.index.json nor "
                      "model.safetensors",
                      path);
      goto out;
    }
    src = buf;
  }
  if (!(st->source = strdup(src))) {
    rc = m3__seterr(M3_ENOMEM, "safetensors: out of memory");
    goto out;
  }
  rc = ends_with(src, ".json") ? open_index(st, src) : open_file(st, src);
out:
  if (rc) m3_safetensors_close(st);
  else *out = st;
  return rc;
}

size_t m3_safetensors_count(const m3_safetensors *st) { return st->n_tensors; }

const m3_tensor *m3_safetensors_at(const m3_safetensors *st, size_t i) {
  return i < st->n_tensors ? &st->tensors[i] : NULL;
}

int m3_safetensors_find(const m3_safetensors *st, const char *name, m3_tensor *out) {
  const m3_tensor *t = lookup(st, name);
  if (!t) return m3__seterr(M3_ENOTFOUND, "tensor '%s' not found in %s", name, st->source);
  if (out) *out = *t;
  return 0;
}

static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t n = (size_t)snprintf(buf, cap, "(");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, ")");
}

int m3_safetensors_read_f32(const m3_safetensors *st, const char *name, int ndim,
                            const int64_t *shape, float *dst) {
  const m3_tensor *tp = lookup(st, name);
  if (!tp) return m3__seterr(M3_EBADFORMAT, "tensor '%s' missing from %s", name, st->source);
  m3_tensor t = *tp;
  if (t.dtype == M3_TENSOR_DTYPE_OTHER)
    return m3__seterr(M3_EBADFORMAT,
                      "tensor '%s' in %s has unsupported dtype %s (F32, F16 and BF16 are read)",
                      name, t.file, t.dtype_name);
  int same = t.ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t.shape[i] == shape[i];
  if (!same) {
    char want[128], got[128];
    fmt_shape(want, sizeof want, ndim, shape);
    fmt_shape(got, sizeof got, t.ndim, t.shape);
    return m3__seterr(M3_EBADFORMAT, "tensor '%s' in %s has shape %s, expected %s", name, t.file,
                      got, want);
  }
  m3_safetensors_convert_f32(t.dtype, t.data, dst, t.numel);
  return 0;
}
