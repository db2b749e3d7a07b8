#include "buffer/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sluice::buffer {

bool IsWideGate(uint32_t remote_channels, const CreditOptions& options) {
  return options.wide_threshold > 0 && remote_channels > options.wide_threshold;
}

uint32_t ExclusivePerChannel(uint32_t remote_channels, const CreditOptions& options) {
  return IsWideGate(remote_channels, options) ? 0 : options.buffers_per_channel;
}

PoolBounds GatePoolBounds(const GateSpec& gate, const CreditOptions& options) {
  if (gate.remote_channels == 0) return {0, 0};
  if (IsWideGate(gate.remote_channels, options)) {
    const uint32_t min = std::max<uint32_t>(1, options.wide_gate_buffers);
    return {min, min + options.floating_per_gate};
  }
  return {1, std::max<uint32_t>(1, options.floating_per_gate)};
}

PoolBounds PartitionPoolBounds(uint32_t subpartitions, const CreditOptions& options) {
  uint32_t min = subpartitions + 1;
  if (IsWideGate(subpartitions, options)) {
    min = std::min(min, std::max<uint32_t>(2, options.wide_gate_buffers));
  }
  const uint64_t max = static_cast<uint64_t>(subpartitions) * options.buffers_per_channel +
                       options.floating_per_gate;
  return {min, static_cast<uint32_t>(std::max<uint64_t>(min, max))};
}

MemoryEstimate EstimateNetworkMemory(const Topology& topology, const CreditOptions& options) {
  MemoryEstimate e;
  e.segment_size = options.segment_size;
  for (const GateSpec& g : topology.gates) {
    const PoolBounds b = GatePoolBounds(g, options);
    EstimateItem item;
    item.name = "gate " + g.name;
    item.exclusive = static_cast<uint64_t>(g.remote_channels) *
                     ExclusivePerChannel(g.remote_channels, options);
    if (IsWideGate(g.remote_channels, options)) item.name += " (wide)";
    item.min_segments = item.exclusive + b.min;
    item.recommended_segments = item.exclusive + b.max;
    e.items.push_back(std::move(item));
  }
  for (const PartitionSpec& p : topology.partitions) {
    const PoolBounds b = PartitionPoolBounds(p.subpartitions, options);
    e.items.push_back({"partition " + p.name, 0, b.min, b.max});
  }
  for (const EstimateItem& i : e.items) {
    e.min_segments += i.min_segments;
    e.recommended_segments += i.recommended_segments;
  }
  e.min_bytes = e.min_segments * options.segment_size;
  e.recommended_bytes = e.recommended_segments * options.segment_size;
  return e;
}

std::string MemoryEstimate::ToString() const {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-32s %10s %12s %12s\n", "item", "exclusive", "min segs",
                "recommended");
  out += line;
  for (const EstimateItem& i : items) {
    std::snprintf(line, sizeof(line), "%-32s %10llu %12llu %12llu\n", i.name.c_str(),
                  static_cast<unsigned long long>(i.exclusive),
                  static_cast<unsigned long long>(i.min_segments),
                  static_cast<unsigned long long>(i.recommended_segments));
    out += line;
  }
  std::snprintf(line, sizeof(line),
                "total: minimum %llu segments (%.1f MiB), recommended %llu segments (%.1f MiB) "
                "at segment size %u\n",
                static_cast<unsigned long long>(min_segments), min_bytes / 1048576.0,
                static_cast<unsigned long long>(recommended_segments),
                recommended_bytes / 1048576.0, segment_size);
  out += line;
  return out;
}

}  // namespace sluice::buffer

namespace sluice::buffer {

namespace {
uint64_t CeilDiv(uint64_t a, uint64_t b) { return b == 0 ? 0 : (a + b - 1) / b; }
uint64_t CeilBytes(double bytes) {
  return bytes <= 0 ? 0 : static_cast<uint64_t>(std::ceil(bytes - 1e-9));
}
}  // namespace

BandwidthDelayPlan PlanBandwidthDelay(const BandwidthDelayInput& in,
                                      const CreditOptions& options) {
  BandwidthDelayPlan p;
  const uint64_t s = options.segment_size;
  const uint64_t n = std::max<uint32_t>(1, in.channels);
  p.bdp_bytes = CeilBytes(in.throughput_bytes_per_s * in.rtt_s);
  p.buffers_per_channel =
      static_cast<uint32_t>(std::max<uint64_t>(1, CeilDiv(p.bdp_bytes, s)));
  p.static_min_segments = n * p.buffers_per_channel + 1;
  p.static_recommended_segments =
      n * p.buffers_per_channel + std::max<uint32_t>(1, options.floating_per_gate);
  p.wide = IsWideGate(static_cast<uint32_t>(n), options);
  const uint64_t budget = std::max<uint32_t>(1, options.wide_gate_buffers);
  p.wide_min_segments = budget;
  // Shared buffers are not rounded up per channel: n channels need n x BDP bytes in all.
  p.wide_recommended_segments =
      std::max(budget, CeilDiv(CeilBytes(in.throughput_bytes_per_s * in.rtt_s * n), s));
  p.debloat_inflight_bytes =
      std::min<uint64_t>(uint64_t{p.buffers_per_channel} * s,
                         CeilBytes(in.throughput_bytes_per_s * in.debloat_target_s));
  p.debloat_gate_inflight_bytes = n * p.debloat_inflight_bytes;
  p.static_gate_inflight_bytes = n * p.buffers_per_channel * s;
  p.debloat_limits_throughput = in.debloat_target_s < in.rtt_s;
  return p;
}

std::string BandwidthDelayPlan::ToString(uint32_t segment_size) const {
  std::string out;
  char line[320];
  const double mib = 1048576.0;
  std::snprintf(line, sizeof(line),
                "bandwidth-delay product: %llu bytes per channel -> %u buffers per channel "
                "(ceil(R x RTT / %u))\n",
                static_cast<unsigned long long>(bdp_bytes), buffers_per_channel, segment_size);
  out += line;
  std::snprintf(line, sizeof(line),
                "static (buffers_per_channel = %u exclusive): minimum %llu segments (%.1f MiB), "
                "recommended %llu segments (%.1f MiB)\n",
                buffers_per_channel, static_cast<unsigned long long>(static_min_segments),
                static_min_segments * segment_size / mib,
                static_cast<unsigned long long>(static_recommended_segments),
                static_recommended_segments * segment_size / mib);
  out += line;
  std::snprintf(line, sizeof(line),
                "wide gate (shared floating budget)%s: minimum %llu segments (%.1f MiB), "
                "recommended %llu segments (%.1f MiB)\n",
                wide ? "" : " if it were wide", static_cast<unsigned long long>(wide_min_segments),
                wide_min_segments * segment_size / mib,
                static_cast<unsigned long long>(wide_recommended_segments),
                wide_recommended_segments * segment_size / mib);
  out += line;
  std::snprintf(line, sizeof(line),
                "debloat: at most %llu bytes in flight per channel under backpressure (%.1f MiB "
                "for the gate instead of %.1f MiB); the minimum is unchanged%s\n",
                static_cast<unsigned long long>(debloat_inflight_bytes),
                debloat_gate_inflight_bytes / mib, static_gate_inflight_bytes / mib,
                debloat_limits_throughput
                    ? " (WARNING: debloat_target is below the RTT and limits throughput)"
                    : "");
  out += line;
  return out;
}

}  // namespace sluice::buffer
