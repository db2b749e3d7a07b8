// Network memory estimation, checked by hand and against admission itself.
#include "buffer/memory_estimate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using ::testing::HasSubstr;

Topology OneGateOnePartition() {
  Topology t;
  t.gates.push_back({"in", /*remote_channels=*/4, /*local_channels=*/2});
  t.partitions.push_back({"out", /*subpartitions=*/4});
  return t;
}

TEST(MemoryEstimateTest, PoolBoundsFollowFlinksDefaults) {
  const CreditOptions o;
  EXPECT_EQ(o.segment_size, 32768u);
  EXPECT_EQ(o.buffers_per_channel, 2u);
  EXPECT_EQ(o.floating_per_gate, 8u);
  EXPECT_EQ(o.max_buffers_per_channel, 10u);
  EXPECT_EQ(o.overdraft, 5u);
  const PoolBounds gate = GatePoolBounds({"g", 4, 2}, o);
  EXPECT_EQ(gate.min, 1u);
  EXPECT_EQ(gate.max, 8u);
  const PoolBounds local_only = GatePoolBounds({"g", 0, 5}, o);
  EXPECT_EQ(local_only.min, 0u);
  EXPECT_EQ(local_only.max, 0u);
  const PoolBounds out = PartitionPoolBounds(4, o);
  EXPECT_EQ(out.min, 5u);   // n + 1
  EXPECT_EQ(out.max, 16u);  // n * 2 + 8
  CreditOptions no_floating = o;
  no_floating.floating_per_gate = 0;
  no_floating.buffers_per_channel = 0;
  EXPECT_EQ(GatePoolBounds({"g", 1, 0}, no_floating).max, 1u);
  EXPECT_EQ(PartitionPoolBounds(4, no_floating).max, 5u);  // never below min
}

TEST(MemoryEstimateTest, HandComputedTopologyWithDefaults) {
  // Gate: 4 remote channels * 2 exclusive = 8, floating pool 1..8 -> min 9, recommended 16.
  // Partition with 4 subpartitions: pool 5..16 -> min 5, recommended 16.
  const MemoryEstimate e = EstimateNetworkMemory(OneGateOnePartition(), CreditOptions{});
  ASSERT_EQ(e.items.size(), 2u);
  EXPECT_EQ(e.items[0].name, "gate in");
  EXPECT_EQ(e.items[0].exclusive, 8u);
  EXPECT_EQ(e.items[0].min_segments, 9u);
  EXPECT_EQ(e.items[0].recommended_segments, 16u);
  EXPECT_EQ(e.items[1].name, "partition out");
  EXPECT_EQ(e.items[1].exclusive, 0u);
  EXPECT_EQ(e.items[1].min_segments, 5u);
  EXPECT_EQ(e.items[1].recommended_segments, 16u);
  EXPECT_EQ(e.segment_size, 32768u);
  EXPECT_EQ(e.min_segments, 14u);
  EXPECT_EQ(e.recommended_segments, 32u);
  EXPECT_EQ(e.min_bytes, 14u * 32768u);
  EXPECT_EQ(e.recommended_bytes, 1u << 20);
  const std::string table = e.ToString();
  EXPECT_THAT(table, HasSubstr("gate in"));
  EXPECT_THAT(table, HasSubstr("partition out"));
  EXPECT_THAT(table, HasSubstr("minimum 14 segments (0.4 MiB)"));
  EXPECT_THAT(table, HasSubstr("recommended 32 segments (1.0 MiB)"));
}

TEST(MemoryEstimateTest, HandComputedTopologyWithOtherOptions) {
  CreditOptions o;
  o.segment_size = 8192;
  o.buffers_per_channel = 3;
  o.floating_per_gate = 4;
  Topology t;
  t.gates.push_back({"a", 3, 0});       // 9 exclusive + pool 1..4: min 10, recommended 13
  t.gates.push_back({"b", 0, 5});       // local channels only: nothing
  t.partitions.push_back({"p1", 1});    // pool 2..7
  t.partitions.push_back({"p10", 10});  // pool 11..34
  const MemoryEstimate e = EstimateNetworkMemory(t, o);
  EXPECT_EQ(e.min_segments, 10u + 0 + 2 + 11);
  EXPECT_EQ(e.recommended_segments, 13u + 0 + 7 + 34);
  EXPECT_EQ(e.min_bytes, 23u * 8192);
  EXPECT_EQ(e.recommended_bytes, 54u * 8192);
  EXPECT_EQ(EstimateNetworkMemory(Topology{}, o).min_segments, 0u);
}

