# deploy/k8s: render, validate, and check against deploy/local/m3-cluster.
# Included by tests/CMakeLists.txt.
m3_add_script_test(k8s_manifests SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_k8s_manifests.sh
  LABELS integration TIMEOUT 300)
