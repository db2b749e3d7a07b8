// The machine's floor for one-way latency on loopback: a forked receiver blocks in read() on a
// TCP socket, the calling process writes one message of `message_size` bytes every 1/rate
// seconds (TCP_NODELAY, paced by a Pacer like sluice-bench --latency), stamped with its
// scheduled send time (latency_stats.h: a write that blocks counts for every later message)
// and, when it has room (16 bytes or more), the time the sender actually wrote it; the receiver
// takes CLOCK_MONOTONIC at arrival. One thread wake-up per message and no framing, pool
// or credit: what any data path on this machine pays at least, measured in the same run.
// Thread-compatible; call only from a process with no other threads (it forks).
#pragma once

#include <cstdint>
#include <vector>

#include "tools/bench/latency_stats.h"

namespace sluice::bench {

struct RawLatencyOptions {
  double seconds = 2;
  // Sent first at the same rate and not recorded: the data path's --warmup, so that a baseline
  // is not measured cold against a warmed-up data path.
  double warmup = 0;
  uint32_t rate = 10000;       // messages per second
  uint32_t message_size = 100;  // at least 8 (the stamp)
};

// Plain data: it crosses a pipe from the receiving child.
struct RawLatencyResult {
  LatencyResult latency;      // from the scheduled send time
  LatencyResult from_actual;  // the same messages from their actual write (no samples: < 16 B)
};

// Runs the ping for options.warmup + options.seconds. Exits the process with a message if a
// socket call fails.
RawLatencyResult RunRawLatency(const RawLatencyOptions& options);

}  // namespace sluice::bench
