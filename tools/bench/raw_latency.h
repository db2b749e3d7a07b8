// The machine's floor for one-way latency on loopback: a forked receiver blocks in read() on a
// TCP socket, the calling process writes one stamped message of `message_size` bytes every
// 1/rate seconds (TCP_NODELAY, paced with clock_nanosleep like sluice-bench --latency), and the
// receiver takes CLOCK_MONOTONIC at arrival. One thread wake-up per message and no framing, pool
// or credit: what any data path on this machine pays at least, measured in the same run.
// Thread-compatible; call only from a process with no other threads (it forks).
#pragma once

#include <cstdint>
#include <vector>

namespace sluice::bench {

struct RawLatencyOptions {
  double seconds = 2;
  uint32_t rate = 10000;       // messages per second
  uint32_t message_size = 100;  // at least 8 (the stamp)
};

struct LatencyResult {
  uint64_t samples = 0;
  double p50_us = 0;
  double p99_us = 0;
  double p999_us = 0;
  double max_us = 0;
};

// Sorts `latencies_ns` and takes its percentiles (nearest rank); all zero when empty.
LatencyResult SummarizeLatencies(std::vector<uint64_t>& latencies_ns);

// Runs the ping for options.seconds. Exits the process with a message if a socket call fails.
LatencyResult RunRawLatency(const RawLatencyOptions& options);

}  // namespace sluice::bench
