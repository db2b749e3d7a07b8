// RedistributeSpare: hand-computed cases of Flink's rule and a property test over random pool
// sets.
#include "buffer/redistribution.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace sluice::buffer
