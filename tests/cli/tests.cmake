m3_add_script_test(store_cli SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_store_cli.sh
  LABELS integration TIMEOUT 120)
# An installed libm3client linked through pkg-config (not with sanitizers:
# the worker program would need their runtimes).
if(NOT M3_SANITIZE)
  m3_add_script_test(install_pkgconfig SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_install.sh
    LABELS integration TIMEOUT 180)
endif()

# m3-bench's wire baselines: the loopback link, server CPU, the Redis peer.
m3_add_script_test(bench_wire SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_bench_wire.sh
  LABELS integration TIMEOUT 180)

# m3 put / m3 delete (admin writes through m3-server), busy-store messages,
# unabbreviated long options, port checks, CLI output details (issue 16).
m3_add_script_test(cli_admin SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_cli_admin.sh
  LABELS integration TIMEOUT 180)
