# sluice-bench finds its secret as sluiced does: a group/other-readable --auth-secret-file is
# refused with exit 2 and the chmod to run; a --state-dir without auth_secret is refused with
# exit 2 naming both options; a 0600 file and a state directory's secret both run (remote mode,
# with a leak-free JSON report).
#   cmake -DBENCH=<sluice-bench> -DWORK=<dir> -P check_bench_secret.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/state)
file(WRITE ${WORK}/open.secret "0123456789abcdef0123456789abcdef\n")
file(CHMOD ${WORK}/open.secret PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
set(run --mode remote --seconds 0.5 --warmup 0 --channels 4 --baselines off --json)

function(expect_refusal)
  cmake_parse_arguments(E "" "" "ARGS;SAYS" ${ARGN})
  execute_process(COMMAND ${BENCH} ${run} ${E_ARGS} RESULT_VARIABLE rc ERROR_VARIABLE err
    OUTPUT_VARIABLE out TIMEOUT 60)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "sluice-bench ${E_ARGS}: exit ${rc}, expected 2\n${err}\n${out}")
  endif()
  foreach(text IN LISTS E_SAYS)
    string(FIND "${err}" "${text}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "sluice-bench ${E_ARGS}: stderr lacks '${text}':\n${err}")
    endif()
  endforeach()
endfunction()

function(expect_run)
  execute_process(COMMAND ${BENCH} ${run} ${ARGN} RESULT_VARIABLE rc ERROR_VARIABLE err
    OUTPUT_VARIABLE out TIMEOUT 120)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sluice-bench ${ARGN}: exit ${rc}\n${err}\n${out}")
  endif()
  string(JSON auth GET "${out}" auth)
  string(JSON records GET "${out}" records)
  string(JSON leaked GET "${out}" leaked_segments)
  if(NOT auth STREQUAL "ON" OR records LESS_EQUAL 0 OR NOT leaked EQUAL 0)
    message(FATAL_ERROR "sluice-bench ${ARGN}: auth ${auth}, records ${records}, leaked ${leaked}")
  endif()
endfunction()

expect_refusal(ARGS --auth-secret-file ${WORK}/open.secret
  SAYS "mode 0644" "chmod 600 ${WORK}/open.secret")
expect_refusal(ARGS --state-dir ${WORK}/state SAYS "--state-dir" "--auth-secret-file"
  "${WORK}/state/auth_secret")
file(COPY_FILE ${WORK}/open.secret ${WORK}/state/auth_secret)
file(CHMOD ${WORK}/state/auth_secret PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ)
expect_refusal(ARGS --state-dir ${WORK}/state SAYS "chmod 600 ${WORK}/state/auth_secret")
file(CHMOD ${WORK}/open.secret PERMISSIONS OWNER_READ OWNER_WRITE)
file(CHMOD ${WORK}/state/auth_secret PERMISSIONS OWNER_READ OWNER_WRITE)
expect_run(--auth-secret-file ${WORK}/open.secret)
expect_run(--state-dir ${WORK}/state)
message(STATUS "sluice-bench secret checks passed")
