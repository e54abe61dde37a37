# Tokenizer tests. Included by tests/CMakeLists.txt.
#   test_tok_load     loading, special ids, every malformed-file error (unit)
#   test_tok_encode   encode/decode behaviour on tiny hand-made models (unit)
#   test_tok_parity   ids equal to spm_encode's on models spm_train builds from
#                     examples/kb/corpus.txt, and a tokenizer.json converted
#                     from one of them (integration; skipped without the
#                     sentencepiece tools or python3)
add_executable(tok_tool ${CMAKE_CURRENT_LIST_DIR}/tok_tool.c)
target_link_libraries(tok_tool PRIVATE m3encoder)

# The unit tests write model files with the protobuf-c code generated for
# m3encoder (tok_testlib.h), hence its gen/ folder.
m3_add_test(test_tok_load SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tok_load.c
  LABELS unit TIMEOUT 30 LIBS m3encoder)
m3_add_test(test_tok_encode SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tok_encode.c
  LABELS unit TIMEOUT 30 LIBS m3encoder Threads::Threads)
foreach(t test_tok_load test_tok_encode)
  target_include_directories(${t} PRIVATE ${PROJECT_BINARY_DIR}/encoder/gen)
endforeach()
m3_add_script_test(test_tok_parity SCRIPT ${CMAKE_CURRENT_LIST_DIR}/test_tok_parity.sh
  LABELS integration TIMEOUT 120)

# Calls between the encoder library's files (tokenizers, forward, selection,
# the token-sequence rule) flow one way: no cycle in the file-level call
# graph of m3encoder's objects, from nm (scripts/objgraph.py).
find_program(M3_PYTHON3 python3 REQUIRED)
add_test(NAME encoder_no_cycles
  COMMAND ${M3_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/objgraph.py $<TARGET_OBJECTS:m3encoder>)
set_tests_properties(encoder_no_cycles PROPERTIES LABELS "unit" TIMEOUT 30)
