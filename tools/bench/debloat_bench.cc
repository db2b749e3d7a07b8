#include "tools/bench/debloat_bench.h"

#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <new>

#include "tools/bench/data_path.h"
#include "tools/bench/report.h"
#include "tools/bench/sweep_chart.h"
#include "tools/common/report_util.h"

namespace sluice::bench {
namespace {

constexpr double kDefaultEventIntervalMs = 100;
// A throttled consumer that fell behind by more than this (it had no data) does not catch up.
constexpr uint64_t kMaxBurstNs = 5000000;

Result<double> ParseNonNegative(const std::string& name, const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != 0 || !(d >= 0)) {
    return InvalidArgument("--" + name + " wants a number >= 0, got '" + v + "'");
  }
  return d;
}

}  // namespace

bool IsDebloatFlag(const std::string& name) {
  return name == "debloat" || name == "debloat-target-ms" || name == "consumer-rate-mib" ||
         name == "event-interval-ms";
}

Status ApplyDebloatFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  if (name == "debloat") {
    if (v == "on" || v == "true" || v == "1") {
      f->debloat = true;
    } else if (v == "off" || v == "false" || v == "0") {
      f->debloat = false;
    } else {
      return InvalidArgument("--debloat wants on or off, got '" + v + "'");
    }
    return Status::Ok();
  }
  Result<double> d = ParseNonNegative(name, v);
  if (!d.ok()) return d.status();
  if (name == "debloat-target-ms") {
    if (*d < 0.001 || *d > 60000) {
      return InvalidArgument("--debloat-target-ms wants 0.001 to 60000 ms, got '" + v + "'");
    }
    f->debloat_target_ms = *d;
  } else if (name == "consumer-rate-mib") {
    f->consumer_rate_mib = *d;
  } else if (name == "event-interval-ms") {
    f->event_interval_ms = *d;
  } else {
    return InvalidArgument("unknown flag --" + name);
  }
  return Status::Ok();
}

void ApplyDebloatOptions(const BenchFlags& f, shuffle::ShuffleOptions* o) {
  o->debloat = f.debloat;
  o->debloat_target = std::chrono::microseconds(
      std::max<int64_t>(1, static_cast<int64_t>(f.debloat_target_ms * 1000 + 0.5)));
}

double EventIntervalMs(const BenchFlags& f) {
  if (f.event_interval_ms > 0) return f.event_interval_ms;
  return f.debloat || f.consumer_rate_mib > 0 || f.sweep_name == "debloat"
             ? kDefaultEventIntervalMs
             : 0;
}

