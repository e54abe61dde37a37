# Tests of the retrieval index (m3/index.h, FAISS) and the built-in hash
# embedder (m3/embed.h). Included by tests/CMakeLists.txt.
# The embedder is in m3core: its test needs no FAISS.
m3_add_test(test_index_embed_hash SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_embed_hash.c
  LABELS unit index TIMEOUT 60)
foreach(t search update persist ivf threads recall)
  m3_add_test(test_index_${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_index_${t}.c
    ${CMAKE_CURRENT_LIST_DIR}/index_testlib.c LABELS unit index TIMEOUT 120 LIBS m3index)
endforeach()
# The built-in embedders on the bundled example: recall@1/@5 of hash:256 and
# words:1024 on examples/kb/queries.jsonl (no FAISS: exact scan).
m3_add_test(test_index_embed_words SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_embed_words.c
  LABELS unit index TIMEOUT 60)
m3_add_test(test_index_embed_recall SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_embed_recall.c
  LABELS unit index TIMEOUT 120 LIBS PkgConfig::JANSSON)
m3_add_script_test(index_percall SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_index_percall.sh LABELS integration index TIMEOUT 120)
