# cmake -P script: install into a scratch prefix; check the install tree holds only the
# embedding API (no libuv, no generated FlatBuffers headers, no internal headers); configure
# the consumer against the prefix (which compiles every installed header alone), build, run.
file(REMOVE_RECURSE ${WORK_DIR})
include(${CMAKE_CURRENT_LIST_DIR}/install_common.cmake)
sluice_install(${BUILD_DIR} ${WORK_DIR}/prefix)
sluice_check_install_tree(${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
