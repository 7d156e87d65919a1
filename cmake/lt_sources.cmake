# lt_sources.cmake - the C core's source files, named once for every build that compiles
# them: the main build (CMakeLists.txt), the clang UBSan build (tests/clang/CMakeLists.txt)
# and the clang compile check (tests/clang/compile_check.cmake).
#
# One file per concern, in five rooms: src/core (the tensor runtime: tensors, storage,
# dtypes, devices, RNG, status, the caching allocator, the CUDA backend's loader, and in
# src/core/cuda_api the core's side of the backend's table, made by tools/gen_cuda_api.lua),
# src/io (file formats and I/O), src/tok (the tokenizer), src/ops (every op's CPU kernels),
# src/comm (the collectives' generic layer and the TCP rendezvous; the MPI back end, a
# library of its own, sits in src/comm/mpi/, which this glob does not reach; the NCCL one
# is cuda/comm_nccl.c).
# The public headers sit in src/ itself and includes name paths from there
# ("core/internal.h"). src/main.c is the host, not the core.
#
# lt_core_sources(OUT ROOT): the list, globbed under the repository root ROOT.
function(lt_core_sources out root)
  set(globs ${root}/src/core/*.c ${root}/src/core/cuda_api/*.c ${root}/src/comm/*.c
            ${root}/src/io/*.c ${root}/src/tok/*.c ${root}/src/ops/*.c)
  if(CMAKE_SCRIPT_MODE_FILE)
    file(GLOB sources ${globs}) # cmake -P: nothing to re-run later
  else()
    file(GLOB sources CONFIGURE_DEPENDS ${globs})
  endif()
  set(${out} ${sources} PARENT_SCOPE)
endfunction()
