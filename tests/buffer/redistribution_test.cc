// RedistributeSpare: hand-computed cases of Flink's rule and a property test over random pool
// sets.
#include "buffer/redistribution.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

namespace sluice::buffer {
namespace {

std::vector<uint32_t> Sizes(std::vector<PoolBounds> pools, uint64_t spare) {
  return RedistributeSpare(pools, spare);
}
using V = std::vector<uint32_t>;

TEST(RedistributeSpareTest, NoPoolsNoSizes) { EXPECT_TRUE(Sizes({}, 100).empty()); }

TEST(RedistributeSpareTest, NoSpareLeavesEveryPoolAtItsMin) {
  EXPECT_EQ(Sizes({{1, 8}, {3, 3}, {2, 40}}, 0), (V{1, 3, 2}));
}

TEST(RedistributeSpareTest, AmpleSpareFillsEveryPoolToItsMax) {
  // Headroom 2 + 0 + 6 = 8 <= 100: everyone reaches max, the rest stays in the global pool.
  EXPECT_EQ(Sizes({{1, 3}, {4, 4}, {1, 7}}, 100), (V{3, 4, 7}));
}

TEST(RedistributeSpareTest, ProportionalToHeadroomWithCumulativeRounding) {
  // Three pools of headroom 3 share 7: cumulative shares 7*3/9 = 2.33, 7*6/9 = 4.67, 7 are
  // rounded down to 2, 4, 7, so the grants are 2, 2, 3.
  EXPECT_EQ(Sizes({{2, 5}, {2, 5}, {2, 5}}, 7), (V{4, 4, 5}));
  // Headroom 4 and 4 share 3: 1.5 -> 1, then 3: grants 1 and 2.
  EXPECT_EQ(Sizes({{1, 5}, {1, 5}}, 3), (V{2, 3}));
  // Headroom 1, 0 (fixed size, skipped) and 4 share 5 exactly.
  EXPECT_EQ(Sizes({{1, 2}, {6, 6}, {1, 5}}, 5), (V{2, 6, 5}));
  // Headroom 30 and 10 share 20: weights min(20, 30) = 20 and 10, cumulative 13.3 -> 13, 20.
  EXPECT_EQ(Sizes({{2, 32}, {1, 11}}, 20), (V{15, 8}));
  // Headroom 30 and 10 share 40 (more than both need): 30 and 10.
  EXPECT_EQ(Sizes({{2, 32}, {1, 11}}, 40), (V{32, 11}));
}

TEST(RedistributeSpareTest, WeightsAreCappedAtTheSpare) {
  // Flink weighs each pool by min(spare, max - min): a pool with a huge max does not starve a
  // small one. Spare 10, headroom 100 and 10: weights 10 and 10, grants 5 and 5 (uncapped
  // weights 100:10 would have given 10 and 0).
  EXPECT_EQ(Sizes({{1, 101}, {1, 11}}, 10), (V{6, 6}));
  // Spare 8 among headroom 30 and 2: weights 8 and 2, cumulative 6.4 -> 6, then 8.
  EXPECT_EQ(Sizes({{2, 32}, {20, 20}, {2, 4}}, 8), (V{8, 20, 4}));
}

TEST(RedistributeSpareTest, HugeBoundsDoNotOverflow) {
  const uint32_t kMax = 0xFFFFFFFFu;
  const std::vector<PoolBounds> pools = {{0, kMax}, {0, kMax}, {0, kMax}};
  const uint64_t spare = 1ull << 33;
  const V sizes = RedistributeSpare(pools, spare);
  uint64_t sum = 0;
  for (uint32_t s : sizes) sum += s;
  EXPECT_EQ(sum, spare);
  EXPECT_EQ(RedistributeSpare(pools, 1ull << 40), (V{kMax, kMax, kMax}));
}

TEST(RedistributeSpareTest, RandomPoolSetsKeepEveryInvariant) {
  std::mt19937 rng(20240601);
  for (int round = 0; round < 5000; ++round) {
    const size_t n = rng() % 24;
    std::vector<PoolBounds> pools;
    uint64_t headroom = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t min = rng() % 50;
      uint32_t extra = 0;
      switch (rng() % 4) {
        case 0:
          extra = 0;
          break;  // fixed size
        case 1:
          extra = rng() % 8;
          break;  // small headroom
        case 2:
          extra = rng() % 200;
          break;
        case 3:
          extra = 1000 + rng() % 100000;
          break;  // effectively unbounded
      }
      pools.push_back({min, min + extra});
      headroom += extra;
    }
    const uint64_t spare = (rng() % 5 == 0) ? 0 : rng() % 3000;
    const V sizes = RedistributeSpare(pools, spare);
    ASSERT_EQ(sizes.size(), n);
    uint64_t granted = 0;
    uint64_t capacity = 0;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_GE(sizes[i], pools[i].min) << "round " << round << " pool " << i;
      ASSERT_LE(sizes[i], pools[i].max) << "round " << round << " pool " << i;
      granted += sizes[i] - pools[i].min;
      capacity += std::min<uint64_t>(spare, pools[i].max - pools[i].min);
    }
    const uint64_t to_share = std::min(spare, headroom);
    ASSERT_EQ(granted, to_share) << "round " << round;
    // Each grant is within one segment of its exact proportional share w * to_share / capacity.
    for (size_t i = 0; i < n && capacity > 0; ++i) {
      const int64_t w =
          static_cast<int64_t>(std::min<uint64_t>(spare, pools[i].max - pools[i].min));
      const int64_t grant = sizes[i] - pools[i].min;
      const int64_t diff =
          grant * static_cast<int64_t>(capacity) - w * static_cast<int64_t>(to_share);
      ASSERT_LT(std::abs(diff), static_cast<int64_t>(capacity)) << "round " << round;
    }
    // Deterministic.
    ASSERT_EQ(RedistributeSpare(pools, spare), sizes);
  }
}


