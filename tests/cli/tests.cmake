m3_add_script_test(store_cli SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_store_cli.sh
  LABELS integration TIMEOUT 120)
