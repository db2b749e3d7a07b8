// Wide input gates without sockets: a fake PartitionRequestClient stands in for the network and
// the test plays the sender (TakeBufferForPayload, OnBuffer, OnSenderBacklog) and the consumer.
// Checks: no exclusive buffers and initial credit 0, backlog-driven round-robin grants of the
// bounded floating budget, the credit the sender holds never above the buffers held, and heap
// per channel (mallinfo2) under 1 KiB. Every test ends with the leak check.

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <vector>

#include "buffer/memory_estimate.h"
#include "buffer/network_buffer_pool.h"
#include "shuffle/input_gate.h"
#include "shuffle/remote_input_channel.h"
#include "shuffle/result_partition.h"
#include "testutil/pools.h"
#include "testutil/heap.h"
#include "tests/shuffle/fake_request_client.h"

namespace sluice::shuffle {
namespace {

using testing::FakeRequestClient;

class WideGateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = testutil::MakeNetworkBufferPool(64, 4096);
    options_.credit.segment_size = 4096;
    options_.credit.buffers_per_channel = 2;
    options_.credit.floating_per_gate = 0;  // the budget is exactly wide_gate_buffers
    options_.credit.wide_threshold = 4;
    options_.credit.wide_gate_buffers = 3;
  }
  void TearDown() override {
    channels_.clear();
    if (gate_) gate_->Close();
    gate_.reset();
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << pool_->DebugString();
  }

  void StartGate(uint32_t n) {
    auto gate = InputGate::Create("wide", pool_, options_, n);
    ASSERT_TRUE(gate.ok()) << gate.status().ToString();
    gate_ = std::move(*gate);
    for (uint32_t i = 0; i < n; ++i) {
      auto ch = std::make_shared<RemoteInputChannel>(
          gate_.get(), i, &client_, transport::Endpoint{"127.0.0.1", 9}, "p", i);
      channels_.push_back(ch);
      gate_->AddChannel(ch);
    }
    ASSERT_TRUE(gate_->Start().ok());
  }

  // The sender: one data buffer for channel `i` (uses one credit).
  void Deliver(uint32_t i, int32_t backlog) {
    buffer::Buffer b = channels_[i]->TakeBufferForPayload();
    ASSERT_TRUE(b.valid()) << "channel " << i << " has no credit";
    b.SetSize(8);
    bool notify_later = false;
    ASSERT_TRUE(channels_[i]->OnBuffer(std::move(b), seq_[i]++, backlog, &notify_later).ok());
    channels_[i]->NotifyDeferred();
  }

  std::vector<buffer::Buffer> ConsumeAll() {
    std::vector<buffer::Buffer> out;
    while (true) {
      auto n = gate_->PollNext();
      EXPECT_TRUE(n.ok()) << n.status().ToString();
      if (!n.ok() || !n->has_value()) return out;
      out.push_back(std::move((*n)->buffer));
    }
  }

  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  ShuffleOptions options_;
  FakeRequestClient client_;
  std::unique_ptr<InputGate> gate_;
  std::vector<std::shared_ptr<RemoteInputChannel>> channels_;
  std::vector<int32_t> seq_ = std::vector<int32_t>(64, 0);
};

TEST_F(WideGateTest, NoExclusiveBuffersAndInitialCreditZero) {
  StartGate(8);
  EXPECT_TRUE(gate_->wide());
  EXPECT_EQ(gate_->exclusive_per_channel(), 0u);
  EXPECT_NE(gate_->floating_credit(), nullptr);
  EXPECT_EQ(gate_->floating_pool()->min_segments(), 3u);
  EXPECT_EQ(gate_->floating_pool()->max_segments(), 3u);
  for (auto& ch : channels_) {
    EXPECT_EQ(ch->initial_credit(), 0);
    EXPECT_EQ(ch->State().exclusive, 0u);
    EXPECT_EQ(ch->AvailableBuffers(), 0u);
  }
  EXPECT_EQ(client_.requests.load(), 8);
  EXPECT_EQ(client_.credit_notes.load(), 0);
  // A gate at the threshold is not wide: 4 channels x 2 exclusive.
  auto narrow = InputGate::Create("narrow", pool_, options_, 4);
  ASSERT_TRUE(narrow.ok());
  EXPECT_FALSE((*narrow)->wide());
  EXPECT_EQ((*narrow)->exclusive_per_channel(), 2u);
  (*narrow)->Close();
}

