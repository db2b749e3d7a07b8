# Runs the sluiced executable: bad configurations exit 2 naming the option; --help and --version
# exit 0; a daemon started with --port 0 writes its port file and metrics file and exits 0 on
# SIGTERM after its leak check. Arguments: -DSLUICED=path -DWORK=dir.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

function(expect_fail code fragment)
  execute_process(COMMAND ${SLUICED} ${ARGN} RESULT_VARIABLE rc ERROR_VARIABLE err
    OUTPUT_VARIABLE out TIMEOUT 20)
  if(NOT rc EQUAL ${code})
    message(FATAL_ERROR "sluiced ${ARGN}: exit ${rc}, expected ${code}\n${err}")
  endif()
  string(FIND "${err}" "${fragment}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "sluiced ${ARGN}: message lacks '${fragment}':\n${err}")
  endif()
endfunction()

expect_fail(2 "segment_size = 3000 is not a power of two" --segment-size 3000)
expect_fail(2 "set network_memory to at least" --network-memory 64k)
file(WRITE ${WORK}/bad.toml "network_memory = \"64m\"\nbogus_key = 1\n")
expect_fail(2 "unknown key 'bogus_key'" --config ${WORK}/bad.toml)
expect_fail(2 "unknown option --nope" --nope 1)
# Issue 12: CLI11 conventions. --flag=value, an unknown --flag=value, a size naming k/m/g.
expect_fail(2 "unknown option --nope" --nope=1)
expect_fail(2 "--network-memory = '12q': unknown unit 'q' (use k, m or g)" --network-memory=12q)
expect_fail(2 "--port = 'abc' is not a whole number" --port abc)
expect_fail(2 "--port needs a value" --port)
file(WRITE ${WORK}/short.secret "short\n")
file(CHMOD ${WORK}/short.secret PERMISSIONS OWNER_READ OWNER_WRITE)
expect_fail(2 "at least 16" --port 0 --auth-secret-file ${WORK}/short.secret)
# A secret readable by others is refused, naming the file and the chmod to run.
file(WRITE ${WORK}/open.secret "0123456789abcdef0123456789abcdef\n")
file(CHMOD ${WORK}/open.secret PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
expect_fail(2 "chmod 600 ${WORK}/open.secret" --port 0 --auth-secret-file ${WORK}/open.secret)
# No unauthenticated mode, not even on loopback.
expect_fail(2 "auth = off is not supported" --port 0 --auth off)
expect_fail(2 "auth = off is not supported" --port 0 --auth off --listen 0.0.0.0)
file(WRITE ${WORK}/auth_off.toml "auth = \"off\"\n")
expect_fail(2 "auth = off is not supported" --port 0 --config ${WORK}/auth_off.toml)
expect_fail(2 "auth = 'maybe' is not on" --auth maybe)
expect_fail(2 "allowed_peers entry '10.0.0.0/33'" --allowed-peers 10.0.0.0/33)

execute_process(COMMAND ${SLUICED} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "--network-memory")
  message(FATAL_ERROR "sluiced --help: exit ${rc}\n${out}")
endif()
execute_process(COMMAND ${SLUICED} --version RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out STREQUAL "sluiced ${VERSION}\n")
  message(FATAL_ERROR "sluiced --version: exit ${rc}\n${out}")
endif()

# Start, wait for the port file, ask with sluicectl, SIGTERM, exit 0 (a shell runs it).
file(WRITE ${WORK}/run.sh "
${SLUICED} --port 0 --listen 0.0.0.0 --state-dir ${WORK}/state --network-memory 16m \
  --port-file ${WORK}/port --metrics-file ${WORK}/metrics --metrics-interval-ms 100 \
  --metrics-listen 127.0.0.1:0 --metrics-port-file ${WORK}/mport --log-file ${WORK}/log &
pid=$!
for i in $(seq 1 200); do [ -s ${WORK}/port ] && [ -s ${WORK}/metrics ] && break; sleep 0.05; done
[ -s ${WORK}/port ] || { echo 'no port file'; kill -9 $pid; exit 1; }
port=$(cat ${WORK}/port)
echo secret_mode=$(stat -c %a ${WORK}/state/auth_secret) dir_mode=$(stat -c %a ${WORK}/state)
${SLUICECTL} --port $port dump > /dev/null 2>&1; echo nosecret_exit=$?
${SLUICECTL} --auth-secret-file ${WORK}/state/auth_secret --port $port stats > ${WORK}/stats || { echo 'sluicectl stats failed'; kill -9 $pid; exit 1; }
${SLUICECTL} --auth-secret-file ${WORK}/state/auth_secret --port $port dump > ${WORK}/dump || { echo 'sluicectl dump failed'; kill -9 $pid; exit 1; }
${SLUICECTL} --auth-secret-file ${WORK}/state/auth_secret --port $port status no-such-job > ${WORK}/status; echo status_exit=$?
kill -TERM $pid
wait $pid
echo exit=$?
")
execute_process(COMMAND sh ${WORK}/run.sh RESULT_VARIABLE rc OUTPUT_VARIABLE out
  ERROR_VARIABLE err TIMEOUT 60)
file(READ ${WORK}/log log)
if(NOT out MATCHES "exit=0")
  message(FATAL_ERROR "sluiced did not exit 0 on SIGTERM: ${out}\n${err}\n${log}")
endif()
if(NOT log MATCHES "stopped cleanly")
  message(FATAL_ERROR "sluiced log lacks the clean stop:\n${log}")
endif()
if(NOT out MATCHES "secret_mode=600 dir_mode=700")
  message(FATAL_ERROR "the state-dir secret is not 0600 in a 0700 directory: ${out}")
endif()
if(NOT out MATCHES "nosecret_exit=[12]")
  message(FATAL_ERROR "sluicectl without the secret was served: ${out}")
endif()
if(NOT out MATCHES "status_exit=1")
  message(FATAL_ERROR "sluicectl status of an unknown job did not exit 1: ${out}")
endif()
file(READ ${WORK}/stats stats)
if(NOT stats MATCHES "# node [^ ]+: 512/512 segments" OR NOT stats MATCHES "sluice_frames_in_total")
  message(FATAL_ERROR "sluicectl stats output unexpected:\n${stats}")
endif()
file(READ ${WORK}/dump dump)
if(NOT dump MATCHES "no channels")
  message(FATAL_ERROR "sluicectl dump output unexpected:\n${dump}")
endif()
file(READ ${WORK}/metrics metrics)
if(NOT metrics MATCHES "sluice_pool_segments\\{node=\"[^\"]+\"\\} 512")
  message(FATAL_ERROR "metrics file lacks the pool gauge:\n${metrics}")
endif()
message(STATUS "sluiced CLI checks passed")
