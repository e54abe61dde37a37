# Unit tests of the store engine: in-process, fast. Included by
# tests/CMakeLists.txt. testutil.c is shared by every store test (also the
# integration ones).
set(M3_TESTUTIL ${CMAKE_CURRENT_LIST_DIR}/testutil.c)

m3_add_test(test_record SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_record.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)
m3_add_test(test_crc32c SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_crc32c.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)
m3_add_test(test_cache SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cache.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)
# core's internal-but-shared helpers (m3/internal/fsutil.h, hash.h).
m3_add_test(test_fsutil SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_fsutil.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)

# The same read/write tests under both read backends.
m3_add_test(test_store_rw_uring SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_store_rw.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 120 ARGS uring)
m3_add_test(test_store_rw_pread SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_store_rw.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 120 ARGS pread)
# A create killed before its meta: open says "no store", create completes it.
m3_add_test(test_store_create SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_store_create.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)
m3_add_test(test_overhead SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_overhead.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 60)

# Asynchronous reads for the server's event loop (io_uring only).
m3_add_test(test_store_aio SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_store_aio.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 120)

# The in-RAM location table against the catalog after puts, deletes,
# compaction and repair.
m3_add_test(test_loctab SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_loctab.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 120)

# Bulk ingest: checkpoints, repeats, resume, abort, puts refused meanwhile.
m3_add_test(test_bulk SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bulk.c ${M3_TESTUTIL}
  LABELS unit TIMEOUT 120)

# The wire status table (proto/include/m3/status.h), both ways.
m3_add_test(test_status SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_status.c LABELS unit TIMEOUT 30
  LIBS m3proto)

# A hard io_uring_enter failure mid-batch: drained, ring replaced, pread finish.
m3_add_test(test_io_uring_fault SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_io_uring_fault.c ${M3_TESTUTIL}
  LABELS unit fault TIMEOUT 60)

# Read planning stays inside the fetch buffer (issue 14, defect 9).
m3_add_test(test_fetch_plan_bounds SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_fetch_plan_bounds.c
  ${M3_TESTUTIL} LABELS unit TIMEOUT 60)
