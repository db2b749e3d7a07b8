# cmake -P script: runs one tool once and checks its exit status and what it printed.
#   -DTOOL=path  -DARGS="space separated arguments"  -DEXIT=N
#   -DEXPECT=regex  (must match stdout + stderr; optional)
#   -DREJECT=regex  (must not match; optional)
separate_arguments(_args UNIX_COMMAND "${ARGS}")
execute_process(COMMAND ${TOOL} ${_args} RESULT_VARIABLE rc OUTPUT_VARIABLE out
  ERROR_VARIABLE err TIMEOUT 120)
set(_all "${out}${err}")
if(NOT rc STREQUAL "${EXIT}")
  message(FATAL_ERROR "${TOOL} ${ARGS}: exit status ${rc}, expected ${EXIT}\n${_all}")
endif()
if(DEFINED EXPECT AND NOT _all MATCHES "${EXPECT}")
  message(FATAL_ERROR "${TOOL} ${ARGS}: output does not match '${EXPECT}':\n${_all}")
endif()
if(DEFINED REJECT AND _all MATCHES "${REJECT}")
  message(FATAL_ERROR "${TOOL} ${ARGS}: output matches '${REJECT}':\n${_all}")
endif()
message(STATUS "PASS: ${TOOL} ${ARGS} -> ${rc}")
