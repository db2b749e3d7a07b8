// Redistribution of the spare (floating) segments among LocalBufferPools. A pure function, so
// tests can drive it over any pool set. Thread-safe (no state).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sluice::buffer {

struct PoolBounds {
  uint32_t min = 0;  // guaranteed segments
  uint32_t max = 0;  // ceiling; REQUIRES: max >= min
};

// Flink's rule (the classic NetworkBufferPool#redistributeBuffers; recent Flink versions weigh
// pools by an expected size instead): every pool gets its min; min(spare, total headroom)
// segments are shared in proportion to each pool's weight min(spare, max - min), rounding the
// cumulative share down so the grants add up exactly and no pool passes its max. Returns each
// pool's new size (min + grant), in the order given.
// `spare` is total segments minus every pool minimum and every exclusive segment.
std::vector<uint32_t> RedistributeSpare(std::span<const PoolBounds> pools, uint64_t spare);

}  // namespace sluice::buffer