// Creates what the topology needs, the way shuffle/ does; returns the first failure.
class Admitted {
 public:
  Status Admit(NetworkBufferPool& g, const Topology& t, const CreditOptions& o) {
    for (const GateSpec& gate : t.gates) {
      for (uint32_t c = 0; c < gate.remote_channels; ++c) {
        auto ex = g.RequestExclusiveSegments(o.buffers_per_channel, std::chrono::seconds(5));
        if (!ex.ok()) return ex.status();
        exclusive_.push_back(std::move(ex).value());
      }
      const PoolBounds b = GatePoolBounds(gate, o);
      if (b.max == 0) continue;
      auto pool =
          g.CreateLocalBufferPool(test_util::PoolOptions("gate " + gate.name, b.min, b.max));
      if (!pool.ok()) return pool.status();
      pools_.push_back(std::move(pool).value());
    }
    for (const PartitionSpec& p : t.partitions) {
      const PoolBounds b = PartitionPoolBounds(p.subpartitions, o);
      LocalBufferPoolOptions lo = test_util::PoolOptions("partition " + p.name, b.min, b.max);
      lo.num_subpartitions = p.subpartitions;
      lo.max_buffers_per_subpartition = o.max_buffers_per_channel;
      lo.max_overdraft = o.overdraft;
      auto pool = g.CreateLocalBufferPool(lo);
      if (!pool.ok()) return pool.status();
      pools_.push_back(std::move(pool).value());
    }
    return Status::Ok();
  }
  void Release(NetworkBufferPool& g) {
    for (auto& ex : exclusive_) g.RecycleExclusiveSegments(ex);
    exclusive_.clear();
    pools_.clear();
  }
  const std::vector<std::shared_ptr<LocalBufferPool>>& pools() const { return pools_; }

 private:
  std::vector<std::vector<MemorySegment*>> exclusive_;
  std::vector<std::shared_ptr<LocalBufferPool>> pools_;
};

class MemoryEstimateAdmissionTest : public test_util::PoolTest {};

TEST_F(MemoryEstimateAdmissionTest, ExactlyTheMinimumIsAdmitted) {
  const CreditOptions o;
  const MemoryEstimate e = EstimateNetworkMemory(OneGateOnePartition(), o);
  NetworkBufferPool& g = NewGlobal(static_cast<uint32_t>(e.min_segments), o.segment_size);
  Admitted a;
  const Status st = a.Admit(g, OneGateOnePartition(), o);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(g.required_segments(), g.total_segments());
  // Every pool can still get its guaranteed minimum.
  std::vector<Buffer> held;
  for (const auto& p : a.pools()) {
    for (uint32_t i = 0; i < p->min_segments(); ++i) {
      held.push_back(p->RequestBuffer());
      EXPECT_TRUE(held.back().valid()) << p->name();
    }
  }
  EXPECT_EQ(g.available_segments(), 0u);
  held.clear();
  a.Release(g);
}

TEST_F(MemoryEstimateAdmissionTest, OneSegmentLessIsRejected) {
  const CreditOptions o;
  const MemoryEstimate e = EstimateNetworkMemory(OneGateOnePartition(), o);
  NetworkBufferPool& g = NewGlobal(static_cast<uint32_t>(e.min_segments) - 1, o.segment_size);
  Admitted a;
  const Status st = a.Admit(g, OneGateOnePartition(), o);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("partition out"));
  EXPECT_THAT(st.message(), HasSubstr("required 5 segments, but only 4 of 13"));
  a.Release(g);
}

TEST_F(MemoryEstimateAdmissionTest, TheRecommendedAmountLetsEveryPoolReachItsMax) {
  const CreditOptions o;
  const MemoryEstimate e = EstimateNetworkMemory(OneGateOnePartition(), o);
  NetworkBufferPool& g = NewGlobal(static_cast<uint32_t>(e.recommended_segments), o.segment_size);
  Admitted a;
  ASSERT_TRUE(a.Admit(g, OneGateOnePartition(), o).ok());
  for (const auto& p : a.pools()) EXPECT_EQ(p->Stats().size, p->max_segments()) << p->name();
  a.Release(g);
}

// --- Wide gates (issue 14) -----------------------------------------------------------------

TEST(MemoryEstimateTest, WideGateMemoryDoesNotGrowWithItsWidth) {
  CreditOptions o;  // wide_threshold 1024, wide_gate_buffers 512, floating_per_gate 8
  EXPECT_EQ(o.wide_threshold, 1024u);
  EXPECT_EQ(o.wide_gate_buffers, 512u);
  EXPECT_FALSE(IsWideGate(1024, o));
  EXPECT_TRUE(IsWideGate(1025, o));
  EXPECT_EQ(ExclusivePerChannel(1024, o), 2u);
  EXPECT_EQ(ExclusivePerChannel(1025, o), 0u);
  // At the threshold: 1024 x 2 exclusive + pool 1..8.
  Topology at;
  at.gates.push_back({"g", 1024, 0});
  const MemoryEstimate e_at = EstimateNetworkMemory(at, o);
  EXPECT_EQ(e_at.min_segments, 2049u);
  EXPECT_EQ(e_at.recommended_segments, 2056u);
  // Above it the gate needs 512..520 whatever its width.
  for (uint32_t width : {1025u, 10000u, 1000000u}) {
    Topology t;
    t.gates.push_back({"g", width, 3});
    const MemoryEstimate e = EstimateNetworkMemory(t, o);
    ASSERT_EQ(e.items.size(), 1u);
    EXPECT_EQ(e.items[0].name, "gate g (wide)");
    EXPECT_EQ(e.items[0].exclusive, 0u);
    EXPECT_EQ(e.min_segments, 512u) << width;
    EXPECT_EQ(e.recommended_segments, 520u) << width;
  }
  // 0 turns it off (Flink's rule): 10000 x 2 + 1.
  o.wide_threshold = 0;
  Topology t;
  t.gates.push_back({"g", 10000, 0});
  EXPECT_EQ(EstimateNetworkMemory(t, o).min_segments, 20001u);
}

