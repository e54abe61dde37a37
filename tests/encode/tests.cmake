# m3-encode tests (encoder/src/cmd/, m3 store dump): the BPE trainer, the
# hidden-state pooling of the forward, and the command end to end on the
# bundled knowledge base with test models (examples/kb/). Included by
# tests/CMakeLists.txt.
set(_xdir ${CMAKE_CURRENT_LIST_DIR})
set(_xutil ${PROJECT_SOURCE_DIR}/tests/unit/testutil.c)
set(_xcmd ${PROJECT_SOURCE_DIR}/encoder/src/cmd)

m3_add_test(encode_bpe SOURCES ${_xdir}/test_bpe.c ${_xcmd}/bpe_train.c ${_xcmd}/encode_util.c
  ${_xutil} LABELS unit TIMEOUT 60 LIBS m3encoder)
target_include_directories(encode_bpe PRIVATE ${_xcmd})
m3_add_test(encoder_forward_hidden SOURCES ${PROJECT_SOURCE_DIR}/tests/encoder/test_forward_hidden.c
  ${_xutil} LABELS unit TIMEOUT 30 LIBS m3encoder)

add_executable(encode_store_digest ${_xdir}/store_digest.c)
target_link_libraries(encode_store_digest PRIVATE m3core)

m3_add_test(encode_dump SOURCES ${_xdir}/test_encode_dump.c ${_xutil}
  LABELS integration TIMEOUT 120 LIBS m3encoder)
add_dependencies(encode_dump m3-encode m3)

m3_add_script_test(encode_e2e SCRIPT ${_xdir}/test_encode_e2e.sh LABELS integration TIMEOUT 180)
m3_add_script_test(encode_resume SCRIPT ${_xdir}/test_encode_resume.sh LABELS fault TIMEOUT 180)
m3_add_script_test(encode_errors SCRIPT ${_xdir}/test_encode_errors.sh LABELS integration TIMEOUT 120)
m3_add_script_test(encode_bulk_fault SCRIPT ${_xdir}/test_encode_bulk_fault.sh LABELS fault TIMEOUT 240)
foreach(_t encoder_forward_hidden encode_dump encode_e2e encode_resume encode_errors encode_bulk_fault)
  set_property(TEST ${_t} APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1)
endforeach()
m3_add_script_test(encode_slice SCRIPT ${_xdir}/test_encode_slice.sh LABELS integration TIMEOUT 180)
set_property(TEST encode_slice APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1)
# README.md's "A session", extracted from the README and run as written;
# train-codec's sample check against the codec's k-means (issue 16).
m3_add_script_test(encode_readme_session SCRIPT ${_xdir}/test_readme_session.sh LABELS integration
  TIMEOUT 300)
m3_add_script_test(encode_train_sample SCRIPT ${_xdir}/test_train_sample.sh LABELS integration
  TIMEOUT 180)
foreach(_t encode_readme_session encode_train_sample)
  set_property(TEST ${_t} APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1)
endforeach()
