# libm3client tests: real m3-server processes on loopback over real stores
# written by m3-bench gen.
set(_ctdir ${CMAKE_CURRENT_LIST_DIR})
set(_ctutil ${_ctdir}/client_testlib.c ${CMAKE_CURRENT_LIST_DIR}/../unit/testutil.c)

foreach(_t test_client_rpc test_client_auth)
  m3_add_test(${_t} SOURCES ${_ctdir}/${_t}.c ${_ctutil} LABELS integration TIMEOUT 180
    LIBS m3client m)
  add_dependencies(${_t} m3-bench m3-server)
endforeach()

# A server-side ENOSPC (fault injection in the server) reaches the client
# as M3_ENOSPC.
m3_add_test(test_client_enospc SOURCES ${_ctdir}/test_client_enospc.c ${_ctutil}
  LABELS integration fault TIMEOUT 180 LIBS m3client m)
add_dependencies(test_client_enospc m3-bench m3-server)

m3_add_script_test(client_cli SCRIPT ${_ctdir}/test_client_cli.sh LABELS integration TIMEOUT 180)