DebloatProbe* DebloatProbe::Shared() {
  static DebloatProbe* probe = [] {
    void* page = mmap(nullptr, sizeof(DebloatProbe), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return static_cast<DebloatProbe*>(nullptr);
    return new (page) DebloatProbe();
  }();
  return probe;
}

void DebloatProbe::Reset() {
  producer_bytes.store(0);
  producer_segments.store(0);
  buffer_size.store(0);
}

ProducerSampler::ProducerSampler(DebloatProbe* probe,
                                 std::shared_ptr<shuffle::ResultPartition> partition) {
  if (probe == nullptr) return;
  // Stats() walks every subpartition under the partition's lock: sample a wide partition less
  // often (about 1,000 subpartitions per millisecond) so the probe does not slow its producer.
  const auto period = std::chrono::milliseconds(
      std::max<uint32_t>(1, partition->num_subpartitions() / 1024));
  thread_ = std::thread([this, probe, period, partition = std::move(partition)] {
    while (!stop_.load(std::memory_order_relaxed)) {
      const shuffle::ResultPartitionStats s = partition->Stats();
      probe->producer_segments.store(s.pool.lent, std::memory_order_relaxed);
      if (!s.subpartitions.empty()) {
        probe->buffer_size.store(s.subpartitions[0].buffer_size, std::memory_order_relaxed);
      }
      std::this_thread::sleep_for(period);
    }
  });
}

ProducerSampler::~ProducerSampler() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

EventSchedule::EventSchedule(double interval_ms, uint32_t channels)
    : interval_ns_(static_cast<uint64_t>(interval_ms * 1e6)), channels_(std::max(channels, 1u)) {}

std::optional<uint32_t> EventSchedule::Due() {
  if (interval_ns_ == 0 || (++calls_ & 15) != 0) return std::nullopt;
  const uint64_t now = MonotonicNowNs();
  if (next_ns_ == 0) next_ns_ = now + interval_ns_;
  if (now < next_ns_) return std::nullopt;
  next_ns_ = now + interval_ns_;
  const uint32_t channel = channel_;
  channel_ = channel_ + 1 == channels_ ? 0 : channel_ + 1;
  return channel;
}

DebloatConsumer::DebloatConsumer(const BenchFlags& f, DebloatProbe* probe)
    : probe_(probe),
      channels_(std::max(f.channels, 1u)),
      rate_bytes_per_ns_(f.consumer_rate_mib * 1048576.0 / 1e9) {}

void DebloatConsumer::Throttle(size_t bytes) {
  const uint64_t now = MonotonicNowNs();
  auto due = start_ns_ + static_cast<uint64_t>(taken_ / rate_bytes_per_ns_);
  if (start_ns_ == 0 || now > due + kMaxBurstNs) {
    // Starved for a while (no data): start over rather than catch up above the rate.
    start_ns_ = now;
    taken_ = 0;
  }
  taken_ += static_cast<double>(bytes);
  due = start_ns_ + static_cast<uint64_t>(taken_ / rate_bytes_per_ns_);
  // Sleep in steps of at least 200 us (shorter sleeps cost more than they hold back).
  if (due > now + 200000) {
    const timespec at{static_cast<time_t>(due / 1000000000ull),
                      static_cast<long>(due % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, nullptr) != 0) {
    }
  }
}

void DebloatConsumer::Sample(uint64_t consumed_bytes) {
  if (probe_ == nullptr) return;
  const uint64_t produced = probe_->producer_bytes.load(std::memory_order_relaxed);
  const double inflight =
      produced > consumed_bytes ? static_cast<double>(produced - consumed_bytes) : 0;
  inflight_.push_back(inflight / channels_);
  segments_.push_back(probe_->producer_segments.load(std::memory_order_relaxed));
}

void DebloatConsumer::Fill(const LatencyResult& events, RunResult* out) const {
  out->inflight_bytes = tools::Median(inflight_);
  out->producer_segments = tools::Median(segments_);
  out->event_crossing_us = events.p50_us;
  out->event_samples = events.samples;
  if (probe_ != nullptr) out->debloat_buffer_size = probe_->buffer_size.load();
}

void PrintDebloatTable(const std::string& name, const std::vector<SweepPoint>& points) {
  std::printf("\n%-14s %10s %14s %12s %14s %12s\n", name.c_str(), "MiB/s", "inflight B/ch",
              "prod. segs", "event cross us", "buffer size");
  for (const SweepPoint& p : points) {
    const RunResult& r = p.measurement.run;
    std::printf("%-14s %10.1f %14.0f %12.1f %14.0f %12u\n", p.value.c_str(), r.mib_per_second(),
                r.inflight_bytes, r.producer_segments, r.event_crossing_us, r.debloat_buffer_size);
  }
  if (name != "debloat" || points.size() != 2) return;
  const RunResult& off = points[0].measurement.run;
  const RunResult& on = points[1].measurement.run;
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  std::printf("debloat %s -> %s: inflight_bytes %.1fx smaller, producer segments %.1fx fewer, "
              "event crossing %.1fx shorter, throughput %.3fx\n",
              points[0].value.c_str(), points[1].value.c_str(),
              ratio(off.inflight_bytes, on.inflight_bytes),
              ratio(off.producer_segments, on.producer_segments),
              ratio(off.event_crossing_us, on.event_crossing_us),
              ratio(on.mib_per_second(), off.mib_per_second()));
}

bool HasDebloatFigures(const BenchFlags& f) {
  return f.series_name == "debloat" || f.sweep_name == "debloat" || f.debloat ||
         f.consumer_rate_mib > 0;
}

void PrintSeriesDebloatTable(const SeriesSweep& sw) {
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  std::printf("\nin flight (B/channel) and event crossing (us, p50) by --%s and --%s\n",
              sw.sweep_name.c_str(), sw.series_name.c_str());
  for (size_t i = 0; i < sw.x_values.size(); ++i) {
    std::printf("%-12s", sw.x_values[i].c_str());
    for (size_t k = 0; k < sw.points.size(); ++k) {
      const RunResult& r = sw.points[k][i].run;
      std::printf("  %s: %.0f B, %.0f us, %.1f MiB/s, size %u", sw.series_values[k].c_str(),
                  r.inflight_bytes, r.event_crossing_us, r.mib_per_second(),
                  r.debloat_buffer_size);
    }
    std::printf("\n");
    const RunResult& first = sw.points[0][i].run;
    for (size_t k = 1; k < sw.points.size(); ++k) {
      const RunResult& r = sw.points[k][i].run;
      std::printf("%-12s  %s vs %s: inflight_bytes %.1fx smaller, event crossing %.1fx shorter, "
                  "throughput %.3fx\n",
                  "", sw.series_values[k].c_str(), sw.series_values[0].c_str(),
                  ratio(first.inflight_bytes, r.inflight_bytes),
                  ratio(first.event_crossing_us, r.event_crossing_us),
                  ratio(r.mib_per_second(), first.mib_per_second()));
    }
  }
}

}  // namespace sluice::bench
