# Helpers shared by the install tests (cmake -P scripts).
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    # stderr first: a report that keeps only the head of the output still shows why.
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\nstderr:\n${err}\nstdout:\n${out}")
  endif()
  message(STATUS "${out}")
endfunction()

# The two install tests start together (both have a high COST) and install the same build
# tree, which `cmake --install` also writes to (install_manifest.txt): one at a time. One CI
# run failed in the first install of a fresh tree, its reason cut from the report.
function(sluice_install build_dir prefix)
  file(LOCK ${build_dir}/tests/install/install.lock GUARD FUNCTION TIMEOUT 120)
  run(${CMAKE_COMMAND} --install ${build_dir} --prefix ${prefix})
endfunction()

# The installed headers: only under include/sluice/{buffer,transport,shuffle,control,client,
# store} (client and store: issue 13); none
# includes <uv.h> or a generated FlatBuffers header, and every quoted or angled include of a
# Sluice header carries the sluice/ prefix.
function(sluice_check_install_tree prefix)
  file(GLOB _top RELATIVE ${prefix}/include ${prefix}/include/*)
  if(NOT _top STREQUAL "sluice")
    message(FATAL_ERROR "install tree: expected only include/sluice, found: ${_top}")
  endif()
  file(GLOB _modules RELATIVE ${prefix}/include/sluice ${prefix}/include/sluice/*)
  list(SORT _modules)
  if(NOT _modules STREQUAL "buffer;client;control;shuffle;store;transport")
    message(FATAL_ERROR "install tree: unexpected include/sluice folders: ${_modules}")
  endif()
  file(GLOB_RECURSE _headers ${prefix}/include/*)
  list(LENGTH _headers _n)
  if(_n LESS 20)
    message(FATAL_ERROR "install tree: only ${_n} headers under include/sluice")
  endif()
  foreach(_h ${_headers})
    file(STRINGS ${_h} _bad REGEX "uv\\.h|_generated\\.h")
    if(_bad)
      message(FATAL_ERROR "${_h} names libuv or generated FlatBuffers headers: ${_bad}")
    endif()
    file(STRINGS ${_h} _includes REGEX "^#include \"")
    foreach(_inc ${_includes})
      if(NOT _inc MATCHES "^#include \"sluice/")
        message(FATAL_ERROR "${_h}: '${_inc}' lacks the sluice/ prefix")
      endif()
    endforeach()
  endforeach()
  foreach(_internal shuffle/shuffle_server.h shuffle/shuffle_client.h shuffle/protocol.h
          transport/event_loop.h transport/tcp.h transport/timer.h)
    if(EXISTS ${prefix}/include/sluice/${_internal})
      message(FATAL_ERROR "internal header installed: include/sluice/${_internal}")
    endif()
  endforeach()
  message(STATUS "install tree: ${_n} headers, all clean")
endfunction()
