# The codec layer (m3/codec.h).
#   m3core  gets what inference workers need, without FAISS: codec set files,
#           fingerprints, the CPU table decoder, training-sample files.
#   m3codec training, encoding, building and checking decode tables (FAISS C API).
#   m3cuda  the CUDA decoder, when nvcc was found (M3_HAVE_CUDA).
target_sources(m3core PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_set.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_decode.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_vecs.c
)
# The decoder's row sums only vectorize at -O3 with GCC's default cost model.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/codec_decode.c
  PROPERTIES COMPILE_OPTIONS "-O3")

pkg_check_modules(FAISS_C REQUIRED IMPORTED_TARGET faiss_c)
if(NOT TARGET PkgConfig::OPENBLAS)
  pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
endif()
add_library(m3codec STATIC
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_faiss.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_layout.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_encode.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_gemm.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_gemm_read.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_sample.c
)
# The GEMM encoder's scans vectorize at -O3; AVX2 / AVX-512 clones where the CPU has them.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/codec_gemm.c
  PROPERTIES COMPILE_OPTIONS "-O3")
set_target_properties(m3codec PROPERTIES OUTPUT_NAME m3codec POSITION_INDEPENDENT_CODE ON)
target_include_directories(m3codec PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(m3codec PUBLIC m3core PkgConfig::FAISS_C PkgConfig::OPENBLAS)

if(M3_HAVE_CUDA)
  # The .cu includes ../src/codec_internal.h by path (core/src stays private).
  m3_cuda_library(m3cuda ${CMAKE_CURRENT_SOURCE_DIR}/cuda/codec_decode.cu)
  target_link_libraries(m3cuda PUBLIC m3core CUDA::cudart)

  # The GEMM encoder on the GPU: cuBLAS sgemm + kernels; codebooks from m3codec.
  add_library(m3cudaenc STATIC ${CMAKE_CURRENT_SOURCE_DIR}/cuda/codec_gemm_enc.cu)
  set_target_properties(m3cudaenc PROPERTIES OUTPUT_NAME m3cudaenc POSITION_INDEPENDENT_CODE ON
    CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
  set_property(TARGET m3cudaenc PROPERTY COMPILE_OPTIONS "")
  target_compile_options(m3cudaenc PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>)
  if(M3_WERROR)
    target_compile_options(m3cudaenc PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
  target_link_libraries(m3cudaenc PUBLIC m3codec CUDA::cudart CUDA::cublas)
endif()
