# A knowledge base beyond one machine: slices, merge, the local launcher's
# encode pipeline, and the Kubernetes manifests (deploy/k8s). Included by
# tests/CMakeLists.txt.
set(_fdir ${CMAKE_CURRENT_LIST_DIR})
if(TARGET m3-encode)
  m3_add_script_test(fleet_encode SCRIPT ${_fdir}/test_fleet_encode.sh LABELS integration TIMEOUT 300)
  m3_add_script_test(fleet_merge SCRIPT ${_fdir}/test_fleet_merge.sh LABELS fault TIMEOUT 300)
endif()
