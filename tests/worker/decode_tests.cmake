# The reference decoder (m3/decode.h) over real m3-servers: plain decode vs
# the memory path (k 0, an empty store), rounds on a real store, memory
# attention vs m3_attn_ref (worker_decode_check), and m3-bench decode's
# trace against the PyTorch worker's (examples/worker.py; skipped parts
# need python3-torch).
set(_wdir ${CMAKE_CURRENT_LIST_DIR})
add_executable(worker_decode_check ${_wdir}/worker_decode_check.c)
target_include_directories(worker_decode_check PRIVATE ${PROJECT_SOURCE_DIR}/worker/src)
target_link_libraries(worker_decode_check PRIVATE m3decode m3core m)
m3_add_script_test(worker_decode SCRIPT ${_wdir}/test_decode.sh LABELS integration TIMEOUT 300)
add_dependencies(worker_decode_check m3-bench m3-encode m3client_shared)
if(TARGET m3-server)
  add_dependencies(worker_decode_check m3-server)
endif()
set_property(TEST worker_decode APPEND PROPERTY ENVIRONMENT
  "M3_LIB=$<TARGET_FILE:m3client_shared>" "M3_DECODE_CHECK=$<TARGET_FILE:worker_decode_check>"
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)

# The CUDA backend against the CPU one (exit 77 without a device).
if(TARGET m3decode_cuda)
  add_executable(worker_decode_cuda ${_wdir}/test_decode_cuda.c)
  target_link_libraries(worker_decode_cuda PRIVATE m3decode m3core m)
  add_test(NAME worker_decode_cuda COMMAND worker_decode_cuda)
  set_tests_properties(worker_decode_cuda PROPERTIES TIMEOUT 120 LABELS unit SKIP_RETURN_CODE 77)
endif()

# Calls flow one way inside the model library and the decoder (forward.c /
# decode.c -> backends -> model.c, kernels, registry): the file-level call
# graph of their objects, from nm, has no cycle.
find_program(M3_PYTHON3 python3 REQUIRED)
add_test(NAME worker_decode_no_cycles
  COMMAND ${M3_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/objgraph.py $<TARGET_OBJECTS:m3model>
  $<TARGET_OBJECTS:m3decode>)
set_tests_properties(worker_decode_no_cycles PROPERTIES LABELS unit TIMEOUT 30)
