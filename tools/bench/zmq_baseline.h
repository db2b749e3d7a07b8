// ZeroMQ as a baseline for sluice-bench (--baselines zmq): what a user would pick instead of
// Sluice, measured in the same run. PUSH/PULL between two forked processes over loopback TCP,
// each with its own context (one IO thread, as ZeroMQ defaults to):
//   - latency: one message per record at the same rate and size as sluice-bench --latency,
//     from a sender that sleeps between messages (a Pacer), each stamped with its scheduled
//     send time, so a send that blocks counts (latency_stats.h); the receiver blocks in
//     zmq_recv and takes CLOCK_MONOTONIC on arrival;
//   - throughput: records of the run's size, each with a 4-byte length, copied into messages
//     of up to the segment size (so 100-byte records travel 32 KiB messages and 32 KiB
//     records travel one per message), sent as fast as the socket takes them; the receiver
//     walks every record of every message (reading its sequence number, as sluice-bench's
//     consumer does).
// Built only when CMake finds libzmq (pkg-config libzmq); otherwise ZmqAvailable() is false
// and the Run functions return a zero result with `error` set.
// Thread-compatible; call only from a process with no other threads (it forks; the contexts
// and their threads live in the children).
#pragma once

#include <cstdint>

#include "tools/bench/latency_stats.h"
#include "tools/bench/raw_latency.h"

namespace sluice::bench {

// Whether this sluice-bench was built with libzmq.
bool ZmqAvailable();

// Plain data: it crosses a pipe from the receiving child.
struct ZmqLatencyResult {
  LatencyResult latency;      // from the scheduled send time
  LatencyResult from_actual;  // the same messages from their zmq_send (no samples: < 24 B)
  char error[256] = {};
};
// One-way latency of options.seconds * options.rate messages of options.message_size bytes
// (at least 16: the scheduled time and a kind; from 24, the actual send time too), after
// options.warmup seconds of unmeasured messages (at least one).
ZmqLatencyResult RunZmqLatency(const RawLatencyOptions& options);

struct ZmqThroughputOptions {
  double seconds = 2;
  double warmup = 0.2;             // receiver time not counted, from the first message
  uint32_t message_size = 32768;   // the largest message: the segment size
  uint32_t record_size = 100;      // at least 8 (the sequence number)
};
// Plain data: it crosses a pipe from the receiving child.
struct ZmqThroughputResult {
  double seconds = 0;
  uint64_t messages = 0;
  uint64_t records = 0;
  uint64_t bytes = 0;  // record bytes (length prefixes excluded), as sluice-bench counts
  uint64_t order_errors = 0;
  char error[256] = {};

  double mib_per_second() const { return seconds > 0 ? bytes / seconds / (1 << 20) : 0; }
  double records_per_second() const { return seconds > 0 ? records / seconds : 0; }
};
ZmqThroughputResult RunZmqThroughput(const ZmqThroughputOptions& options);

}  // namespace sluice::bench
