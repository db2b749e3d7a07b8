// The arithmetic of sluice-bench's latency figures, free of sockets so it can be unit tested:
// the send schedule (no coordinated omission), percentiles, and medians over rounds.
//
// Coordinated omission: a sender that stalls (blocked on a full socket, on credit, or simply
// descheduled) and then sends late must not hide the stall. Every message therefore carries
// its *scheduled* send time, start + i / rate, not the time it was actually sent; the receiver
// takes latency = arrival - scheduled time. A stall of S seconds then shows as S of latency on
// the message that was due first and shrinking amounts on every later one that was due during
// it, exactly what a client that wanted to send at that rate would have seen.
// Thread-compatible (plain values and free functions).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace sluice::bench {

// One set of one-way latency percentiles (nearest rank), in microseconds.
struct LatencyResult {
  uint64_t samples = 0;
  double p50_us = 0;
  double p99_us = 0;
  double p999_us = 0;
  double max_us = 0;
};

// The nearest-rank percentile of `sorted_ns`: the smallest value with at least
// permille_of_1000 / 1000 of the samples at or below it, in microseconds; 0 when empty.
// Integer arithmetic, so p99 of 1000 samples is exactly the 990th smallest.
double PercentileUs(const std::vector<uint64_t>& sorted_ns, uint32_t permille);

// Sorts `latencies_ns` and takes its p50, p99, p999 and max; all zero when empty.
LatencyResult SummarizeLatencies(std::vector<uint64_t>& latencies_ns);

// The p50 and p99 of `latencies_ns` (nearest rank, as SummarizeLatencies) by selection instead
// of a sort: linear time, for the per-second lines the consumer takes inside the measured
// window. Reorders `latencies_ns`; samples is its size, p999 and max are left 0.
LatencyResult SelectP50P99(std::vector<uint64_t>& latencies_ns);

// The median of each figure over rounds, taken separately (the median p99 need not come from
// the round with the median p50; the upper one of an even count, as tools::Median); samples
// is the median too. All zero when `rounds` is empty.
LatencyResult MedianOfRounds(const std::vector<LatencyResult>& rounds);
// MedianOfRounds of the rounds whose p99 is at most `p99_limit_us` (a baseline's rounds without
// a stall); `*kept` is how many there are.
LatencyResult MedianOfRoundsUpTo(const std::vector<LatencyResult>& rounds, double p99_limit_us,
                                 size_t* kept);

// The clock sluice-bench stamps with: CLOCK_MONOTONIC in nanoseconds (the same clock in every
// process on the machine).
uint64_t MonotonicNowNs();

// Turns (sluice-bench --interleave-ms): the latency paths of a round (Sluice, the TCP floor,
// ZeroMQ) run at the same time and take turns to send. From start_ns the time is cut into
// slots of slot_ns; slot s belongs to path s % paths. A path's own time ("active time") runs
// only during its slots, so a host's noisy stretch lands on every path alike while only one
// of them sends at a time. paths == 1 is no turns: real time = start + active time.
struct TurnSchedule {
  uint64_t start_ns = 0;
  uint64_t slot_ns = 1000000000;
  uint32_t paths = 1;
  uint32_t index = 0;  // this path's slots: index, index + paths, index + 2 * paths, ...

  // The CLOCK_MONOTONIC time (ns) at which this path has had `active_ns` of its own slots
  // (an active time on a slot boundary maps to the start of the path's next slot).
  // REQUIRES: slot_ns > 0, index < paths.
  uint64_t RealNs(uint64_t active_ns) const;
};

// Sends at a fixed rate from a start time: message i (from 0) is due at start + (i + 1) / rate,
// computed from i (no drift from a rounded period); with turns, at that much of the path's
// active time (TurnSchedule). Next() sleeps until the next message is due and returns its
// scheduled time; when the caller is late it returns at once, so a sender that stalled
// catches up back to back and every late message keeps its earlier due time (a stall that
// runs past the end of the path's slot still counts in full). Thread-compatible.
class Pacer {
 public:
  // Sleeps until the absolute CLOCK_MONOTONIC time (ns); returns at once for a past time.
  using SleepUntil = std::function<void(uint64_t until_ns)>;

  // REQUIRES: rate > 0. Without `sleep_until`, clock_nanosleep(TIMER_ABSTIME) is used.
  Pacer(uint64_t start_ns, uint32_t rate, SleepUntil sleep_until = nullptr);
  Pacer(const TurnSchedule& turns, uint32_t rate, SleepUntil sleep_until = nullptr);

  uint64_t ScheduledNs(uint64_t i) const;
  // Waits for the next message's due time and returns it (the stamp to send).
  uint64_t Next();
  // Messages handed out so far.
  uint64_t count() const { return next_; }

 private:
  const TurnSchedule turns_;
  const uint32_t rate_;
  SleepUntil sleep_until_;
  uint64_t next_ = 0;  // index of the next message
};

// Collects latencies from scheduled send times. Thread-compatible (the receiver's thread).
class LatencyRecorder {
 public:
  void Reserve(size_t n) { latencies_ns_.reserve(n); }
  // latency = received - scheduled (0 if the clock says it arrived before it was due); returns it.
  uint64_t Record(uint64_t scheduled_ns, uint64_t received_ns) {
    const uint64_t ns = received_ns > scheduled_ns ? received_ns - scheduled_ns : 0;
    latencies_ns_.push_back(ns);
    return ns;
  }
  size_t size() const { return latencies_ns_.size(); }
  LatencyResult Summarize() { return SummarizeLatencies(latencies_ns_); }

 private:
  std::vector<uint64_t> latencies_ns_;
};

}  // namespace sluice::bench
