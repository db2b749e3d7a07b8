#include "buffer/redistribution.h"

#include <algorithm>

namespace sluice::buffer {

namespace {
__extension__ typedef unsigned __int128 Uint128;
}  // namespace

std::vector<uint32_t> RedistributeSpare(std::span<const PoolBounds> pools, uint64_t spare) {
  std::vector<uint32_t> sizes;
  sizes.reserve(pools.size());
  uint64_t headroom = 0;
  for (const PoolBounds& p : pools) {
    sizes.push_back(p.min);
    headroom += p.max - p.min;
  }
  const uint64_t to_share = std::min(spare, headroom);
  if (to_share == 0) return sizes;

  // Cumulative rounding up: after pool i, exactly ceil(parts_i * to_share / headroom) segments
  // have been handed out, so the last pool closes the sum at to_share and no pool exceeds its
  // headroom (each grant is at most ceil of its share). 128-bit: the headroom sum may pass 2^32.
  uint64_t parts_used = 0;
  uint64_t handed_out = 0;
  for (size_t i = 0; i < pools.size(); ++i) {
    const uint64_t part = pools[i].max - pools[i].min;
    if (part == 0) continue;
    parts_used += part;
    const auto cumulative = static_cast<uint64_t>(
        (static_cast<Uint128>(parts_used) * to_share + headroom - 1) / headroom);
    sizes[i] += static_cast<uint32_t>(cumulative - handed_out);
    handed_out = cumulative;
  }
  return sizes;
}

}  // namespace sluice::buffer
