# llama.cpp's tools (workbench.export.llamacpp_tools.TOOLS) compiled from their own sources and linked
# against the shared libraries the installed llama-cpp-python built: no second build of ggml or llama.
# LLAMA_SRC: the vendored llama.cpp of the installed version; LLAMA_LIB: its libllama, libggml...
cmake_minimum_required(VERSION 3.21)
project(workbench_llama_tools C CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(LLAMA_SRC "" CACHE PATH "llama.cpp source folder")
set(LLAMA_LIB "" CACHE PATH "folder of libllama, libllama-common, libggml, libggml-base")
find_package(Threads REQUIRED)

foreach(lib llama-common llama ggml ggml-base)
  find_library(path_${lib} NAMES ${lib} PATHS ${LLAMA_LIB} NO_DEFAULT_PATH REQUIRED)
  add_library(${lib} SHARED IMPORTED)
  set_target_properties(${lib} PROPERTIES IMPORTED_LOCATION ${path_${lib}})
endforeach()

# RPATH (not RUNPATH) so libllama finds libggml beside it too; the libraries stay where pip put them
set(CMAKE_BUILD_RPATH ${LLAMA_LIB})
add_link_options(-Wl,--disable-new-dtags)
include_directories(${LLAMA_SRC}/include ${LLAMA_SRC}/ggml/include ${LLAMA_SRC}/common ${LLAMA_SRC}/vendor)

add_executable(llama-quantize ${LLAMA_SRC}/tools/quantize/main.cpp ${LLAMA_SRC}/tools/quantize/quantize.cpp)
add_executable(llama-imatrix ${LLAMA_SRC}/tools/imatrix/imatrix.cpp)
add_executable(llama-perplexity ${LLAMA_SRC}/tools/perplexity/main.cpp ${LLAMA_SRC}/tools/perplexity/perplexity.cpp)
foreach(tool llama-quantize llama-imatrix llama-perplexity)
  target_include_directories(${tool} PRIVATE ${LLAMA_SRC}/tools/quantize ${LLAMA_SRC}/tools/perplexity)
  target_link_libraries(${tool} PRIVATE llama-common llama ggml ggml-base Threads::Threads)
endforeach()
