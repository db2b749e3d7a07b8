// sluice-bench's latency arithmetic without sockets: nearest-rank percentiles, medians of
// rounds, and the Pacer's schedule, driven by a fake clock so a stalled sender is exact.
#include "tools/bench/latency_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sluice::bench {
namespace {

constexpr uint64_t kUs = 1000;
constexpr uint64_t kMs = 1000 * kUs;

TEST(LatencyStatsTest, PercentilesOfOneToThousandMicrosecondsAreNearestRank) {
  std::vector<uint64_t> ns;
  for (uint64_t i = 1000; i >= 1; --i) ns.push_back(i * kUs);  // unsorted on purpose
  const LatencyResult r = SummarizeLatencies(ns);
  EXPECT_EQ(r.samples, 1000u);
  EXPECT_DOUBLE_EQ(r.p50_us, 500);   // the 500th smallest
  EXPECT_DOUBLE_EQ(r.p99_us, 990);   // the 990th
  EXPECT_DOUBLE_EQ(r.p999_us, 999);  // the 999th: not the maximum
  EXPECT_DOUBLE_EQ(r.max_us, 1000);
}

TEST(LatencyStatsTest, P999OfAHeavyTail) {
  // 9,990 samples at 10 us and 10 at 5 ms: exactly 0.1% of the samples are slow, so p999 is
  // the last fast one and only the next rank up would see the tail.
  std::vector<uint64_t> ns(9990, 10 * kUs);
  ns.insert(ns.end(), 10, 5 * kMs);
  const LatencyResult r = SummarizeLatencies(ns);
  EXPECT_DOUBLE_EQ(r.p99_us, 10);
  EXPECT_DOUBLE_EQ(r.p999_us, 10);
  EXPECT_DOUBLE_EQ(r.max_us, 5000);
  // One more slow sample puts it over 0.1%.
  ns.push_back(5 * kMs);
  EXPECT_DOUBLE_EQ(SummarizeLatencies(ns).p999_us, 5000);
}

TEST(LatencyStatsTest, OneSampleAndNoSamples) {
  std::vector<uint64_t> one = {7 * kUs};
  const LatencyResult r = SummarizeLatencies(one);
  EXPECT_EQ(r.samples, 1u);
  EXPECT_DOUBLE_EQ(r.p50_us, 7);
  EXPECT_DOUBLE_EQ(r.p999_us, 7);
  EXPECT_DOUBLE_EQ(r.max_us, 7);
  std::vector<uint64_t> none;
  const LatencyResult e = SummarizeLatencies(none);
  EXPECT_EQ(e.samples, 0u);
  EXPECT_DOUBLE_EQ(e.p50_us, 0);
  EXPECT_DOUBLE_EQ(e.max_us, 0);
  EXPECT_DOUBLE_EQ(PercentileUs(none, 990), 0);
}

TEST(LatencyStatsTest, MedianOfRoundsTakesEachFigureSeparately) {
  const std::vector<LatencyResult> rounds = {
      {100, 30, 900, 5000, 9000},
      {300, 10, 100, 1000, 2000},
      {200, 20, 500, 3000, 4000},
  };
  const LatencyResult m = MedianOfRounds(rounds);
  EXPECT_EQ(m.samples, 200u);
  EXPECT_DOUBLE_EQ(m.p50_us, 20);  // from the third round
  EXPECT_DOUBLE_EQ(m.p99_us, 500);
  EXPECT_DOUBLE_EQ(m.p999_us, 3000);
  EXPECT_DOUBLE_EQ(m.max_us, 4000);
  // An even count takes the upper middle, as tools::Median.
  const LatencyResult two = MedianOfRounds({{1, 10, 10, 10, 10}, {1, 20, 20, 20, 20}});
  EXPECT_DOUBLE_EQ(two.p50_us, 20);
  EXPECT_EQ(MedianOfRounds({}).samples, 0u);
  EXPECT_DOUBLE_EQ(MedianOfRounds({}).p99_us, 0);
}

// A baseline's rounds without a stall: those at or under the p99 limit, their medians taken
// as MedianOfRounds does; none kept is all zero.
TEST(LatencyStatsTest, MedianOfRoundsUpToLeavesOutTheStalledRounds) {
  const std::vector<LatencyResult> rounds = {
      {100, 70, 80000, 98000, 100000},  // stalled
      {100, 70, 200, 2000, 3000},
      {100, 72, 90000, 99000, 100500},  // stalled
      {100, 68, 150, 1500, 2500},
      {100, 71, 300, 2500, 3500},
  };
  size_t kept = 0;
  const LatencyResult m = MedianOfRoundsUpTo(rounds, 20000, &kept);
  EXPECT_EQ(kept, 3u);
  EXPECT_DOUBLE_EQ(m.p99_us, 200);
  EXPECT_DOUBLE_EQ(m.p50_us, 70);
  EXPECT_DOUBLE_EQ(m.max_us, 3000);
  EXPECT_DOUBLE_EQ(MedianOfRounds(rounds).p99_us, 300) << "all rounds: the stalls pull it up";
  EXPECT_EQ(MedianOfRoundsUpTo(rounds, 100, &kept).samples, 0u);
  EXPECT_EQ(kept, 0u);
  EXPECT_DOUBLE_EQ(MedianOfRoundsUpTo(rounds, 1e9, &kept).p99_us, 300);
  EXPECT_EQ(kept, 5u);
}

TEST(PacerTest, ScheduleIsStartPlusIndexOverRateWithoutDrift) {
  const Pacer pacer(5 * kMs, 3, [](uint64_t) {});
  EXPECT_EQ(pacer.ScheduledNs(0), 5 * kMs + 333333333);
  EXPECT_EQ(pacer.ScheduledNs(1), 5 * kMs + 666666666);
  EXPECT_EQ(pacer.ScheduledNs(2), 5 * kMs + 1000000000);  // a rounded period would drift
  EXPECT_EQ(pacer.ScheduledNs(2999), 5 * kMs + 1000ull * 1000000000);
}

// A fake CLOCK_MONOTONIC: sleeping to a future time moves it there, to a past time is a no-op.
struct FakeClock {
  uint64_t now = 0;
  std::vector<uint64_t> sleeps;
  Pacer::SleepUntil Sleeper() {
    return [this](uint64_t until) {
      sleeps.push_back(until);
      now = std::max(now, until);
    };
  }
};

TEST(PacerTest, OnTimeSenderSleepsToEachDueTime) {
  FakeClock clock;
  Pacer pacer(0, 1000, clock.Sleeper());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pacer.Next(), static_cast<uint64_t>(i + 1) * kMs);
  EXPECT_EQ(clock.sleeps, (std::vector<uint64_t>{1 * kMs, 2 * kMs, 3 * kMs}));
  EXPECT_EQ(pacer.count(), 3u);
}

