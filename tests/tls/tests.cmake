# TLS on the RPC port (issue 14): real m3-server processes on loopback,
# certificates made at test time with the openssl CLI (make_certs.sh).
# Included by tests/CMakeLists.txt.
set(_tlsdir ${CMAKE_CURRENT_LIST_DIR})
set(_tlsutil ${_tlsdir}/../cluster/cluster_testlib.c ${_tlsdir}/../client/client_testlib.c
  ${_tlsdir}/../unit/testutil.c)
find_program(M3_OPENSSL_CLI openssl)
if(M3_OPENSSL_CLI)
  # TLS fetch/retrieve == plain, each refusal its own error, plain<->TLS
  # mismatch, s_client sees TLS 1.3, SIGHUP reload under load, admin by
  # certificate.
  m3_add_test(test_tls SOURCES ${_tlsdir}/test_tls.c ${_tlsutil} LABELS integration
    TIMEOUT 180 LIBS m3client Threads::Threads m)
  add_dependencies(test_tls m3 m3-bench m3-server)
  # A 2 x 2 local cluster round over TLS (map "tls" object) equals the plain
  # one; the m3 CLI and m3-bench rpc --tls against it.
  m3_add_test(test_tls_cluster SOURCES ${_tlsdir}/test_tls_cluster.c ${_tlsutil}
    LABELS integration TIMEOUT 240 LIBS m3client m)
  add_dependencies(test_tls_cluster m3 m3-bench m3-server)
  # The HTTP port over TLS (--http-tls, --http-tls-ca): a scraper with the
  # CA reads /metrics; plain HTTP, an unknown CA, a missing client
  # certificate refused; SIGHUP reloads it.
  m3_add_script_test(tls_http SCRIPT ${_tlsdir}/test_tls_http.sh LABELS integration TIMEOUT 120)
  # m3 put / m3-encode --server over mutual TLS, admin by certificate.
  m3_add_script_test(tls_put SCRIPT ${_tlsdir}/test_tls_put.sh LABELS integration TIMEOUT 180)
else()
  message(STATUS "openssl CLI not found: the TLS tests are left out")
endif()
# The Python binding's tls_* options (libm3client.so through ctypes).
if(TARGET m3client_shared)
  m3_add_script_test(tls_python SCRIPT ${_tlsdir}/test_tls_python.sh LABELS integration TIMEOUT 120)
  set_property(TEST tls_python APPEND PROPERTY ENVIRONMENT
    "M3_LIB=$<TARGET_FILE:m3client_shared>" "M3_SANITIZE=${M3_SANITIZE}" OMP_NUM_THREADS=1)
endif()
