#include "buffer/memory_estimate.h"

#include <algorithm>
#include <cstdio>

namespace sluice::buffer {

PoolBounds GatePoolBounds(const GateSpec& gate, const CreditOptions& options) {
  if (gate.remote_channels == 0) return {0, 0};
  return {1, std::max<uint32_t>(1, options.floating_per_gate)};
}

PoolBounds PartitionPoolBounds(uint32_t subpartitions, const CreditOptions& options) {
  const uint32_t min = subpartitions + 1;
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
    item.exclusive = static_cast<uint64_t>(g.remote_channels) * options.buffers_per_channel;
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
