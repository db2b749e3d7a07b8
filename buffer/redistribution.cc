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

uint64_t SampleDemand(uint32_t peak_in_use, uint32_t backlog, bool starved, uint32_t size) {
  uint64_t demand = static_cast<uint64_t>(peak_in_use) + backlog;
  if (starved) demand = std::max<uint64_t>(demand, size) + size / 2 + 1;
  return demand;
}

uint64_t SmoothDemand(uint64_t previous, uint64_t sample, const UsagePolicy& policy) {
  return std::max(sample, previous * policy.decay_percent / 100);
}

uint32_t WantFor(uint64_t demand, uint32_t min, uint32_t max, const UsagePolicy& policy) {
  if (demand == 0) return min;
  const uint64_t want = demand + demand * policy.headroom_percent / 100 + 1;
  return static_cast<uint32_t>(std::clamp<uint64_t>(want, min, max));
}

uint32_t NextWant(uint32_t previous, uint32_t now, const UsagePolicy& policy) {
  if (now >= previous) return now;
  const uint64_t drop = previous - now;
  return drop * 100 <= static_cast<uint64_t>(previous) * policy.hysteresis_percent ? previous : now;
}

namespace {

// Grants g_i = min(extra_i, level) (+1 for the first few pools above the level, so that they
// add up to `spare` exactly). REQUIRES: spare < sum(extra).
std::vector<uint64_t> WaterFill(const std::vector<uint64_t>& extra, uint64_t spare) {
  uint64_t lo = 0, hi = *std::max_element(extra.begin(), extra.end());
  auto filled = [&](uint64_t level) {
    uint64_t sum = 0;
    for (uint64_t e : extra) sum += std::min(e, level);
    return sum;
  };
  while (lo < hi) {  // the largest level that fits
    const uint64_t mid = lo + (hi - lo + 1) / 2;
    if (filled(mid) <= spare) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  std::vector<uint64_t> grants(extra.size());
  uint64_t rest = spare - filled(lo);
  for (size_t i = 0; i < extra.size(); ++i) {
    grants[i] = std::min(extra[i], lo);
    if (rest > 0 && extra[i] > lo) {
      ++grants[i];
      --rest;
    }
  }
  return grants;
}

}  // namespace

std::vector<uint32_t> RedistributeByUsage(std::span<const PoolUsage> pools, uint64_t spare) {
  const size_t n = pools.size();
  std::vector<uint64_t> extra(n);
  uint64_t wanted = 0, headroom = 0;
  for (size_t i = 0; i < n; ++i) {
    extra[i] = std::clamp(pools[i].want, pools[i].min, pools[i].max) - pools[i].min;
    wanted += extra[i];
    headroom += pools[i].max - pools[i].min;
  }
  std::vector<uint32_t> sizes(n);
  if (wanted <= spare) {
    for (size_t i = 0; i < n; ++i) sizes[i] = pools[i].min + static_cast<uint32_t>(extra[i]);
  } else {
    const std::vector<uint64_t> grants = WaterFill(extra, spare);
    for (size_t i = 0; i < n; ++i) sizes[i] = pools[i].min + static_cast<uint32_t>(grants[i]);
  }
  // What nobody wants: Flink's rule over the remaining headroom.
  const uint64_t left = std::min(spare, headroom) - std::min(spare, wanted);
  if (left == 0) return sizes;
  std::vector<PoolBounds> rest(n);
  for (size_t i = 0; i < n; ++i) rest[i] = {sizes[i], pools[i].max};
  return RedistributeSpare(rest, left);
}

}  // namespace sluice::buffer
