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
//                      the consumer's RecordReader, one event every --event-interval-ms to the
//                      next channel in turn: behind the queued data of a backpressured channel.
//                      The events are --latency --events' stamped events (data_path.cc), timed
//                      by the same LatencyRecorder (latency_stats.h); this file only schedules
//                      them (EventSchedule) and reports the recorder's p50.
//
// The producer's figures cross the process boundary through a small MAP_SHARED page made
// before the run forks (DebloatProbe). Thread-compatible unless said otherwise.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "buffer/status.h"
#include "shuffle/result_partition.h"
#include "shuffle/shuffle_options.h"
#include "tools/bench/bench_flags.h"
#include "tools/bench/latency_stats.h"  // MonotonicNowNs, LatencyResult

namespace sluice::bench {

struct RunResult;
struct SeriesSweep;
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
// (every subpartitions/1024 ms for a wide partition) until destroyed. Only in runs that report
// those figures (EventIntervalMs > 0, see ProducerSampler::Wanted): elsewhere its thousand
// wake-ups a second, each walking the subpartitions under their locks, would share the two
// cores with what is measured (latency runs: its wake-ups are on the records' path).
class ProducerSampler {
 public:
  static bool Wanted(const BenchFlags& flags) { return EventIntervalMs(flags) > 0; }
  ProducerSampler(DebloatProbe* probe, std::shared_ptr<shuffle::ResultPartition> partition);
  ~ProducerSampler();
  ProducerSampler(const ProducerSampler&) = delete;
  ProducerSampler& operator=(const ProducerSampler&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Producer side (the writer's thread): when the next event is due, one every interval to the
// next channel in turn. Cheap to call per batch (it reads the clock every 16th call).
class EventSchedule {
 public:
  EventSchedule(double interval_ms, uint32_t channels);
  // The channel an event is due for now, else nullopt (also with an interval of 0).
  std::optional<uint32_t> Due();

 private:
  const uint64_t interval_ns_;
  const uint32_t channels_;
  uint64_t next_ns_ = 0;
  uint32_t channel_ = 0;
  uint32_t calls_ = 0;
};

// Consumer side: throttles to a rate, samples in-flight bytes and the probe.
class DebloatConsumer {
 public:
  DebloatConsumer(const BenchFlags& flags, DebloatProbe* probe);
  // A record of `bytes` was taken: sleeps as needed to hold --consumer-rate-mib.
  void OnRecord(size_t bytes) {
    if (rate_bytes_per_ns_ > 0) Throttle(bytes + 4);
  }
  // One sample of the in-flight bytes: the gate has handed out `consumed_bytes` of data.
  void Sample(uint64_t consumed_bytes);
  // Medians into `out`; the event crossing is the p50 of `events` (the run's stamped events,
  // from its LatencyRecorder).
  void Fill(const LatencyResult& events, RunResult* out) const;

 private:
  void Throttle(size_t bytes);

  DebloatProbe* const probe_;
  const uint32_t channels_;
  const double rate_bytes_per_ns_;  // 0: unthrottled
  uint64_t start_ns_ = 0;
  double taken_ = 0;  // bytes since start_ns_
  std::vector<double> inflight_;
  std::vector<double> segments_;
};

// After a --sweep over debloat (or with --debloat in the points): one line per point with
// inflight_bytes, producer segments, event crossing time and throughput, and for off/on the
// ratios the issue asks for.
void PrintDebloatTable(const std::string& name, const std::vector<SweepPoint>& points);

// After a --sweep X --series Y run with debloating figures (Y = debloat, or a throttled or
// debloated run): per X, every series' inflight_bytes and event crossing, and each series'
// ratios to the first (in flight and crossing: first / series, "x smaller"; throughput:
// series / first).
void PrintSeriesDebloatTable(const SeriesSweep& sweep);
// Whether a series sweep over these flags has debloating figures worth that table.
bool HasDebloatFigures(const BenchFlags& flags);

}  // namespace sluice::bench
