# Integration and robustness tests of m3-server: real server processes on
# loopback over real stores written by `m3-bench gen`, spoken to with raw
# frames (tests/server/srvtest.c), not the client library. Included by
# tests/CMakeLists.txt.
set(_srvdir ${CMAKE_CURRENT_LIST_DIR})
# m3_add_test(name SOURCES file LABELS ... TIMEOUT s): every test here needs
# the server, m3-bench and the helper library.
function(m3_server_test name)
  cmake_parse_arguments(S "" "TIMEOUT" "LABELS" ${ARGN})
  m3_add_test(${name} SOURCES ${_srvdir}/${name}.c ${_srvdir}/srvtest.c
    LABELS ${S_LABELS} TIMEOUT ${S_TIMEOUT} LIBS m3proto m3index m)
  add_dependencies(${name} m3-server m3-bench)
endfunction()

m3_server_test(test_server_retrieve LABELS integration server TIMEOUT 120)
m3_server_test(test_server_deadline LABELS integration server TIMEOUT 120)
m3_server_test(test_server_auth LABELS integration server TIMEOUT 120)
m3_server_test(test_server_drain LABELS integration fault server TIMEOUT 120)
m3_server_test(test_server_metrics LABELS integration server TIMEOUT 120)
m3_server_test(test_server_frames LABELS integration fault server TIMEOUT 120)
m3_server_test(test_server_slow_reader LABELS integration fault server TIMEOUT 120)
m3_server_test(test_server_idle_conns LABELS integration fault server TIMEOUT 120)
# Trickle readers are closed below the minimum drain rate; the budget is
# shared fairly (issue 14, defect 7).
m3_server_test(test_server_trickle LABELS integration fault server TIMEOUT 120)
m3_server_test(test_server_config LABELS integration server TIMEOUT 60)
# Issue 14's findings as hostile clients, a Hello flood and slowloris on both
# ports, while a valid client is served.
m3_server_test(test_server_hostile LABELS integration fault server TIMEOUT 180)
# The read buffer budget: reads on the loop (io_uring), then on the
# threadpool (pread).
m3_server_test(test_server_budget LABELS integration server TIMEOUT 120)
add_test(NAME test_server_budget_pread COMMAND test_server_budget pread)
set_tests_properties(test_server_budget_pread PROPERTIES LABELS "integration;server" TIMEOUT 120
  ENVIRONMENT "M3_BIN_DIR=${PROJECT_BINARY_DIR}/bin;M3_SOURCE_DIR=${PROJECT_SOURCE_DIR}")

# Calls between the server's files flow one way (server/src/server.h):
# the file-level call graph of m3-server's objects, from nm, has no cycle.
find_program(M3_PYTHON3 python3 REQUIRED)
add_test(NAME server_no_cycles
  COMMAND ${M3_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/objgraph.py $<TARGET_OBJECTS:m3-server>)
set_tests_properties(server_no_cycles PROPERTIES LABELS "unit;server" TIMEOUT 30)
# Per-call nprobe / ef_search on the wire, micro-batched by setting (issue 11).
m3_server_test(test_server_index_params LABELS integration server TIMEOUT 120)
