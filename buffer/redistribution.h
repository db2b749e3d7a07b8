// Redistribution of the spare (floating) segments among LocalBufferPools. A pure function, so
// tests can drive it over any pool set. Thread-safe (no state).
#pragma once

#include <cstdint>
#include <span>
#include <string>
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

// --- Usage-driven redistribution (NetworkBufferPoolOptions::redistribution = kUsage) ---------
//
// Spare segments go where they are used: every pool gets its min, then its `want` (what its
// measured demand asks for, see WantFor), in proportion when the wants exceed the spare; what
// nobody wants is shared by Flink's rule over the remaining headroom, so with no demand anywhere
// the result equals RedistributeSpare's. Hysteresis: an active pool (want > min) that would
// shrink by at most UsagePolicy::hysteresis of its size keeps its size while the spare allows.

enum class RedistributionPolicy : uint8_t {
  kStatic,  // Flink's rule: RedistributeSpare by capacity, on pool/exclusive changes only
  kUsage,   // RedistributeByUsage: by measured demand, also when a pool starves
};
// "static" | "usage"; the name for logs, config and flags.
const char* RedistributionPolicyName(RedistributionPolicy policy);
// false when `name` is neither "static" nor "usage".
bool ParseRedistributionPolicy(const std::string& name, RedistributionPolicy* out);

struct PoolUsage {
  uint32_t min = 0;     // guaranteed segments
  uint32_t max = 0;     // ceiling; REQUIRES: max >= min
  uint32_t size = 0;    // current size (what the last redistribution gave); min..max
  uint64_t demand = 0;  // smoothed demand in segments (SampleDemand / SmoothDemand)
};

struct UsagePolicy {
  // Headroom on top of the demand: want = demand + demand * headroom_percent / 100 + 1.
  uint32_t headroom_percent = 25;
  // An active pool does not shrink by this share of its size or less (percent), while the
  // spare allows: a pool whose demand wobbles keeps its segments.
  uint32_t hysteresis_percent = 25;
  // Each round a pool's smoothed demand decays to this share (percent) of the previous one
  // unless the new sample is higher: an idle pool gives its segments up within a few rounds,
  // a bursty one keeps them between bursts.
  uint32_t decay_percent = 50;
};

// The segments a pool with `demand` asks for: min when the demand is 0, else
// clamp(demand + demand * headroom_percent / 100 + 1, min, max).
uint32_t WantFor(const PoolUsage& pool, const UsagePolicy& policy);

// One pool's demand sample over a window, in segments: its peak of segments in use, plus the
// backlog its owner reports, plus, when requests found the pool at its size (starved), half
// its size plus one more (so a starved pool's want grows geometrically, about 1.9x a round).
uint64_t SampleDemand(uint32_t peak_in_use, uint32_t backlog, bool starved, uint32_t size);
// max(sample, previous * decay_percent / 100).
uint64_t SmoothDemand(uint64_t previous, uint64_t sample, const UsagePolicy& policy);

// The usage rule. Every pool gets at least its min and at most its max; the sizes add up to
// sum(min) + min(spare, sum(max - min)) exactly (as RedistributeSpare). Pure; `spare` as in
// RedistributeSpare.
std::vector<uint32_t> RedistributeByUsage(std::span<const PoolUsage> pools, uint64_t spare,
                                          const UsagePolicy& policy = {});

}  // namespace sluice::buffer
