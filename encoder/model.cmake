# The model side of m3encoder, in two layers:
#   m3model     safetensors checkpoints, config.json, the converted weights
#               and the helpers backends share (model_int.h), the test-model
#               writer. Depends on m3core only.
#   m3encoder   the forward runner and its backend registry (forward.c), the
#               CPU reference backend on OpenBLAS, Memory3 token selection;
#               m3encoder_cuda (when nvcc was found) is its CUDA backend.
# Links flow one way: m3encoder -> m3encoder_cuda -> m3model -> m3core.
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
add_library(m3model STATIC
  ${CMAKE_CURRENT_LIST_DIR}/src/safetensors.c
  ${CMAKE_CURRENT_LIST_DIR}/src/model.c
  ${CMAKE_CURRENT_LIST_DIR}/src/kernels_cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/src/registry.c
  ${CMAKE_CURRENT_LIST_DIR}/src/testmodel.c)
set_target_properties(m3model PROPERTIES POSITION_INDEPENDENT_CODE ON)
# src/ is public to the backends in other directories (model_int.h).
target_include_directories(m3model PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include
  ${CMAKE_CURRENT_LIST_DIR}/src)
target_link_libraries(m3model PUBLIC m3core PkgConfig::JANSSON m)
target_sources(m3encoder PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/src/forward.c
  ${CMAKE_CURRENT_LIST_DIR}/src/forward_cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/src/select.c
)
target_link_libraries(m3encoder PUBLIC m3model PkgConfig::OPENBLAS m)
# The elementwise loops (RMSNorm, SiLU, softmax, column sums) vectorize at -O3.
set_source_files_properties(
  ${CMAKE_CURRENT_LIST_DIR}/src/forward_cpu.c ${CMAKE_CURRENT_LIST_DIR}/src/select.c
  ${CMAKE_CURRENT_LIST_DIR}/src/kernels_cpu.c
  PROPERTIES COMPILE_OPTIONS "-O3")

if(M3_HAVE_CUDA)
  m3_cuda_library(m3encoder_cuda ${CMAKE_CURRENT_LIST_DIR}/cuda/forward_cuda.cu)
  # The .cu includes ../src/forward_int.h by path. It uses m3model's host
  # helpers (embedding rows, the RoPE table); forward.c's registry lists its
  # table: m3encoder -> m3encoder_cuda -> m3model, no cycle.
  target_link_libraries(m3encoder_cuda PUBLIC m3model CUDA::cublas CUDA::cudart)
  target_link_libraries(m3encoder PUBLIC m3encoder_cuda)
  target_compile_definitions(m3encoder PRIVATE M3_ENCODER_CUDA)
endif()