TEST(MemoryEstimateTest, WidePartitionMinimumIsBounded) {
  CreditOptions o;
  EXPECT_EQ(PartitionPoolBounds(1024, o).min, 1025u);  // n + 1 up to the threshold
  EXPECT_EQ(PartitionPoolBounds(10000, o).min, 512u);  // then min(n + 1, wide_gate_buffers)
  EXPECT_EQ(PartitionPoolBounds(10000, o).max, 20008u);
  o.wide_gate_buffers = 1;
  EXPECT_EQ(PartitionPoolBounds(10000, o).min, 2u);  // a writer needs two to make progress
  o.wide_threshold = 0;
  EXPECT_EQ(PartitionPoolBounds(10000, o).min, 10001u);
}

TEST(MemoryEstimateTest, BandwidthDelaySizingByHand) {
  CreditOptions o;  // 32 KiB segments
  BandwidthDelayInput in;
  in.throughput_bytes_per_s = 100.0 * (1 << 20);  // 100 MiB/s per channel
  in.rtt_s = 0.002;                                // 2 ms
  in.channels = 10000;
  in.debloat_target_s = 1.0;
  const BandwidthDelayPlan p = PlanBandwidthDelay(in, o);
  EXPECT_EQ(p.bdp_bytes, 209716u);         // ceil(104857600 x 0.002)
  EXPECT_EQ(p.buffers_per_channel, 7u);    // ceil(209716 / 32768) = ceil(6.4)
  EXPECT_EQ(p.static_min_segments, 70001u);
  EXPECT_EQ(p.static_recommended_segments, 70008u);
  EXPECT_TRUE(p.wide);
  EXPECT_EQ(p.wide_min_segments, 512u);
  EXPECT_EQ(p.wide_recommended_segments, 64000u);  // ceil(10000 x 209715.2 / 32768)
  EXPECT_EQ(p.debloat_inflight_bytes, 7u * 32768);  // R x T above the credit: the credit caps
  EXPECT_FALSE(p.debloat_limits_throughput);
  EXPECT_NE(p.ToString(o.segment_size).find("7 buffers per channel"), std::string::npos);
}

TEST(MemoryEstimateTest, BandwidthDelaySmallProductsShareSegmentsInAWideGate) {
  CreditOptions o;
  BandwidthDelayInput in;
  in.throughput_bytes_per_s = 1 << 20;  // 1 MiB/s
  in.rtt_s = 0.001;                     // 1 ms: 1049 bytes in flight
  in.channels = 2000;
  in.debloat_target_s = 0.01;  // 10 ms: 10486 bytes, below one segment
  const BandwidthDelayPlan p = PlanBandwidthDelay(in, o);
  EXPECT_EQ(p.bdp_bytes, 1049u);
  EXPECT_EQ(p.buffers_per_channel, 1u);  // never below one
  EXPECT_EQ(p.static_min_segments, 2001u);
  // 2000 x 1048.576 bytes = 64 segments, below the budget: the budget is the recommendation.
  EXPECT_EQ(p.wide_recommended_segments, 512u);
  EXPECT_EQ(p.debloat_inflight_bytes, 10486u);
  EXPECT_EQ(p.debloat_gate_inflight_bytes, 2000u * 10486);
  EXPECT_EQ(p.static_gate_inflight_bytes, 2000u * 32768);
  // A target below the RTT throttles the channel: reported.
  in.debloat_target_s = 0.0005;
  EXPECT_TRUE(PlanBandwidthDelay(in, o).debloat_limits_throughput);
  EXPECT_NE(PlanBandwidthDelay(in, o).ToString(o.segment_size).find("WARNING"),
            std::string::npos);
  // Zero throughput or RTT: one buffer, nothing in flight.
  in.throughput_bytes_per_s = 0;
  EXPECT_EQ(PlanBandwidthDelay(in, o).buffers_per_channel, 1u);
  EXPECT_EQ(PlanBandwidthDelay(in, o).bdp_bytes, 0u);
}

}  // namespace
}  // namespace sluice::buffer
