# Buffer debloating smoke test: a throttled remote run with --debloat on prints the debloating
# fields, measured events, a buffer size below the segment, no leak and no order error.
#   cmake -DBENCH=<sluice-bench> -P check_bench_debloat.cmake
execute_process(COMMAND ${BENCH} --mode remote --channels 8 --seconds 1 --warmup 0.3
    --baselines off --debloat on --consumer-rate-mib 20 --debloat-target-ms 5
    --event-interval-ms 20 --json
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 150)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sluice-bench exited with ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
foreach(field debloat debloat_target_ms consumer_rate_mib inflight_bytes producer_segments
    event_crossing_us event_crossing_samples debloat_buffer_size)
  string(JSON value ERROR_VARIABLE json_error GET "${out}" ${field})
  if(json_error)
    message(FATAL_ERROR "field '${field}' missing: ${json_error}\noutput: ${out}")
  endif()
endforeach()
string(JSON records GET "${out}" records)
string(JSON leaked GET "${out}" leaked_segments)
string(JSON order_errors GET "${out}" order_errors)
string(JSON events GET "${out}" event_crossing_samples)
string(JSON size GET "${out}" debloat_buffer_size)
string(JSON segment GET "${out}" segment_size)
if(NOT records GREATER 0 OR NOT leaked EQUAL 0 OR NOT order_errors EQUAL 0)
  message(FATAL_ERROR "records ${records}, leaked ${leaked}, order errors ${order_errors}: ${out}")
endif()
if(NOT events GREATER 0)
  message(FATAL_ERROR "no event crossed: ${out}")
endif()
# 20 MiB/s x 5 ms over 8 channels x 2 buffers is about 6.5 KB: debloated below a segment.
if(NOT size GREATER 0 OR NOT size LESS segment)
  message(FATAL_ERROR "buffer size ${size} is not debloated below the ${segment}-byte segment: ${out}")
endif()
message(STATUS "sluice-bench --debloat on: buffer size ${size}, ${events} events, JSON complete")
