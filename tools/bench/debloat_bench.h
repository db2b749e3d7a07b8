// sluice-bench's buffer debloating measurements (issue 14): the --debloat, --debloat-target-ms,
// --consumer-rate-mib and --event-interval-ms flags, and what a run measures with them:
//
//   inflight_bytes     the median, over the measured window, of the bytes queued for or in
//                      flight on one channel: (record bytes the producer wrote, prefixes
//                      included, published by its writer after every batch - data bytes the
//                      consumer's gate handed out) / channels, sampled by the consumer about
//                      every 512 records;
//   producer_segments  the median of the segments the producer's output pool lends (queued,
//                      being filled, or being written): what debloating really frees;
//   event_crossing_us  the median time a user event takes from EmitEvent on the producer to
//                      the consumer's RecordReader (CLOCK_MONOTONIC stamps in the payload), one
//                      event every --event-interval-ms to the next channel in turn: behind the
//                      queued data of a backpressured channel.
//
// The producer's figures cross the process boundary through a small MAP_SHARED page made
// before the run forks (DebloatProbe). Thread-compatible unless said otherwise.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "buffer/status.h"
#include "shuffle/result_partition.h"
#include "shuffle/shuffle_options.h"
#include "tools/bench/bench_flags.h"
#include "tools/bench/latency_stats.h"  // MonotonicNowNs

namespace sluice::bench {

struct RunResult;
struct SweepPoint;

// The flags of this file; ApplyDebloatFlag parses one of them (name without dashes).
bool IsDebloatFlag(const std::string& name);
Status ApplyDebloatFlag(BenchFlags* flags, const std::string& name, const std::string& value);
// The shuffle options a run uses: debloat on/off and its target.
void ApplyDebloatOptions(const BenchFlags& flags, shuffle::ShuffleOptions* options);
// The event interval in effect: --event-interval-ms, else 100 ms when the run is debloated,
// the consumer throttled or the sweep is over debloat, else 0 (no events).
double EventIntervalMs(const BenchFlags& flags);

// Figures the producer publishes for the consumer; lives in a MAP_SHARED page. Thread-safe.
struct DebloatProbe {
  std::atomic<uint64_t> producer_bytes{0};  // record bytes the writer wrote, prefixes included
  std::atomic<uint32_t> producer_segments{0};  // the output pool's lent segments
  std::atomic<uint32_t> buffer_size{0};  // subpartition 0's debloated buffer size

  // The page shared by this process and the children it forks from now on (made once, reset
  // for each run).
  static DebloatProbe* Shared();
  void Reset();
};

// Producer side: a thread publishing the partition's figures into the probe every millisecond
// until destroyed.
class ProducerSampler {
 public:
  ProducerSampler(DebloatProbe* probe, std::shared_ptr<shuffle::ResultPartition> partition);
  ~ProducerSampler();
  ProducerSampler(const ProducerSampler&) = delete;
  ProducerSampler& operator=(const ProducerSampler&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Producer side (the writer's thread): emits a stamped event to the next channel in turn
// every interval. Cheap to call per batch.
class EventEmitter {
 public:
  EventEmitter(double interval_ms, uint32_t channels);
  // Emits one when due; OK when none is.
  Status MaybeEmit(shuffle::ResultPartition& partition);

 private:
  const uint64_t interval_ns_;
  const uint32_t channels_;
  uint64_t next_ns_ = 0;
  uint32_t channel_ = 0;
  uint32_t calls_ = 0;
};

// Consumer side: throttles to a rate, samples in-flight bytes and the probe, times events.
class DebloatConsumer {
 public:
  DebloatConsumer(const BenchFlags& flags, DebloatProbe* probe);
  // A record of `bytes` was taken: sleeps as needed to hold --consumer-rate-mib.
  void OnRecord(size_t bytes) {
    if (rate_bytes_per_ns_ > 0) Throttle(bytes + 4);
  }
  // A user event arrived (payload: the producer's CLOCK_MONOTONIC stamp); counted only while
  // `measuring`.
  void OnEvent(std::span<const uint8_t> payload, bool measuring);
  // One sample of the in-flight bytes: the gate has handed out `consumed_bytes` of data.
  void Sample(uint64_t consumed_bytes);
  // Medians into `out`.
  void Fill(RunResult* out) const;

 private:
  void Throttle(size_t bytes);

  DebloatProbe* const probe_;
  const uint32_t channels_;
  const double rate_bytes_per_ns_;  // 0: unthrottled
  uint64_t start_ns_ = 0;
  double taken_ = 0;  // bytes since start_ns_
  std::vector<double> inflight_;
  std::vector<double> segments_;
  std::vector<double> crossings_us_;
};

// After a --sweep over debloat (or with --debloat in the points): one line per point with
// inflight_bytes, producer segments, event crossing time and throughput, and for off/on the
// ratios the issue asks for.
void PrintDebloatTable(const std::string& name, const std::vector<SweepPoint>& points);

}  // namespace sluice::bench
