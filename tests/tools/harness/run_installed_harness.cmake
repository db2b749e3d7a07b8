# cmake -P script: install the build into WORK_DIR/prefix, run the installed sluice-harness with
# a PATH that holds no sluiced and no --sluiced, and check that the daemons it started were the
# installed sluiced (the first line of each daemon log is the command line).
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}): ${err}")
endif()
set(_bin ${WORK_DIR}/prefix/bin)
foreach(_tool sluice-harness sluiced)
  if(NOT EXISTS ${_bin}/${_tool})
    message(FATAL_ERROR "${_tool} is not installed in ${_bin}")
  endif()
endforeach()
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env PATH=/usr/bin:/bin
    ${_bin}/sluice-harness --quiet --json --keep-logs --nodes 2 --total-bytes 4m
  WORKING_DIRECTORY ${WORK_DIR}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 180)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "installed sluice-harness exited ${rc}:\n${err}\n${out}")
endif()
string(JSON _run_dir GET "${out}" run_dir)
file(STRINGS ${_run_dir}/node-0.log _first LIMIT_COUNT 1)
if(NOT _first MATCHES "^# sluice-harness: ${_bin}/sluiced ")
  message(FATAL_ERROR "the daemon was not the installed sluiced: ${_first}")
endif()
if(NOT _first MATCHES "--metrics-listen 127\\.0\\.0\\.1:0")
  message(FATAL_ERROR "the daemon was not given --metrics-listen 127.0.0.1:0: ${_first}")
endif()
file(REMOVE_RECURSE ${_run_dir})
message(STATUS "PASS: ${_first}")