TEST_F(WideGateTest, BacklogIsServedRoundRobinFromTheBoundedBudget) {
  StartGate(6);
  // Channel 0 announces first and takes the whole idle budget; the others queue behind it.
  channels_[0]->OnSenderBacklog(5);
  EXPECT_EQ(channels_[0]->AvailableBuffers(), 3u);
  EXPECT_EQ(channels_[0]->TakeUnannouncedCredit(), 3);
  for (uint32_t i = 1; i < 6; ++i) channels_[i]->OnSenderBacklog(2);
  for (uint32_t i = 1; i < 6; ++i) EXPECT_EQ(channels_[i]->AvailableBuffers(), 0u) << i;
  EXPECT_EQ(gate_->floating_credit()->waiting(), 6u);
  // The sender spends channel 0's credit; the consumer returns the three buffers. First come
  // would give channel 0 two of them (it still wants two); round robin gives one each to
  // channels 0, 1 and 2.
  Deliver(0, 4);
  Deliver(0, 3);
  Deliver(0, 2);
  ConsumeAll().clear();
  for (uint32_t i = 0; i <= 2; ++i) {
    EXPECT_EQ(channels_[i]->AvailableBuffers(), 1u) << i;
    EXPECT_EQ(channels_[i]->TakeUnannouncedCredit(), 1) << i;
  }
  // Next round: 3, 4 and 5, before anyone is served twice.
  for (uint32_t i = 0; i <= 2; ++i) Deliver(i, 1);
  ConsumeAll().clear();
  for (uint32_t i = 0; i <= 2; ++i) EXPECT_EQ(channels_[i]->AvailableBuffers(), 0u) << i;
  for (uint32_t i = 3; i <= 5; ++i) EXPECT_EQ(channels_[i]->AvailableBuffers(), 1u) << i;
  EXPECT_EQ(gate_->floating_pool()->Stats().lent, 3u);
}

// Every channel with backlog gets a buffer within one round of grants: with n channels waiting
// and a budget of b, no channel waits more than ceil(n / b) consumer rounds.
TEST_F(WideGateTest, NoChannelWaitsForeverAndCreditMatchesBuffers) {
  constexpr uint32_t kChannels = 40;
  StartGate(kChannels);
  std::vector<int64_t> sender_credit(kChannels, 0);
  std::vector<uint32_t> backlog(kChannels, 6);  // six buffers queued at every sender
  std::vector<uint32_t> rounds_waiting(kChannels, 0);
  for (uint32_t i = 0; i < kChannels; ++i) channels_[i]->OnSenderBacklog(6);
  uint32_t rounds = 0;
  while (true) {
    bool any = false;
    for (uint32_t i = 0; i < kChannels; ++i) {
      sender_credit[i] += channels_[i]->TakeUnannouncedCredit();  // the AddCredit
      ASSERT_LE(sender_credit[i], static_cast<int64_t>(channels_[i]->AvailableBuffers()));
      if (backlog[i] > 0 && sender_credit[i] == 0) {
        ASSERT_LE(++rounds_waiting[i], (kChannels + 2) / 3) << "channel " << i << " starves";
      } else {
        rounds_waiting[i] = 0;
      }
      while (sender_credit[i] > 0 && backlog[i] > 0) {
        --sender_credit[i];
        Deliver(i, static_cast<int32_t>(--backlog[i]));
      }
      any = any || backlog[i] > 0;
    }
    ConsumeAll().clear();
    ++rounds;
    if (!any) break;
    ASSERT_LT(rounds, 1000u);
  }
  EXPECT_EQ(gate_->floating_credit()->waiting(), 0u);
  EXPECT_EQ(gate_->floating_credit()->grants(), kChannels * 6u);  // one grant per buffer sent
  EXPECT_EQ(gate_->floating_pool()->Stats().lent, 0u);
}

