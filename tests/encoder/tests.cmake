# Encoder model tests (m3/model.h, m3/forward.h): safetensors loader, model
# folders, selection, CPU forward against a naive reference, CUDA against
# CPU (skipped without a GPU). Tiny random models keep each under seconds.
set(_edir ${CMAKE_CURRENT_LIST_DIR})
set(_eutil ${PROJECT_SOURCE_DIR}/tests/unit/testutil.c)

m3_add_test(encoder_safetensors SOURCES ${_edir}/test_safetensors.c ${_eutil}
  LABELS unit TIMEOUT 30 LIBS m3encoder)
m3_add_test(encoder_model SOURCES ${_edir}/test_model.c ${_eutil}
  LABELS unit TIMEOUT 30 LIBS m3encoder)
m3_add_test(encoder_select SOURCES ${_edir}/test_select.c ${_eutil}
  LABELS unit TIMEOUT 30 LIBS m3encoder)
# The selection tie check the forward tests judge backends by.
m3_add_test(encoder_select_tie SOURCES ${_edir}/test_select_tie.c ${_edir}/select_tie.c ${_eutil}
  LABELS unit TIMEOUT 30 LIBS m3encoder)
m3_add_test(encoder_forward SOURCES ${_edir}/test_forward.c ${_edir}/ref_forward.c
  ${_edir}/select_tie.c ${_eutil} LABELS unit TIMEOUT 30 LIBS m3encoder)
m3_add_test(encoder_forward_cuda SOURCES ${_edir}/test_forward_cuda.c ${_edir}/ref_forward.c
  ${_edir}/select_tie.c ${_eutil} LABELS unit TIMEOUT 60 LIBS m3encoder)
# OpenBLAS threads on tiny GEMMs only add contention on a shared machine.
foreach(_t encoder_model encoder_forward encoder_forward_cuda)
  set_property(TEST ${_t} APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1)
endforeach()
