# Buffer debloating smoke test: a throttled remote run with --debloat on prints the debloating
# fields, measured events, a buffer size below the segment, no leak and no order error; with
# --latency --events the event crossing is the same recorder's figure (one event mechanism);
# a two-series sweep over debloat prints the off/on ratios and writes one chart of two lines.
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

# One event mechanism: with --latency --events, event_crossing_* are the --events figures.
execute_process(COMMAND ${BENCH} --mode remote --channels 4 --seconds 0.6 --warmup 0.2
    --baselines off --debloat on --debloat-target-ms 5 --latency --events --rate 2000 --json
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 150)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sluice-bench --latency --events exited with ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
string(JSON crossing_samples GET "${out}" event_crossing_samples)
string(JSON event_samples GET "${out}" event_samples)
string(JSON crossing GET "${out}" event_crossing_us)
string(JSON event_p50 GET "${out}" event_p50_us)
if(NOT event_samples GREATER 0 OR NOT crossing_samples EQUAL event_samples)
  message(FATAL_ERROR "event_crossing_samples ${crossing_samples} is not event_samples ${event_samples}: ${out}")
endif()
# Same value: event_crossing_us is printed with one decimal, event_p50_us with two (CMake reads
# them back as doubles); compare in hundredths of a microsecond, within rounding.
function(to_hundredths value out)
  string(REGEX MATCH "^([0-9]+)(\\.([0-9]*))?" whole "${value}")
  set(frac "${CMAKE_MATCH_3}00")
  string(SUBSTRING "${frac}" 0 2 frac)
  math(EXPR v "${CMAKE_MATCH_1} * 100 + 1${frac} - 100")
  set(${out} ${v} PARENT_SCOPE)
endfunction()
to_hundredths("${crossing}" a)
to_hundredths("${event_p50}" b)
math(EXPR diff "${a} - ${b}")
if(diff GREATER 6 OR diff LESS -6)
  message(FATAL_ERROR "event_crossing_us ${crossing} is not event_p50_us ${event_p50}: ${out}")
endif()

# The debloat chart: --sweep network-memory --series debloat=off,on, one SVG with two lines.
set(svg "${CMAKE_CURRENT_BINARY_DIR}/debloat-series-smoke.svg")
file(REMOVE "${svg}")
execute_process(COMMAND ${BENCH} --mode remote --channels 8 --seconds 0.5 --warmup 0.2
    --baselines off --consumer-rate-mib 20 --debloat-target-ms 5 --event-interval-ms 20
    --sweep network-memory=4m,8m --series debloat=off,on --sweep-out ${svg}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 150)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "sluice-bench --series debloat=off,on exited with ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
string(REGEX MATCHALL "on vs off: inflight_bytes [0-9.]+x smaller, event crossing [0-9.]+x shorter" ratios "${out}")
list(LENGTH ratios n)
if(NOT n EQUAL 2)
  message(FATAL_ERROR "expected the off/on ratios at both points, got ${n}: ${out}")
endif()
file(READ "${svg}" chart)
string(REGEX MATCHALL "<polyline" lines "${chart}")
list(LENGTH lines n)
if(NOT n EQUAL 2 OR NOT chart MATCHES ">off</text>" OR NOT chart MATCHES ">on</text>")
  message(FATAL_ERROR "the chart should have two lines, off and on: ${chart}")
endif()
message(STATUS "one event mechanism; the debloat series chart has two lines")
