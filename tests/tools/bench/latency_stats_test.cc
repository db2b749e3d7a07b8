// sluice-bench's latency arithmetic without sockets: nearest-rank percentiles, medians of
// rounds, and the Pacer's schedule, driven by a fake clock so a stalled sender is exact.
#include "tools/bench/latency_stats.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "tools/bench/turn_board.h"

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

// The per-second lines' p50 and p99 by selection agree with the sort's nearest rank.
TEST(LatencyStatsTest, SelectedP50AndP99AreTheSortedOnes) {
  std::mt19937_64 rng(7);
  for (size_t n : {1u, 2u, 99u, 100u, 101u, 1000u, 10007u}) {
    std::vector<uint64_t> ns(n);
    for (uint64_t& v : ns) v = rng() % (5 * kMs);
    std::vector<uint64_t> sorted = ns;
    const LatencyResult want = SummarizeLatencies(sorted);
    const LatencyResult got = SelectP50P99(ns);
    EXPECT_EQ(got.samples, n);
    EXPECT_DOUBLE_EQ(got.p50_us, want.p50_us) << n;
    EXPECT_DOUBLE_EQ(got.p99_us, want.p99_us) << n;
  }
  std::vector<uint64_t> none;
  EXPECT_DOUBLE_EQ(SelectP50P99(none).p99_us, 0);
}

TEST(TurnScheduleTest, OnePathIsRealTimeFromTheStart) {
  const TurnSchedule one{.start_ns = 7 * kMs};
  EXPECT_EQ(one.RealNs(0), 7 * kMs);
  EXPECT_EQ(one.RealNs(2500 * kMs), 2507 * kMs);
}

// Three paths in slots of 100 ms: path 1 owns [100, 200), [400, 500), [700, 800) ms...
TEST(TurnScheduleTest, APathsActiveTimeRunsOnlyInItsOwnSlots) {
  const TurnSchedule t{.start_ns = 1 * kMs, .slot_ns = 100 * kMs, .paths = 3, .index = 1};
  EXPECT_EQ(t.RealNs(0), 101 * kMs);
  EXPECT_EQ(t.RealNs(99 * kMs), 200 * kMs);
  EXPECT_EQ(t.RealNs(100 * kMs), 401 * kMs);  // a boundary starts the next own slot
  EXPECT_EQ(t.RealNs(250 * kMs), 751 * kMs);
}

// 1,000 messages/s from path 2 of 3 in 10 ms slots, [20, 30) ms, [50, 60) ms, ...: every due
// time falls in one of its own slots, one period apart within a slot, none in another path's.
// A slot's end is the next slot's start (half open), so the first slot holds 21..29 ms.
TEST(PacerTest, WithTurnsEveryDueTimeFallsInThePathsOwnSlots) {
  FakeClock clock;
  Pacer pacer(TurnSchedule{.start_ns = 0, .slot_ns = 10 * kMs, .paths = 3, .index = 2}, 1000,
              clock.Sleeper());
  std::vector<int> per_slot(12, 0);
  for (int i = 0; i < 39; ++i) {
    const uint64_t due = pacer.Next();
    EXPECT_EQ(clock.now, due);  // an on-time sender sleeps to each due time
    const uint64_t slot = due / (10 * kMs);
    ASSERT_LT(slot, per_slot.size());
    EXPECT_EQ(slot % 3, 2u) << "message " << i << " due at " << due << " ns";
    ++per_slot[slot];
  }
  EXPECT_EQ(per_slot, (std::vector<int>{0, 0, 9, 0, 0, 10, 0, 0, 10, 0, 0, 10}));
  EXPECT_EQ(pacer.ScheduledNs(0), 21 * kMs);
  EXPECT_EQ(pacer.ScheduledNs(9), 50 * kMs);
  EXPECT_EQ(pacer.ScheduledNs(10), 51 * kMs);
}

// A stall that runs past the end of the path's slot still counts in full on the late message,
// and the messages due in the path's next slot keep their own times.
TEST(PacerTest, WithTurnsAStallPastTheSlotsEndCountsInFull) {
  FakeClock clock;
  Pacer pacer(TurnSchedule{.start_ns = 0, .slot_ns = 10 * kMs, .paths = 2, .index = 0}, 1000,
              clock.Sleeper());
  for (int i = 0; i < 8; ++i) pacer.Next();  // due at 1..8 ms
  clock.now = 25 * kMs;                       // the sender stalls into the other path's slot
  EXPECT_EQ(pacer.Next(), 9 * kMs);           // sent at 25 ms: 16 ms late, and it counts
  EXPECT_EQ(pacer.Next(), 20 * kMs);          // the next own slot is [20, 30) ms
  EXPECT_EQ(pacer.Next(), 21 * kMs);
  EXPECT_EQ(clock.now, 25 * kMs);             // still late: no sleep yet
}

// Two forked paths join one board: each pacer waits for the orchestrator's start and paces in
// its own slots from that one start.
TEST(TurnBoardTest, ForkedPathsWaitForOneStartAndTakeTheirOwnSlots) {
  TurnBoard* board = MapTurnBoard(2, 50 * kMs);
  ASSERT_NE(board, nullptr);
  struct Firsts {
    std::atomic<uint64_t> due[2];
  };
  Firsts* firsts = MapShared<Firsts>();
  ASSERT_NE(firsts, nullptr);
  pid_t pids[2];
  for (uint32_t i = 0; i < 2; ++i) {
    pids[i] = ::fork();
    ASSERT_GE(pids[i], 0);
    if (pids[i] == 0) {
      JoinTurns(board, i);
      Pacer pacer = StartPacer(1000);
      firsts->due[i].store(pacer.ScheduledNs(0));
      _exit(0);
    }
  }
  const uint64_t before = MonotonicNowNs();
  EXPECT_EQ(StartTurns(board, 30ull * 1000 * kMs, [] { return false; }), 2u);
  const uint64_t start = board->start_ns.load();
  EXPECT_GE(start, before + kTurnLeadNs);
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(firsts->due[0].load(), start + 1 * kMs);
  EXPECT_EQ(firsts->due[1].load(), start + 51 * kMs);
  UnmapShared(firsts);
  UnmapTurnBoard(board);
}

// A path that will never be ready (it failed to set up) does not hold the others for the
// whole timeout: the orchestrator starts when give_up says so.
TEST(TurnBoardTest, StartTurnsStopsWaitingWhenTold) {
  TurnBoard* board = MapTurnBoard(3, 50 * kMs);
  ASSERT_NE(board, nullptr);
  board->ready.store(2);
  int asked = 0;
  EXPECT_EQ(StartTurns(board, 30ull * 1000 * kMs, [&asked] { return ++asked == 3; }), 2u);
  EXPECT_EQ(asked, 3);
  EXPECT_NE(board->start_ns.load(), 0u);
  UnmapTurnBoard(board);
}

// Without JoinTurns a process's pacer starts now, as before --interleave-ms.
TEST(TurnBoardTest, APacerOutsideTurnsStartsNow) {
  const uint64_t before = MonotonicNowNs();
  const Pacer pacer = StartPacer(1000);
  const uint64_t after = MonotonicNowNs();
  EXPECT_GE(pacer.ScheduledNs(0), before + 1 * kMs);
  EXPECT_LE(pacer.ScheduledNs(0), after + 1 * kMs);
}

}  // namespace
}  // namespace sluice::bench
