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
  // Wide gates (Flink's read-buffer.required-per-gate.max): a gate with more remote channels
  // than `wide_threshold` takes no exclusive buffers; its floating pool of `wide_gate_buffers`
  // (min) to wide_gate_buffers + floating_per_gate (max) serves every channel, round robin. A
  // result partition with more subpartitions than the threshold needs at least
  // min(n + 1, wide_gate_buffers) segments instead of n + 1. 0: never wide (Flink's rule).
  uint32_t wide_threshold = 1024;
  uint32_t wide_gate_buffers = 512;
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

// A gate of this many remote channels is wide: no exclusive buffers, a bounded floating budget.
bool IsWideGate(uint32_t remote_channels, const CreditOptions& options);
// Exclusive segments each remote channel of such a gate takes: buffers_per_channel, 0 if wide.
uint32_t ExclusivePerChannel(uint32_t remote_channels, const CreditOptions& options);
// The floating pool of an input gate: min 1, max floating_per_gate (at least 1); for a wide gate
// min wide_gate_buffers (at least 1), max min + floating_per_gate. A gate without remote
// channels has no pool ({0, 0}).
PoolBounds GatePoolBounds(const GateSpec& gate, const CreditOptions& options);
// The output pool of a result partition with n subpartitions: min n+1 (a wide partition:
// min(n+1, max(2, wide_gate_buffers))), max max(min, n*buffers_per_channel + floating_per_gate).
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

// Bandwidth-delay sizing (sluicectl plan --rtt --throughput): how many buffers keep one channel
// busy over a link, and what wide gates and debloating change. All sizes in bytes.
struct BandwidthDelayInput {
  double throughput_bytes_per_s = 0;  // R: what one channel must sustain
  double rtt_s = 0;                   // RTT: round trip of a credit and the data it releases
  uint32_t channels = 1;              // n: remote channels of the gate
  double debloat_target_s = 1.0;      // T: debloating's in-flight time target
};

struct BandwidthDelayPlan {
  uint64_t bdp_bytes = 0;                // ceil(R x RTT)
  uint32_t buffers_per_channel = 0;      // ceil(R x RTT / segment_size), at least 1
  // Static (Flink's rule) with buffers_per_channel set to the count above.
  uint64_t static_min_segments = 0;          // n x buffers_per_channel + 1
  uint64_t static_recommended_segments = 0;  // n x buffers_per_channel + floating_per_gate
  // Wide gate (n > wide_threshold): channels share a floating budget.
  bool wide = false;
  uint64_t wide_min_segments = 0;          // wide_gate_buffers, whatever n
  uint64_t wide_recommended_segments = 0;  // max(wide_gate_buffers, ceil(n x R x RTT / S))
  // Debloating: under backpressure a channel holds at most R x T bytes in flight.
  uint64_t debloat_inflight_bytes = 0;  // min(buffers_per_channel x S, ceil(R x T)) per channel
  uint64_t debloat_gate_inflight_bytes = 0;  // n x debloat_inflight_bytes
  uint64_t static_gate_inflight_bytes = 0;   // n x buffers_per_channel x S (debloat off)
  bool debloat_limits_throughput = false;  // T < RTT: the target is below one round trip
  std::string ToString(uint32_t segment_size) const;
};

BandwidthDelayPlan PlanBandwidthDelay(const BandwidthDelayInput& in, const CreditOptions& options);

}  // namespace sluice::buffer
