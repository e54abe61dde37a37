/* libFuzzer target for cluster maps (client/src/cluster_map.c, the JSON that
 * m3, m3-bench and the Python binding take with --cluster): any bytes give a
 * map whose every shard has replicas with addresses, or an error. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "m3/cluster.h"
#include "m3/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *json = malloc(size + 1);
  if (!json) return 0;
  memcpy(json, data, size);
  json[size] = '\0';
  m3_cluster_map *m = NULL;
  if (m3_cluster_map_parse(json, "fuzz.json", &m) == 0) {
    uint32_t shards = m3_cluster_map_shards(m);
    M3_ASSERT(shards > 0);
    for (uint32_t s = 0; s < shards; s++) {
      uint32_t r = m3_cluster_map_replicas(m, s);
      M3_ASSERT(r > 0);
      for (uint32_t i = 0; i < r; i++) M3_ASSERT(m3_cluster_map_replica(m, s, i) != NULL);
    }
    (void)m3_cluster_map_token(m);
    uint64_t fp;
    (void)m3_cluster_map_fingerprint(m, &fp);
    m3_cluster_map_free(m);
  }
  free(json);
  return 0;
}