// --- RedistributeByUsage ----------------------------------------------------------------------

std::vector<PoolUsage> RandomUsage(std::mt19937& rng, size_t n) {
  std::vector<PoolUsage> pools;
  for (size_t i = 0; i < n; ++i) {
    PoolUsage p;
    p.min = rng() % 20;
    p.max = p.min + (rng() % 3 == 0 ? 0 : rng() % 300);
    p.want = rng() % 3 == 0 ? p.min : p.min + rng() % (p.max - p.min + 50);  // may pass max
    pools.push_back(p);
  }
  return pools;
}

TEST(UsagePolicyTest, DemandWantAndHysteresis) {
  const UsagePolicy policy;
  EXPECT_EQ(SampleDemand(7, 3, false, 40), 10u);
  EXPECT_EQ(SampleDemand(7, 3, true, 40), 61u);  // max(10, 40) + 20 + 1
  EXPECT_EQ(SmoothDemand(100, 10, policy), 50u);  // decays to half
  EXPECT_EQ(SmoothDemand(100, 70, policy), 70u);
  EXPECT_EQ(WantFor(0, 2, 64, policy), 2u);
  EXPECT_EQ(WantFor(8, 2, 64, policy), 11u);  // 8 + 2 + 1
  EXPECT_EQ(WantFor(100, 2, 64, policy), 64u);
  EXPECT_EQ(NextWant(20, 30, policy), 30u);  // growth at once
  EXPECT_EQ(NextWant(20, 15, policy), 20u);  // -25%: kept
  EXPECT_EQ(NextWant(20, 14, policy), 14u);  // -30%: shrinks
}

TEST(RedistributeByUsageTest, WithoutDemandItIsFlinksRule) {
  std::mt19937 rng(7);
  for (int round = 0; round < 2000; ++round) {
    std::vector<PoolUsage> pools = RandomUsage(rng, rng() % 16);
    std::vector<PoolBounds> bounds;
    for (PoolUsage& p : pools) {
      p.want = p.min;
      bounds.push_back({p.min, p.max});
    }
    const uint64_t spare = rng() % 2000;
    ASSERT_EQ(RedistributeByUsage(pools, spare), RedistributeSpare(bounds, spare))
        << "round " << round;
  }
}

TEST(RedistributeByUsageTest, TheBusyPoolGetsWhatTheIdleOnesDoNotUse) {
  // One busy pool (want 64, its max) and three idle ones, 60 spare: the busy pool takes all 60.
  const std::vector<PoolUsage> pools = {{1, 64, 64}, {1, 64, 1}, {1, 64, 1}, {1, 64, 1}};
  EXPECT_EQ(RedistributeByUsage(pools, 60), (V{61, 1, 1, 1}));
  // Under Flink's rule each would get 15.
  EXPECT_EQ(Sizes({{1, 64}, {1, 64}, {1, 64}, {1, 64}}, 60), (V{16, 16, 16, 16}));
}

TEST(RedistributeByUsageTest, WantsAreWaterFilledAndTheRestFollowsFlinksRule) {
  // Wants 11, 31 and 51 (extra 10, 30, 50) share 50: the small want is met in full, the two big
  // ones split the remaining 40 equally (level 20).
  EXPECT_EQ(RedistributeByUsage(std::vector<PoolUsage>{{1, 100, 11}, {1, 100, 31}, {1, 100, 51}}, 50),
            (V{11, 21, 21}));
  // 51 spare: the odd segment goes to the first pool above the level.
  EXPECT_EQ(RedistributeByUsage(std::vector<PoolUsage>{{1, 100, 11}, {1, 100, 31}, {1, 100, 51}}, 51),
            (V{11, 22, 21}));
  // 100 spare, 40 wanted (11 and 31): both get their want; the 60 left go by Flink's rule over
  // the remaining headroom 89 and 69 (cumulative 60 * 60 / 120 = 30, then 60).
  EXPECT_EQ(RedistributeByUsage(std::vector<PoolUsage>{{1, 100, 11}, {1, 100, 31}}, 100),
            (V{41, 61}));
  // A want above the max counts as the max.
  EXPECT_EQ(RedistributeByUsage(std::vector<PoolUsage>{{1, 5, 500}, {1, 100, 1}}, 10), (V{5, 7}));
}

