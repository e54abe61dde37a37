# The model side of m3encoder: safetensors checkpoints, config.json, the
# forward pass of the memory layers (CPU reference on OpenBLAS; CUDA when
# nvcc was found), Memory3 token selection and the test-model writer.
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
target_sources(m3encoder PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/src/safetensors.c
  ${CMAKE_CURRENT_LIST_DIR}/src/model.c
  ${CMAKE_CURRENT_LIST_DIR}/src/forward_cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/src/select.c
  ${CMAKE_CURRENT_LIST_DIR}/src/testmodel.c
)
target_link_libraries(m3encoder PUBLIC PkgConfig::OPENBLAS m)
# The elementwise loops (RMSNorm, SiLU, softmax, column sums) vectorize at -O3.
set_source_files_properties(
  ${CMAKE_CURRENT_LIST_DIR}/src/forward_cpu.c ${CMAKE_CURRENT_LIST_DIR}/src/select.c
  PROPERTIES COMPILE_OPTIONS "-O3")

if(M3_HAVE_CUDA)
  add_library(m3encoder_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/cuda/forward_cuda.cu)
  set_target_properties(m3encoder_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON
    CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
  # The directory's C flags (-Wstrict-prototypes, sanitizers) are not nvcc's.
  set_property(TARGET m3encoder_cuda PROPERTY COMPILE_OPTIONS "")
  target_compile_options(m3encoder_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>)
  if(M3_WERROR)
    target_compile_options(m3encoder_cuda PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
  # Public headers only; the .cu includes ../src/model_int.h by path.
  target_include_directories(m3encoder_cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/include
    ${PROJECT_SOURCE_DIR}/core/include)
  # It uses m3encoder's host helpers (embedding rows, the RoPE table) and
  # m3encoder uses its table: mutually dependent static libraries, which
  # CMake repeats on the link line.
  target_link_libraries(m3encoder_cuda PUBLIC m3encoder m3core CUDA::cublas CUDA::cudart)
  target_link_libraries(m3encoder PUBLIC m3encoder_cuda)
  target_compile_definitions(m3encoder PRIVATE M3_ENCODER_CUDA)
endif()