TEST_F(WideGateTest, ReleasedChannelIsNoLongerGranted) {
  StartGate(6);
  channels_[0]->OnSenderBacklog(3);
  channels_[1]->OnSenderBacklog(1);
  channels_[1]->Release();
  Deliver(0, 0);
  ConsumeAll().clear();  // the buffer returns; channel 1 is released: it goes back to the pool
  EXPECT_EQ(channels_[1]->AvailableBuffers(), 0u);
  EXPECT_EQ(gate_->floating_pool()->Stats().lent, 2u);  // channel 0's two remaining credits
  EXPECT_EQ(gate_->floating_credit()->waiting(), 0u);
}

// Heap per channel: a gate of several thousand remote channels, started (channel objects,
// receiver ids, the gate's and the dispatcher's per-channel state), stays under 1 KiB each.
TEST(WideGateHeapTest, HeapPerChannelUnderOneKiB) {
  if (testutil::kHeapUnmeasurable) GTEST_SKIP() << testutil::kHeapUnmeasurableReason;
  constexpr uint32_t kChannels = 5000;
  auto pool = testutil::MakeNetworkBufferPool(1024, 4096);
  ShuffleOptions options;
  options.credit.segment_size = 4096;
  options.credit.wide_threshold = 1024;
  options.credit.wide_gate_buffers = 256;
  FakeRequestClient client;
  const size_t before = testutil::HeapInUse();
  {
    auto gate = std::move(InputGate::Create("wide", pool, options, kChannels)).value();
    for (uint32_t i = 0; i < kChannels; ++i) {
      gate->AddChannel(std::make_shared<RemoteInputChannel>(
          gate.get(), i, &client, transport::Endpoint{"127.0.0.1", 4000}, "p0", i));
    }
    ASSERT_TRUE(gate->Start().ok());
    testutil::ExpectHeapPerItemBelow(before, kChannels, 1024.0, "heap_bytes_per_channel");
    EXPECT_EQ(pool->used_segments(), 0u);  // no exclusive segment, no floating one yet
    gate->Close();
  }
  EXPECT_EQ(pool->available_segments(), pool->total_segments()) << pool->DebugString();
}

// The producer's side of the same width: a partition of several thousand subpartitions (queue,
// locks, counters, flush-list slot each) stays under 1 KiB of heap per subpartition while its
// queues are empty; a queue grows only while a consumer falls behind.
TEST(WideGateHeapTest, HeapPerSubpartitionUnderOneKiB) {
  if (testutil::kHeapUnmeasurable) GTEST_SKIP() << testutil::kHeapUnmeasurableReason;
  constexpr uint32_t kSubpartitions = 5000;
  auto pool = testutil::MakeNetworkBufferPool(1024, 4096);
  ShuffleOptions options;
  options.credit.segment_size = 4096;
  options.credit.wide_gate_buffers = 256;
  const size_t before = testutil::HeapInUse();
  {
    auto part = ResultPartition::Create("wide", kSubpartitions, pool, options);
    ASSERT_TRUE(part.ok()) << part.status().ToString();
    testutil::ExpectHeapPerItemBelow(before, kSubpartitions, 1024.0,
                                     "heap_bytes_per_subpartition");
    (*part)->Release();
  }
  EXPECT_EQ(pool->available_segments(), pool->total_segments()) << pool->DebugString();
}

}  // namespace
}  // namespace sluice::shuffle
