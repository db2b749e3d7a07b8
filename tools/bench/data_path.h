// The measured runs of sluice-bench: a producer emitting generated records into a
// ResultPartition and a consumer reading them through an InputGate with a RecordReader, either
// in one process over local channels or in two processes (a forked producer) over one loopback
// TCP connection with shuffle::ShuffleEnvironment. Each run happens in forked children, so peak
// RSS and the leak check belong to that run alone.
//
// Records: the first 8 bytes carry the record's sequence number within its channel (checked
// by the consumer), and with --latency the next 8 the CLOCK_MONOTONIC time the record was
// scheduled to be sent (start + i / rate: a stalled producer's wait counts, latency_stats.h).
// Thread-compatible; call from a process with no other threads (it forks).
#pragma once

#include <cstdint>

#include "tools/bench/bench_flags.h"
#include "tools/bench/latency_stats.h"

namespace sluice::bench {

// Plain data: it crosses a pipe from the child that measured it.
struct RunResult {
  double seconds = 0;  // measured window (after the warm-up)
  uint64_t records = 0;
  uint64_t bytes = 0;  // record bytes (length prefixes excluded)
  uint64_t buffers = 0;
  uint64_t network_memory_bytes = 0;  // per process
  uint64_t peak_rss_bytes = 0;        // the larger of the processes
  uint64_t consumer_peak_rss_bytes = 0;
  uint64_t producer_peak_rss_bytes = 0;
  int64_t leaked_segments = 0;  // summed over the processes, after teardown
  uint32_t pool_total_segments = 0;
  uint32_t pool_peak_used_segments = 0;  // consumer's global pool (local: the only one)
  double credit_stall_ms = 0;   // remote: server readers with data but no credit
  double backpressure_ms = 0;   // producer waiting for output buffers
  // Remote, whole run (warm-up included): the write path. Frames the producer's connection
  // sent, those written on the producer's thread (write-through), the producer notifications
  // posted to its IO loop instead (a loop wake-up each), and the frames the consumer's
  // connection sent (AddCredits, almost all), and those of them the producer read off its
  // connection itself (read-through); of the frames out, the backlog announcements (a reader
  // out of credit telling its receiver the buffers waiting).
  uint64_t server_frames_out = 0;
  uint64_t server_backlog_announcements = 0;
  uint64_t server_direct_writes = 0;
  uint64_t server_direct_read_frames = 0;
  uint64_t server_notifications_posted = 0;
  uint64_t client_frames_out = 0;
  uint64_t order_errors = 0;    // records out of order or missing
  uint64_t fill_errors = 0;     // --in-place fill: records whose last byte is not the pattern
  uint64_t latency_samples = 0;
  double p50_us = 0;
  double p99_us = 0;
  double p999_us = 0;
  double max_us = 0;
  // --latency --events: user events from ResultPartition::EmitEvent to the consumer.
  LatencyResult event_latency;
  // --latency, records of 24 bytes or more: the same records timed from the moment the
  // producer wrote them instead of their scheduled time (coordinated omission: a stalled
  // producer's wait is not counted), as sluice-bench measured before issue 15.
  LatencyResult actual_send_latency;
  // Buffer debloating (tools/bench/debloat_bench.h): medians over the measured window.
  double inflight_bytes = 0;        // bytes queued for or in flight on one channel
  double producer_segments = 0;     // segments the producer's output pool lends
  double event_crossing_us = 0;     // a user event from the producer to the consumer
  uint64_t event_samples = 0;
  uint32_t debloat_buffer_size = 0;  // subpartition 0's buffer size at the end
  char error[512] = {};

  double records_per_second() const { return seconds > 0 ? records / seconds : 0; }
  double mib_per_second() const { return seconds > 0 ? bytes / seconds / (1 << 20) : 0; }
  double buffers_per_second() const { return seconds > 0 ? buffers / seconds : 0; }
};

// The network memory each process gets: flags.network_memory, or the recommended estimate for
// its side of the topology (never below 4 MiB).
uint64_t NetworkMemoryFor(const BenchFlags& flags);

// One run of flags.mode. Prints interval lines to stdout unless flags.json.
RunResult RunDataPath(const BenchFlags& flags);

}  // namespace sluice::bench
