# Tokenizers (encoder/src/tok_*.c): SentencePiece tokenizer.model, parsed with
# protobuf-c from encoder/proto/sentencepiece_model.proto (C generated at build
# time), and Hugging Face tokenizer.json (jansson). Included by
# encoder/CMakeLists.txt; adds to m3encoder.
find_program(PROTOC_C protoc-c REQUIRED)
if(NOT TARGET PkgConfig::PROTOBUF_C)
  pkg_check_modules(PROTOBUF_C REQUIRED IMPORTED_TARGET libprotobuf-c)
endif()

set(m3_tok_gen ${CMAKE_CURRENT_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${m3_tok_gen})
add_custom_command(
  OUTPUT ${m3_tok_gen}/sentencepiece_model.pb-c.c ${m3_tok_gen}/sentencepiece_model.pb-c.h
  COMMAND ${PROTOC_C} --c_out=${m3_tok_gen}
          --proto_path=${CMAKE_CURRENT_SOURCE_DIR}/proto sentencepiece_model.proto
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/proto/sentencepiece_model.proto
  COMMENT "protoc-c sentencepiece_model.proto")
# protoc-c's output is not ours to keep warning-free.
set_source_files_properties(${m3_tok_gen}/sentencepiece_model.pb-c.c
  PROPERTIES COMPILE_OPTIONS "-Wno-error;-Wno-unused-parameter")

target_sources(m3encoder PRIVATE
  ${m3_tok_gen}/sentencepiece_model.pb-c.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_common.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_model.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_trie.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_spm.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_norm.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_bpe.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_unigram.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/tok_hf.c)
target_include_directories(m3encoder PRIVATE ${m3_tok_gen})
target_link_libraries(m3encoder PUBLIC PkgConfig::PROTOBUF_C)
