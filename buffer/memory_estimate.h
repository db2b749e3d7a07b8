// Network memory estimation ("sluice plan"): given a topology and the credit options, the exact
// number of segments admission requires and the recommended amount, with a breakdown. The same
// formulas size the pools that shuffle/ creates, so the estimate and the admission check agree.
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sluice/buffer/redistribution.h"

namespace sluice::buffer {

struct CreditOptions {
  uint32_t segment_size = 32u << 10;
  uint32_t buffers_per_channel = 2;   // exclusive segments per remote input channel
  uint32_t floating_per_gate = 8;     // max floating segments of an input gate's pool
  uint32_t max_buffers_per_channel = 10;  // output pool cap per subpartition
  uint32_t overdraft = 5;             // output pool overdraft
};

struct GateSpec {
  std::string name;
  uint32_t remote_channels = 0;
  uint32_t local_channels = 0;  // read the producer's buffers: no memory of their own
};

struct PartitionSpec {
  std::string name;
  uint32_t subpartitions = 0;
};

struct Topology {
  std::vector<GateSpec> gates;
  std::vector<PartitionSpec> partitions;
};

// The floating pool of an input gate: min 1, max floating_per_gate (at least 1). A gate without
// remote channels has no pool ({0, 0}).
PoolBounds GatePoolBounds(const GateSpec& gate, const CreditOptions& options);
// The output pool of a result partition with n subpartitions: min n+1,
// max max(min, n*buffers_per_channel + floating_per_gate).
PoolBounds PartitionPoolBounds(uint32_t subpartitions, const CreditOptions& options);

struct EstimateItem {
  std::string name;            // "gate <name>" or "partition <name>"
  uint64_t exclusive = 0;      // exclusive segments (gates only)
  uint64_t min_segments = 0;   // exclusive + pool min
  uint64_t recommended_segments = 0;  // exclusive + pool max
};

struct MemoryEstimate {
  uint32_t segment_size = 0;
  uint64_t min_segments = 0;
  uint64_t recommended_segments = 0;
  uint64_t min_bytes = 0;
  uint64_t recommended_bytes = 0;
  std::vector<EstimateItem> items;
  // A table a person can read: one line per gate and partition, then the totals.
  std::string ToString() const;
};

MemoryEstimate EstimateNetworkMemory(const Topology& topology, const CreditOptions& options);

}  // namespace sluice::buffer
