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
