# Integration and fault tests of the store engine: real processes, real
# stores on disk. Included by tests/CMakeLists.txt; uses testutil.c from
# tests/unit (M3_TESTUTIL).
set(_itdir ${CMAKE_CURRENT_LIST_DIR})
if(NOT M3_TESTUTIL)
  set(M3_TESTUTIL ${_itdir}/../unit/testutil.c)
endif()

# Helper programs the tests start (found through M3_BIN_DIR).
foreach(_helper crash_writer bulk_writer store_child)
  add_executable(${_helper} ${_itdir}/${_helper}.c ${M3_TESTUTIL})
  target_include_directories(${_helper} PRIVATE ${_itdir}/..)
  target_link_libraries(${_helper} PRIVATE m3core m3test PkgConfig::CMOCKA)
endforeach()

m3_add_test(test_crash_kill SOURCES ${_itdir}/test_crash_kill.c ${M3_TESTUTIL}
  LABELS fault integration TIMEOUT 180)
add_dependencies(test_crash_kill crash_writer)
# The long form: 10x the iterations, times $M3_SOAK_SCALE (1 in CI).
add_test(NAME test_crash_kill_soak COMMAND test_crash_kill)
set_tests_properties(test_crash_kill_soak PROPERTIES TIMEOUT 3600 LABELS "slow"
  ENVIRONMENT "M3_BIN_DIR=${PROJECT_BINARY_DIR}/bin;M3_SOAK_FACTOR=10")

# kill -9 during bulk ingest (SST checkpoints), reopen, verify, resume.
m3_add_test(test_bulk_crash SOURCES ${_itdir}/test_bulk_crash.c ${M3_TESTUTIL}
  LABELS fault integration TIMEOUT 300)
add_dependencies(test_bulk_crash bulk_writer)

m3_add_test(test_corrupt SOURCES ${_itdir}/test_corrupt.c ${M3_TESTUTIL}
  LABELS integration TIMEOUT 120)

m3_add_test(test_repair SOURCES ${_itdir}/test_repair.c ${M3_TESTUTIL}
  LABELS integration TIMEOUT 120)
add_dependencies(test_repair store_child)

m3_add_test(test_compact SOURCES ${_itdir}/test_compact.c ${M3_TESTUTIL}
  LABELS integration fault TIMEOUT 120)
add_dependencies(test_compact store_child)

m3_add_test(test_fault SOURCES ${_itdir}/test_fault.c ${M3_TESTUTIL}
  LABELS fault integration TIMEOUT 120)
add_dependencies(test_fault store_child)
