# Worker-facing tests (m3/attn.h, the Python binding): attention-buffer
# placement, the memory attention reference, rounds over a real m3-server,
# the CUDA paths (exit 77 without a device) and the Python binding.
set(_wdir ${CMAKE_CURRENT_LIST_DIR})
set(_wlib ${_wdir}/worker_testlib.c ${_wdir}/../unit/testutil.c)

m3_add_test(worker_attn_place SOURCES ${_wdir}/test_attn_place.c ${_wlib} LABELS unit
  TIMEOUT 60 LIBS m3attn m3codec m)
m3_add_test(worker_attn_ref SOURCES ${_wdir}/test_attn_ref.c ${_wlib} LABELS unit
  TIMEOUT 60 LIBS m3attn m)
set_property(TEST worker_attn_place APPEND PROPERTY ENVIRONMENT OMP_NUM_THREADS=1)

m3_add_test(worker_attn_round SOURCES ${_wdir}/test_attn_round.c ${_wlib}
  ${_wdir}/../client/client_testlib.c LABELS integration TIMEOUT 120 LIBS m3attn m)
add_dependencies(worker_attn_round m3-server)

# Writes a small store (raw-f32 or a trained PQ codec) for the binding test.
add_executable(worker_mkstore ${_wdir}/worker_mkstore.c ${_wlib})
target_include_directories(worker_mkstore PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(worker_mkstore PRIVATE m3attn m3codec m3core m3test PkgConfig::CMOCKA m)

if(M3_HAVE_CUDA)
  m3_add_test(worker_attn_cuda SOURCES ${_wdir}/test_attn_cuda.c ${_wlib} LABELS unit
    TIMEOUT 60 LIBS m3attn_cuda m3codec m)
  set_property(TEST worker_attn_cuda APPEND PROPERTY ENVIRONMENT OMP_NUM_THREADS=1)
endif()

m3_add_script_test(worker_python SCRIPT ${_wdir}/test_python.sh LABELS integration TIMEOUT 120)
add_dependencies(worker_mkstore m3client_shared m3 m3-server)
# Which library the binding loads without M3_LIB (release builds only).
m3_add_script_test(worker_python_lib SCRIPT ${_wdir}/test_python_lib.sh LABELS integration
  TIMEOUT 120)
foreach(_t worker_python worker_python_lib)
  set_property(TEST ${_t} APPEND PROPERTY ENVIRONMENT
    "M3_LIB=$<TARGET_FILE:m3client_shared>" "M3_MKSTORE=$<TARGET_FILE:worker_mkstore>"
    "M3_SANITIZE=${M3_SANITIZE}" OMP_NUM_THREADS=1)
endforeach()
include(${CMAKE_CURRENT_LIST_DIR}/decode_tests.cmake)
