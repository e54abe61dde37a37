# m3decode: the reference worker (m3/decode.h): a greedy Llama decoder with
# memory attention (CPU on OpenBLAS; CUDA behind the same backend table when
# nvcc was found) and the loop that retrieves every 64 tokens.
# Links flow one way: m3decode -> m3attn, m3client (rounds), m3encoder
# (tokenizer) -> m3model (weights and the shared kernels).
find_package(Threads REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
add_library(m3decode STATIC
  ${CMAKE_CURRENT_LIST_DIR}/src/decode.c
  ${CMAKE_CURRENT_LIST_DIR}/src/decode_cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/src/decode_attn.c
  ${CMAKE_CURRENT_LIST_DIR}/src/decode_loop.c)
set_target_properties(m3decode PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(m3decode PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include
  PRIVATE ${CMAKE_CURRENT_LIST_DIR}/src)
target_link_libraries(m3decode PUBLIC m3attn m3client m3encoder m3model PkgConfig::OPENBLAS
  PkgConfig::JANSSON Threads::Threads m)
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/src/decode_cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/src/decode_attn.c PROPERTIES COMPILE_OPTIONS "-O3")

if(M3_HAVE_CUDA)
  m3_cuda_library(m3decode_cuda ${CMAKE_CURRENT_LIST_DIR}/cuda/decode_cuda.cu)
  # decode_int.h, and the encoder's shared CUDA kernels (kernels.cuh).
  target_include_directories(m3decode_cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/src
    ${CMAKE_CURRENT_LIST_DIR}/include ${PROJECT_SOURCE_DIR}/encoder/cuda)
  # m3decode's registry lists its table: m3decode -> m3decode_cuda -> m3model.
  target_link_libraries(m3decode_cuda PUBLIC m3model m3attn CUDA::cublas CUDA::cudart)
  target_link_libraries(m3decode PUBLIC m3decode_cuda)
  target_compile_definitions(m3decode PRIVATE M3_WORKER_CUDA)
endif()
