# Cluster tests: a local 2-shard x 2-replica cluster (deploy/local/m3-cluster
# over real m3-server processes on loopback) against one unsharded server,
# under replica kills, with a shard down, with servers of another layout,
# with a replica stopped, and through async calls.
set(_cldir ${CMAKE_CURRENT_LIST_DIR})
set(_clutil ${_cldir}/cluster_testlib.c ${_cldir}/../client/client_testlib.c
  ${_cldir}/../unit/testutil.c)

m3_add_test(test_cluster_map SOURCES ${_cldir}/test_cluster_map.c ${_cldir}/../unit/testutil.c
  LABELS unit TIMEOUT 60 LIBS m3client)

function(m3_cluster_test name labels timeout)
  m3_add_test(${name} SOURCES ${_cldir}/${name}.c ${_clutil} LABELS ${labels}
    TIMEOUT ${timeout} LIBS m3client m ${ARGN})
  add_dependencies(${name} m3 m3-bench m3-server)
endfunction()

m3_cluster_test(test_cluster_equiv "integration" 120)
m3_cluster_test(test_cluster_shard_down "integration;fault" 120)
m3_cluster_test(test_cluster_fingerprint "integration" 120)
m3_cluster_test(test_cluster_failover "integration;fault" 180)
# The worker pool and async calls (callback mode), cancel and close with ops
# in flight, hedged Fetch around a stopped replica.
m3_cluster_test(test_cluster_pool "integration" 120)
m3_cluster_test(test_cluster_async "integration" 120)
m3_cluster_test(test_cluster_async_cancel "integration" 120)
m3_cluster_test(test_cluster_hedge_fetch "integration;fault" 120)
# Dispatch mode driven by a real libuv loop (libuv is the server's
# dependency; the test is left out where it is missing).
pkg_check_modules(M3_TEST_LIBUV QUIET IMPORTED_TARGET libuv)
if(M3_TEST_LIBUV_FOUND)
  m3_cluster_test(test_cluster_uv "integration" 120 PkgConfig::M3_TEST_LIBUV)
endif()

# The same kill run as a soak: 25 s x $M3_SOAK_SCALE (1 in CI; 10 for a few
# minutes) with 2 + 4 x scale replica kills, all but the last two restarted
# (M3_CLUSTER_LOAD_S and M3_FAILOVER_KILLS override both tests).
add_test(NAME test_cluster_failover_slow COMMAND test_cluster_failover soak)
set_tests_properties(test_cluster_failover_slow PROPERTIES TIMEOUT 3600
  LABELS "integration;fault;slow" SKIP_RETURN_CODE 77
  ENVIRONMENT "M3_BIN_DIR=${PROJECT_BINARY_DIR}/bin;M3_SOURCE_DIR=${PROJECT_SOURCE_DIR}")

m3_add_script_test(cluster_cli SCRIPT ${_cldir}/test_cluster_cli.sh LABELS integration
  TIMEOUT 180)

# A hostile peer process (real frames, real protobuf-c messages) answering
# Fetch with out-of-range Memory.query / a rank: refused as a protocol error.
m3_add_test(test_cluster_hostile_query SOURCES ${_cldir}/test_cluster_hostile_query.c
  LABELS "integration;fault" TIMEOUT 60 LIBS m3client)

# No two of libm3client's files call each other, directly or round a cycle
# (docs/ARCHITECTURE.md, the cluster client): the file-level call graph of
# m3client's objects from nm (scripts/objgraph.py).
find_program(M3_PYTHON3 python3 REQUIRED)
add_test(NAME client_no_cycles
  COMMAND ${M3_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/objgraph.py $<TARGET_OBJECTS:m3client>)
set_tests_properties(client_no_cycles PROPERTIES LABELS "unit" TIMEOUT 30)
