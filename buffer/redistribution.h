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
// Spare segments go where they are used. Each pool measures its demand over a window (peak of
// segments in use, backlog its owner reports, starvation: a request found the pool at its
// size), smooths it, and turns it into a `want` with hysteresis (NextWant). The wants are then
// met by water-filling: every pool gets min(want, min + level), the largest level the spare
// allows, so small wants are met in full and the big ones share the rest equally. What nobody
// wants is shared by Flink's rule over the remaining headroom, so with no demand anywhere the
// result equals RedistributeSpare's.

enum class RedistributionPolicy : uint8_t {
  kStatic,  // Flink's rule: RedistributeSpare by capacity, on pool/exclusive changes only
  kUsage,   // RedistributeByUsage: by measured demand, also when a pool starves
};
// "static" | "usage"; the name for logs, config and flags.
const char* RedistributionPolicyName(RedistributionPolicy policy);
// false when `name` is neither "static" nor "usage".
bool ParseRedistributionPolicy(const std::string& name, RedistributionPolicy* out);

struct UsagePolicy {
  // Headroom on top of the demand: want = demand + demand * headroom_percent / 100 + 1.
  uint32_t headroom_percent = 25;
  // A want shrinks only when the new one is more than this share (percent) below it: a pool
  // whose demand wobbles keeps its segments, and sizes do not oscillate.
  uint32_t hysteresis_percent = 25;
  // Each round a pool's smoothed demand decays to this share (percent) of the previous one
  // unless the new sample is higher: an idle pool gives its segments up within a few rounds,
  // a bursty one keeps them between bursts.
  uint32_t decay_percent = 50;
};

// One pool's demand sample over a window, in segments: its peak of segments in use plus the
// backlog its owner reports; when requests found the pool at its size (starved), at least its
// size plus half of it plus one (so a starved pool's want grows about 1.9x a round).
uint64_t SampleDemand(uint32_t peak_in_use, uint32_t backlog, bool starved, uint32_t size);
// max(sample, previous * decay_percent / 100).
uint64_t SmoothDemand(uint64_t previous, uint64_t sample, const UsagePolicy& policy);
// The segments a demand asks for: min when 0, else
// clamp(demand + demand * headroom_percent / 100 + 1, min, max).
uint32_t WantFor(uint64_t demand, uint32_t min, uint32_t max, const UsagePolicy& policy);
// Hysteresis: `now` (from WantFor), unless it is below `previous` by hysteresis_percent of
// `previous` or less: then `previous`.
uint32_t NextWant(uint32_t previous, uint32_t now, const UsagePolicy& policy);

struct PoolUsage {
  uint32_t min = 0;   // guaranteed segments
  uint32_t max = 0;   // ceiling; REQUIRES: max >= min
  uint32_t want = 0;  // from NextWant; clamped to min..max
};

// The usage rule: water-filling of the wants, then Flink's rule for the rest. Every pool gets
// at least its min and at most its max; the sizes add up to sum(min) + min(spare,
// sum(max - min)) exactly; when the wants fit in the spare every pool gets at least its want.
// Pure; `spare` as in RedistributeSpare.
std::vector<uint32_t> RedistributeByUsage(std::span<const PoolUsage> pools, uint64_t spare);

}  // namespace sluice::buffer
