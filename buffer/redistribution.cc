#include "buffer/redistribution.h"

#include <algorithm>

namespace sluice::buffer {

namespace {
__extension__ typedef unsigned __int128 Uint128;
}  // namespace

std::vector<uint32_t> RedistributeSpare(std::span<const PoolBounds> pools, uint64_t spare) {
  std::vector<uint32_t> sizes;
  sizes.reserve(pools.size());
  // A pool's weight is its headroom capped at the spare segments (Flink's "capacity"), so one
  // pool with a huge max cannot starve the others.
  uint64_t capacity = 0;
  for (const PoolBounds& p : pools) {
    sizes.push_back(p.min);
    capacity += std::min<uint64_t>(spare, p.max - p.min);
  }
  const uint64_t to_share = std::min(spare, capacity);
  if (to_share == 0) return sizes;

  // Cumulative rounding down: after pool i, exactly floor(parts_i * to_share / capacity)
  // segments have been handed out, so the last pool closes the sum at to_share, and no grant
  // exceeds ceil(weight * to_share / capacity) <= weight <= headroom. 128-bit: the product may
  // pass 2^64.
  uint64_t parts_used = 0;
  uint64_t handed_out = 0;
  for (size_t i = 0; i < pools.size(); ++i) {
    const uint64_t part = std::min<uint64_t>(spare, pools[i].max - pools[i].min);
    if (part == 0) continue;
    parts_used += part;
    const auto cumulative =
        static_cast<uint64_t>(static_cast<Uint128>(parts_used) * to_share / capacity);
    sizes[i] += static_cast<uint32_t>(cumulative - handed_out);
    handed_out = cumulative;
  }
  return sizes;
}

}  // namespace sluice::buffer

namespace sluice::buffer {

const char* RedistributionPolicyName(RedistributionPolicy policy) {
  return policy == RedistributionPolicy::kUsage ? "usage" : "static";
}

bool ParseRedistributionPolicy(const std::string& name, RedistributionPolicy* out) {
  if (name == "static") {
    *out = RedistributionPolicy::kStatic;
  } else if (name == "usage") {
    *out = RedistributionPolicy::kUsage;
  } else {
    return false;
  }
  return true;
}

uint32_t WantFor(const PoolUsage& pool, const UsagePolicy& policy) {
  if (pool.demand == 0) return pool.min;
  const uint64_t want = pool.demand + pool.demand * policy.headroom_percent / 100 + 1;
  return static_cast<uint32_t>(std::clamp<uint64_t>(want, pool.min, pool.max));
}

uint64_t SampleDemand(uint32_t peak_in_use, uint32_t backlog, bool starved, uint32_t size) {
  uint64_t demand = static_cast<uint64_t>(peak_in_use) + backlog;
  if (starved) demand = std::max<uint64_t>(demand, size) + size / 2 + 1;
  return demand;
}

uint64_t SmoothDemand(uint64_t previous, uint64_t sample, const UsagePolicy& policy) {
  return std::max(sample, previous * policy.decay_percent / 100);
}

std::vector<uint32_t> RedistributeByUsage(std::span<const PoolUsage> pools, uint64_t spare,
                                          const UsagePolicy& policy) {
  const size_t n = pools.size();
  std::vector<PoolBounds> wants(n);
  std::vector<uint32_t> wanted(n);
  uint64_t headroom = 0;
  for (size_t i = 0; i < n; ++i) {
    wanted[i] = WantFor(pools[i], policy);
    wants[i] = {pools[i].min, wanted[i]};
    headroom += pools[i].max - pools[i].min;
  }
  // 1. The wants, in proportion to (want - min) when they exceed the spare.
  std::vector<uint32_t> sizes = RedistributeSpare(wants, spare);
  uint64_t left = std::min(spare, headroom);
  for (size_t i = 0; i < n; ++i) left -= sizes[i] - pools[i].min;
  // 2. Hysteresis: an active pool about to shrink a little keeps its size from what is left.
  for (size_t i = 0; i < n && left > 0; ++i) {
    const PoolUsage& p = pools[i];
    const uint32_t current = std::clamp(p.size, p.min, p.max);
    if (wanted[i] <= p.min || sizes[i] >= current) continue;
    const uint32_t loss = current - sizes[i];
    if (static_cast<uint64_t>(loss) * 100 > static_cast<uint64_t>(current) * policy.hysteresis_percent) {
      continue;
    }
    const auto keep = static_cast<uint32_t>(std::min<uint64_t>(loss, left));
    sizes[i] += keep;
    left -= keep;
  }
  // 3. What nobody wants: Flink's rule over the remaining headroom (left <= its sum).
  if (left > 0) {
    std::vector<PoolBounds> rest(n);
    for (size_t i = 0; i < n; ++i) rest[i] = {sizes[i], pools[i].max};
    sizes = RedistributeSpare(rest, left);
  }
  return sizes;
}

}  // namespace sluice::buffer
