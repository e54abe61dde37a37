# The retrieval index (m3/index.h) and the built-in embedders (m3/embed.h).
#   m3core  gets the hash and words embedders: no FAISS, the server and clients embed
#           text queries with it.
#   m3index the FAISS-backed index over the store's retrieval embeddings.
target_sources(m3core PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src/embed_hash.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/embed_words.c)
# Same bits on every machine: no fused multiply-adds in the embedders.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/embed_hash.c
  ${CMAKE_CURRENT_SOURCE_DIR}/src/embed_words.c PROPERTIES COMPILE_OPTIONS "-ffp-contract=off")

# codec.cmake may have asked pkg-config for faiss_c already.
if(NOT TARGET PkgConfig::FAISS_C)
  pkg_check_modules(FAISS_C REQUIRED IMPORTED_TARGET faiss_c)
endif()
add_library(m3index STATIC ${CMAKE_CURRENT_SOURCE_DIR}/src/index.c)
set_target_properties(m3index PROPERTIES OUTPUT_NAME m3index POSITION_INDEPENDENT_CODE ON)
target_include_directories(m3index PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(m3index PUBLIC m3core PkgConfig::FAISS_C Threads::Threads)
