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
add_library(m3codec STATIC
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_faiss.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/codec_layout.c
)
set_target_properties(m3codec PROPERTIES OUTPUT_NAME m3codec POSITION_INDEPENDENT_CODE ON)
target_include_directories(m3codec PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(m3codec PUBLIC m3core PkgConfig::FAISS_C)

if(M3_HAVE_CUDA)
  # The .cu includes ../src/codec_internal.h by path (core/src stays private).
  m3_cuda_library(m3cuda ${CMAKE_CURRENT_SOURCE_DIR}/cuda/codec_decode.cu)
  target_link_libraries(m3cuda PUBLIC m3core CUDA::cudart)
endif()