TEST(RedistributeByUsageTest, RandomPoolSetsKeepMinimumsMaximumsAndTheTotal) {
  std::mt19937 rng(20261203);
  for (int round = 0; round < 5000; ++round) {
    const std::vector<PoolUsage> pools = RandomUsage(rng, rng() % 24);
    const uint64_t spare = rng() % 5 == 0 ? 0 : rng() % 3000;
    const V sizes = RedistributeByUsage(pools, spare);
    ASSERT_EQ(sizes.size(), pools.size());
    uint64_t granted = 0, headroom = 0, wanted = 0;
    for (size_t i = 0; i < pools.size(); ++i) {
      ASSERT_GE(sizes[i], pools[i].min) << "round " << round << " pool " << i;
      ASSERT_LE(sizes[i], pools[i].max) << "round " << round << " pool " << i;
      granted += sizes[i] - pools[i].min;
      headroom += pools[i].max - pools[i].min;
      wanted += std::min(pools[i].want, pools[i].max) - std::min(pools[i].want, pools[i].min);
    }
    ASSERT_EQ(granted, std::min(spare, headroom)) << "round " << round;
    for (size_t i = 0; i < pools.size(); ++i) {
      const uint32_t want = std::clamp(pools[i].want, pools[i].min, pools[i].max);
      if (wanted <= spare) {
        ASSERT_GE(sizes[i], want) << "round " << round;  // every want met
      } else {
        ASSERT_LE(sizes[i], want) << "round " << round;  // nothing beyond a want
      }
    }
  }
}

// A closed loop: each pool has a constant true need (segments it would hold); a round samples
// what it could use (its need capped at its size, starved when the need exceeds the size),
// smooths, derives the want, and redistributes. Returns the sizes after every round.
std::vector<V> Simulate(std::vector<PoolUsage> pools, V sizes, const V& need, uint64_t spare,
                        int rounds, std::vector<uint64_t> demand = {}) {
  std::vector<V> history;
  const UsagePolicy policy;
  demand.resize(pools.size(), 0);
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < pools.size(); ++i) {
      const uint64_t sample =
          SampleDemand(std::min(need[i], sizes[i]), 0, need[i] > sizes[i], sizes[i]);
      demand[i] = SmoothDemand(demand[i], sample, policy);
      pools[i].want = NextWant(pools[i].want, WantFor(demand[i], pools[i].min, pools[i].max, policy),
                               policy);
    }
    sizes = RedistributeByUsage(pools, spare);
    history.push_back(sizes);
  }
  return history;
}

TEST(RedistributeByUsageTest, ConstantLoadConvergesAndNeverOscillates) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = 1 + rng() % 12;
    std::vector<PoolUsage> pools;
    V need;
    std::vector<PoolBounds> bounds;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t min = 1 + rng() % 4;
      const uint32_t max = min + rng() % 200;
      pools.push_back({min, max, min});
      bounds.push_back({min, max});
      need.push_back(rng() % 3 == 0 ? 0 : rng() % 250);
    }
    const uint64_t spare = rng() % 800;
    // Start where Flink's rule leaves the pools.
    const std::vector<V> h = Simulate(pools, RedistributeSpare(bounds, spare), need, spare, 60);
    // A fixed point within 20 rounds: the rest are all the same.
    for (int r = 20; r < 60; ++r) ASSERT_EQ(h[r], h[20]) << "trial " << trial << " round " << r;
    // At most one change of direction per pool (no up, down, up).
    for (size_t i = 0; i < n; ++i) {
      int turns = 0, last = 0;
      for (int r = 1; r < 60; ++r) {
        const int d = h[r][i] > h[r - 1][i] ? 1 : h[r][i] < h[r - 1][i] ? -1 : 0;
        if (d != 0 && last != 0 && d != last) ++turns;
        if (d != 0) last = d;
      }
      ASSERT_LE(turns, 1) << "trial " << trial << " pool " << i;
    }
  }
}

TEST(RedistributeByUsageTest, AnIdlePoolGivesItsSpareToABusyOneWithinBoundedRounds) {
  // Pool A was busy and holds the whole spare (demand 400, want its max), then goes idle
  // while B starts needing more than there is.
  const uint64_t spare = 200;
  const std::vector<PoolUsage> pools = {{1, 256, 256}, {1, 256, 1}};
  const std::vector<V> h = Simulate(pools, {201, 1}, {0, 1000}, spare, 20, {400, 0});
  int rounds = -1;
  for (int r = 0; r < 20 && rounds < 0; ++r) {
    if (h[r] == V{1, 201}) rounds = r + 1;
  }
  ASSERT_GT(rounds, 0);
  EXPECT_LE(rounds, 12);
  for (int r = rounds; r < 20; ++r) EXPECT_EQ(h[r], (V{1, 201}));
  std::printf("the idle pool's spare moved in %d rounds\n", rounds);
}

}  // namespace
}  // namespace sluice::buffer
