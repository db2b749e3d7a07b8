#include "tools/bench/latency_stats.h"

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <utility>

namespace sluice::bench {
namespace {

void ClockSleepUntil(uint64_t until_ns) {
  // The kernel may end a sleep up to the thread's timer slack late (50 us by default), and
  // that lateness counts as latency from the scheduled time: wake on time instead. Every
  // paced sender (Sluice's producer, the TCP floor, ZeroMQ) sleeps here, so all three get it.
  static thread_local const bool slack_set = prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0) == 0;
  (void)slack_set;
  const timespec at{static_cast<time_t>(until_ns / 1000000000ull),
                    static_cast<long>(until_ns % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, nullptr) != 0) {
  }
}

double MedianOf(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];  // the upper one of an even count, as tools::Median
}

}  // namespace

double PercentileUs(const std::vector<uint64_t>& sorted_ns, uint32_t permille) {
  if (sorted_ns.empty()) return 0;
  const uint64_t n = sorted_ns.size();
  // Nearest rank: ceil(n * permille / 1000), at least 1.
  const uint64_t rank = std::max<uint64_t>(1, (n * permille + 999) / 1000);
  return static_cast<double>(sorted_ns[std::min<uint64_t>(rank, n) - 1]) / 1000.0;
}

LatencyResult SummarizeLatencies(std::vector<uint64_t>& latencies_ns) {
  std::sort(latencies_ns.begin(), latencies_ns.end());
  LatencyResult r;
  r.samples = latencies_ns.size();
  r.p50_us = PercentileUs(latencies_ns, 500);
  r.p99_us = PercentileUs(latencies_ns, 990);
  r.p999_us = PercentileUs(latencies_ns, 999);
  r.max_us = latencies_ns.empty() ? 0 : static_cast<double>(latencies_ns.back()) / 1000.0;
  return r;
}

LatencyResult SelectP50P99(std::vector<uint64_t>& latencies_ns) {
  LatencyResult r;
  r.samples = latencies_ns.size();
  if (latencies_ns.empty()) return r;
  const uint64_t n = latencies_ns.size();
  auto select = [&latencies_ns, n](uint32_t permille, size_t end) {
    const uint64_t rank = std::max<uint64_t>(1, (n * permille + 999) / 1000);  // as PercentileUs
    const auto at = latencies_ns.begin() + static_cast<std::ptrdiff_t>(rank - 1);
    std::nth_element(latencies_ns.begin(), at, latencies_ns.begin() + static_cast<std::ptrdiff_t>(end));
    return rank - 1;
  };
  const uint64_t p99 = select(990, n);
  r.p99_us = static_cast<double>(latencies_ns[p99]) / 1000.0;
  // Everything before the p99's place is no larger than it: the p50 is among those.
  const uint64_t p50 = select(500, p99 + 1);
  r.p50_us = static_cast<double>(latencies_ns[p50]) / 1000.0;
  return r;
}

LatencyResult MedianOfRounds(const std::vector<LatencyResult>& rounds) {
  auto median = [&rounds](auto field) {
    std::vector<double> v;
    for (const LatencyResult& r : rounds) v.push_back(static_cast<double>(field(r)));
    return MedianOf(std::move(v));
  };
  LatencyResult m;
  m.samples = static_cast<uint64_t>(median([](const LatencyResult& r) { return r.samples; }));
  m.p50_us = median([](const LatencyResult& r) { return r.p50_us; });
  m.p99_us = median([](const LatencyResult& r) { return r.p99_us; });
  m.p999_us = median([](const LatencyResult& r) { return r.p999_us; });
  m.max_us = median([](const LatencyResult& r) { return r.max_us; });
  return m;
}

LatencyResult MedianOfRoundsUpTo(const std::vector<LatencyResult>& rounds, double p99_limit_us,
                                 size_t* kept) {
  std::vector<LatencyResult> below;
  for (const LatencyResult& r : rounds) {
    if (r.p99_us <= p99_limit_us) below.push_back(r);
  }
  *kept = below.size();
  return MedianOfRounds(below);
}

uint64_t MonotonicNowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t TurnSchedule::RealNs(uint64_t active_ns) const {
  const uint64_t slot = active_ns / slot_ns;
  return start_ns + (slot * paths + index) * slot_ns + active_ns % slot_ns;
}

Pacer::Pacer(uint64_t start_ns, uint32_t rate, SleepUntil sleep_until)
    : Pacer(TurnSchedule{.start_ns = start_ns}, rate, std::move(sleep_until)) {}

Pacer::Pacer(const TurnSchedule& turns, uint32_t rate, SleepUntil sleep_until)
    : turns_(turns),
      rate_(std::max<uint32_t>(rate, 1)),
      sleep_until_(sleep_until ? std::move(sleep_until) : SleepUntil(ClockSleepUntil)) {}

uint64_t Pacer::ScheduledNs(uint64_t i) const {
  // (i + 1) * 1e9 fits 64 bits for 18e9 messages: centuries at any rate sluice-bench allows.
  return turns_.RealNs((i + 1) * 1000000000ull / rate_);
}

uint64_t Pacer::Next() {
  const uint64_t due = ScheduledNs(next_++);
  sleep_until_(due);
  return due;
}

}  // namespace sluice::bench
