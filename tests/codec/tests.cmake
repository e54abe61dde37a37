# Codec layer tests (m3/codec.h). Core-private headers are included by path
# ("../../core/src/...", so a test that reaches inside core says so); the
# internal-but-shared ones (m3/internal/) come with m3core. Small members of
# the paper's codec family ("OPQ4_16,Residual2x4,PQ4x4") on a few thousand
# vectors keep each test within seconds on a 2-core machine.
set(_cdir ${CMAKE_CURRENT_LIST_DIR})

# m3core only (no FAISS), except codec_raw which encodes
m3_add_test(codec_bits SOURCES ${_cdir}/test_codec_bits.c LABELS unit TIMEOUT 60)
m3_add_test(codec_raw SOURCES ${_cdir}/test_codec_raw.c LABELS unit TIMEOUT 60
  LIBS m3codec)
m3_add_test(codec_file SOURCES ${_cdir}/test_codec_file.c LABELS unit TIMEOUT 60)

# m3codec: FAISS
m3_add_test(codec_layout SOURCES ${_cdir}/test_codec_layout.c LABELS unit TIMEOUT 60
  LIBS m3codec)
m3_add_test(codec_tables SOURCES ${_cdir}/test_codec_tables.c LABELS unit TIMEOUT 300
  LIBS m3codec)
m3_add_test(codec_fingerprint SOURCES ${_cdir}/test_codec_fingerprint.c LABELS unit TIMEOUT 180
  LIBS m3codec)
m3_add_test(codec_record SOURCES ${_cdir}/test_codec_record.c LABELS unit TIMEOUT 60
  LIBS m3codec)
m3_add_test(codec_decode SOURCES ${_cdir}/test_codec_decode.c LABELS unit TIMEOUT 180
  LIBS m3codec)
m3_add_test(codec_train SOURCES ${_cdir}/test_codec_train.c LABELS unit TIMEOUT 180
  LIBS m3codec)
m3_add_test(codec_gemm SOURCES ${_cdir}/test_codec_gemm.c LABELS unit TIMEOUT 180
  LIBS m3codec)

# FAISS trains with OpenMP; on a small shared machine its spinning threads
# make OPQ training several times slower than one thread.
foreach(_t codec_raw codec_layout codec_tables codec_fingerprint codec_record codec_decode
    codec_gemm codec_train)
  set_property(TEST ${_t} APPEND PROPERTY ENVIRONMENT OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
endforeach()

if(M3_HAVE_CUDA)
  m3_add_test(codec_cuda SOURCES ${_cdir}/test_codec_cuda.c LABELS unit TIMEOUT 60
    LIBS m3codec m3cuda)
  set_property(TEST codec_cuda APPEND PROPERTY ENVIRONMENT OMP_NUM_THREADS=1)
  m3_add_test(codec_cuda_enc SOURCES ${_cdir}/test_codec_cuda_enc.c LABELS unit TIMEOUT 180
    LIBS m3codec m3cudaenc)
  set_property(TEST codec_cuda_enc APPEND PROPERTY ENVIRONMENT OMP_NUM_THREADS=1
    OPENBLAS_NUM_THREADS=1)
endif()
