# m3-encode (encoder/src/cmd/): the command that ties the encoder together:
# input reading and chunking, the forward pipeline, codec, store writing,
# the retrieval index; train-codec; test-model with its BPE trainer.
# Included by encoder/CMakeLists.txt; m3codec and m3index come from core/.
find_package(Threads REQUIRED)
add_executable(m3-encode
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/m3_encode.c
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/encode_input.c
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/encode_slice.c
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/encode_train.c
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/bpe_train.c
  ${CMAKE_CURRENT_LIST_DIR}/src/cmd/encode_util.c)
target_include_directories(m3-encode PRIVATE ${CMAKE_CURRENT_LIST_DIR}/src/cmd)
# test-model finds the bundled corpus from a build tree without --corpus.
target_compile_definitions(m3-encode PRIVATE M3_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_link_libraries(m3-encode PRIVATE m3encoder m3codec m3index m3client m3core PkgConfig::JANSSON
  Threads::Threads m)
install(TARGETS m3-encode RUNTIME DESTINATION bin)