// 1,000 messages at 1,000/s; the send of message 100 blocks for 100 ms; every message takes
// 20 us from its actual send to the receiver. Measured from the scheduled send time, the
// stall shows on message 100 and on each of the 99 messages due during it, which the sender
// then sends back to back; measured from the actual send time it would vanish.
TEST(PacerTest, StalledSenderCountsTheWaitOfEveryMessageDueDuringTheStall) {
  FakeClock clock;
  Pacer pacer(0, 1000, clock.Sleeper());
  LatencyRecorder from_scheduled;
  std::vector<uint64_t> from_actual;
  std::vector<uint64_t> late;  // scheduled-time latency of messages 100..199
  for (uint64_t i = 0; i < 1000; ++i) {
    const uint64_t scheduled = pacer.Next();
    if (i == 100) clock.now += 100 * kMs;  // the blocked send
    const uint64_t received = clock.now + 20 * kUs;
    from_scheduled.Record(scheduled, received);
    from_actual.push_back(received - clock.now);
    if (i >= 100 && i < 200) late.push_back(received - scheduled);
  }
  // Message 100 was due at 101 ms and left at 201 ms; 199 was due at 200 ms.
  EXPECT_EQ(late.front(), 100 * kMs + 20 * kUs);
  EXPECT_EQ(late.back(), 1 * kMs + 20 * kUs);
  EXPECT_EQ(std::count_if(late.begin(), late.end(), [](uint64_t l) { return l >= 50 * kMs; }),
            51);
  // Once caught up (message 200 is due at 201 ms) the sender is on time again.
  EXPECT_EQ(pacer.ScheduledNs(200), 201 * kMs);
  const LatencyResult r = from_scheduled.Summarize();
  EXPECT_EQ(r.samples, 1000u);
  EXPECT_DOUBLE_EQ(r.p50_us, 20);
  EXPECT_DOUBLE_EQ(r.p99_us, 90020);    // the 990th: the 90th of the 100 stalled, 90 ms + 20 us
  EXPECT_DOUBLE_EQ(r.p999_us, 99020);   // the 999th
  EXPECT_DOUBLE_EQ(r.max_us, 100020);
  // Coordinated omission: the same run timed from the actual send hides the stall entirely.
  const LatencyResult naive = SummarizeLatencies(from_actual);
  EXPECT_DOUBLE_EQ(naive.p99_us, 20);
  EXPECT_DOUBLE_EQ(naive.max_us, 20);
}

TEST(LatencyRecorderTest, ArrivalBeforeTheDueTimeCountsAsZero) {
  LatencyRecorder r;
  r.Record(5 * kMs, 4 * kMs);
  r.Record(5 * kMs, 5 * kMs + 3 * kUs);
  EXPECT_EQ(r.size(), 2u);
  const LatencyResult s = r.Summarize();
  EXPECT_DOUBLE_EQ(s.p50_us, 0);
  EXPECT_DOUBLE_EQ(s.max_us, 3);
}

}  // namespace
}  // namespace sluice::bench
