# cmake -P script: install into a scratch prefix, build examples/ against it (not the build
# tree), then run the two-process shuffle: shuffle_producer and shuffle_consumer at once (one
# execute_process runs its COMMANDs concurrently), both reading one 0600 secret file.
# SANITIZE (e.g. address,undefined): the examples are built with the sanitizers the installed
# libraries were built with, and any report fails the run.
file(REMOVE_RECURSE ${WORK_DIR})
include(${CMAKE_CURRENT_LIST_DIR}/install_common.cmake)
sluice_install(${BUILD_DIR} ${WORK_DIR}/prefix)
set(_flags)
if(SANITIZE)
  set(_san "-fsanitize=${SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer")
  set(_flags "-DCMAKE_CXX_FLAGS=-O1 -g1 ${_san}" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
run(${CMAKE_COMMAND} -S ${EXAMPLES_DIR} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
    ${_flags})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)

file(WRITE ${WORK_DIR}/secret "example-secret-0123456789abcdef\n")
file(CHMOD ${WORK_DIR}/secret PERMISSIONS OWNER_READ OWNER_WRITE)
set(_common --secret-file ${WORK_DIR}/secret --rendezvous ${WORK_DIR}/rendezvous
    --done ${WORK_DIR}/done --producers 3 --consumers 4 --records 20000 --keys 50)
execute_process(
  COMMAND ${WORK_DIR}/build/shuffle_producer ${_common}
  COMMAND ${WORK_DIR}/build/shuffle_consumer ${_common}
  RESULTS_VARIABLE rcs OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 240)
message(STATUS "${out}${err}")
if(NOT rcs STREQUAL "0;0")
  message(FATAL_ERROR "example shuffle failed (producer;consumer exit: ${rcs})\n${out}\n${err}")
endif()
if(NOT out MATCHES "consumer: 60000 records from 3 producers in 4 tasks, 50 keys each on one task: ok")
  message(FATAL_ERROR "unexpected consumer output: ${out}")
endif()
if(NOT err MATCHES "producer: wrote 60000 records: ok")
  message(FATAL_ERROR "unexpected producer output: ${err}")
endif()
