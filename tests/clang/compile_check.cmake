# compile_check.cmake - compile every C source of src/ with clang, warnings as errors, once
# per target level in MARCHS, so a GCC-only construct (__builtin_shuffle, _Float16 where
# clang lacks it, ...) fails a test instead of a clang user's build.
#
#   cmake -DCLANG=clang -DROOT=<source root> -DOUT=<scratch dir> "-DMARCHS=x86-64;x86-64-v4"
#         "-DFLAGS=-I...;-D..." -P compile_check.cmake
#
# Object files, not -fsyntax-only: the back end runs too, so an intrinsic used without its
# target feature is caught. -O0, because clang's warnings come from its front end whatever
# the optimisation level, and -O0 keeps the whole check to a few seconds. Each level of
# MARCHS selects other #if branches (SSE only, AVX2 + F16C, AVX-512).
if(NOT CLANG OR NOT ROOT OR NOT OUT)
  message(FATAL_ERROR "usage: cmake -DCLANG=... -DROOT=... -DOUT=... [-DMARCHS=...] -P compile_check.cmake")
endif()
include(${ROOT}/cmake/lt_sources.cmake)
lt_core_sources(sources ${ROOT})
list(APPEND sources ${ROOT}/src/main.c)
set(levels ${MARCHS})
if(NOT levels)
  set(levels default) # clang's default target
endif()
file(MAKE_DIRECTORY ${OUT})
set(failed 0)
set(count 0)
foreach(level IN LISTS levels)
  set(mflag "")
  if(NOT level STREQUAL "default")
    set(mflag "-march=${level}")
  endif()
  foreach(src IN LISTS sources)
    execute_process(
      COMMAND ${CLANG} -std=gnu11 -fopenmp -O0 -c ${mflag} -Werror -Wall -Wextra
              -Wno-unused-parameter -Wshadow -Wstrict-prototypes -I${ROOT}/src ${FLAGS}
              ${src} -o ${OUT}/check.o
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    math(EXPR count "${count} + 1")
    if(NOT rc EQUAL 0)
      math(EXPR failed "${failed} + 1")
      file(RELATIVE_PATH rel ${ROOT} ${src})
      message("clang ${mflag} ${rel}:\n${out}")
    endif()
  endforeach()
endforeach()
file(REMOVE ${OUT}/check.o)
if(failed GREATER 0)
  message(FATAL_ERROR "${failed} of ${count} clang compiles failed")
endif()
message("${count} clang compiles (${levels}), no warnings")
