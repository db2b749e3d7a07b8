// RemoteInputChannel without sockets: a fake PartitionRequestClient stands in for the network,
// the test plays the connection (TakeBufferForPayload, OnBuffer, OnSenderBacklog) and the
// consumer (GetNext, releasing buffers). Checks the credit arithmetic, receiver ids, access
// proofs and the event budget; every test ends with the leak check.
#include "shuffle/remote_input_channel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/auth.h"
#include "shuffle/input_gate.h"
#include "testutil/pools.h"
#include "tests/shuffle/fake_request_client.h"

namespace sluice::shuffle {
namespace {

using testing::FakeRequestClient;

class RemoteInputChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = testutil::MakeNetworkBufferPool(512, 4096);
    options_.credit.segment_size = 4096;
    options_.credit.buffers_per_channel = 2;
    options_.credit.floating_per_gate = 4;
  }
  void TearDown() override {
    channels_.clear();
    if (gate_) gate_->Close();
    gate_.reset();
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << pool_->DebugString();
  }

  // A gate of `n` remote channels, started (exclusive buffers taken, requests "sent").
  void StartGate(uint32_t n, const std::string& token = "") {
    gate_ = std::move(InputGate::Create("g", pool_, options_, n)).value();
    for (uint32_t i = 0; i < n; ++i) {
      auto ch = std::make_shared<RemoteInputChannel>(gate_.get(), i, &client_,
                                                     transport::Endpoint{"127.0.0.1", 9}, "p", i,
                                                     token);
      channels_.push_back(ch);
      gate_->AddChannel(ch);
    }
    ASSERT_TRUE(gate_->Start().ok());
    ASSERT_EQ(client_.requests.load(), static_cast<int>(n));
  }

  // The connection's part: a data BufferResponse of `bytes` bytes arrives for channel `i`.
  Status Deliver(uint32_t i, int32_t seq, int32_t backlog, uint32_t bytes = 16) {
    buffer::Buffer b = channels_[i]->TakeBufferForPayload();
    EXPECT_TRUE(b.valid()) << "no credited buffer for sequence " << seq;
    if (!b) return InternalError("no buffer");
    b.SetSize(bytes);
    bool notify_later = false;
    Status st = channels_[i]->OnBuffer(std::move(b), seq, backlog, &notify_later);
    channels_[i]->NotifyDeferred();
    return st;
  }

  // The consumer's part: everything queued on the gate, held (not yet released).
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
};

TEST_F(RemoteInputChannelTest, UnannouncedCreditAccumulatesAndIsTakenOnce) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  EXPECT_EQ(ch.initial_credit(), 2);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 0);  // the request carries the exclusive buffers
  // Each buffer received leaves fewer free than required (backlog 0 + 2 exclusive): the
  // channel takes a floating buffer for it, and the two credits so gained notify once.
  ASSERT_TRUE(Deliver(0, 0, 0).ok());
  ASSERT_TRUE(Deliver(0, 1, 0).ok());
  EXPECT_EQ(client_.credit_notes.load(), 1);
  EXPECT_EQ(ch.AvailableBuffers(), 2u);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 2);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 0);
  // The consumer returns both: the exclusive one replaces the surplus floating one (same
  // credit), the floating one goes to the gate. No new credit, no notification.
  ConsumeAll().clear();
  EXPECT_EQ(client_.credit_notes.load(), 1);
  EXPECT_EQ(ch.AvailableBuffers(), 2u);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 0);
  EXPECT_EQ(gate_->floating_pool()->Stats().lent, 0u);
  // Credit gained after a take notifies again.
  ch.OnSenderBacklog(2);
  EXPECT_EQ(client_.credit_notes.load(), 2);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 2);
}

TEST_F(RemoteInputChannelTest, BacklogAsksFloatingPoolForBacklogPlusExclusive) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  ch.OnSenderBacklog(3);
  EXPECT_EQ(ch.AvailableBuffers(), 5u);  // 3 backlog + 2 exclusive
  EXPECT_EQ(gate_->floating_pool()->Stats().lent, 3u);
  EXPECT_EQ(client_.credit_notes.load(), 1);  // three buffers gained, one notification
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 3);
  // More backlog than the floating pool holds: it takes what there is (max 4) and waits.
  ch.OnSenderBacklog(10);
  EXPECT_EQ(ch.AvailableBuffers(), 6u);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 1);
  EXPECT_EQ(ch.State().floating, 4u);
}

TEST_F(RemoteInputChannelTest, SurplusFloatingBufferGoesBackToTheGate) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  ch.OnSenderBacklog(1);  // holds 2 exclusive + 1 floating
  ASSERT_EQ(ch.TakeUnannouncedCredit(), 1);
  // Two buffers arrive (the floating one is used first), the last says backlog 0.
  ASSERT_TRUE(Deliver(0, 0, 1).ok());
  ASSERT_TRUE(Deliver(0, 1, 0).ok());
  std::vector<buffer::Buffer> held = ConsumeAll();
  ASSERT_EQ(held.size(), 2u);
  // Required is now 2 (exclusive only); it holds 1 exclusive free, so it took a floating one.
  EXPECT_EQ(ch.AvailableBuffers(), 2u);
  const int32_t gained = ch.TakeUnannouncedCredit();
  EXPECT_EQ(gained, 1);
  const uint32_t lent_before = gate_->floating_pool()->Stats().lent;
  held.clear();  // the exclusive one returns and replaces the floating one: no new credit
  EXPECT_EQ(ch.AvailableBuffers(), 2u);
  EXPECT_EQ(ch.TakeUnannouncedCredit(), 0);
  EXPECT_LT(gate_->floating_pool()->Stats().lent, lent_before);
  EXPECT_EQ(ch.State().floating, 0u);
}

// Plays a sender that uses every credit it was given and a consumer that returns buffers at
// various points; the credit the sender holds never exceeds the empty buffers the channel has.
TEST_F(RemoteInputChannelTest, CreditNeverExceedsTheBuffersHeld) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  int64_t sender_credit = ch.initial_credit();
  int32_t seq = 0;
  std::vector<buffer::Buffer> held;
  for (int round = 0; round < 200; ++round) {
    const int32_t backlog = (round * 7) % 6;
    // The sender spends its credit (at most 3 buffers per round).
    for (int k = 0; k < 3 && sender_credit > 0; ++k, --sender_credit) {
      ASSERT_TRUE(Deliver(0, seq++, backlog).ok());
    }
    if (sender_credit == 0) ch.OnSenderBacklog(backlog);
    for (auto& b : ConsumeAll()) held.push_back(std::move(b));
    if (round % 3 != 0) held.clear();  // the consumer returns buffers most rounds
    sender_credit += ch.TakeUnannouncedCredit();  // the AddCredit
    ASSERT_LE(sender_credit, static_cast<int64_t>(ch.AvailableBuffers())) << "round " << round;
    ASSERT_GE(sender_credit, 0);
  }
  held.clear();
}

TEST_F(RemoteInputChannelTest, SequenceGapFailsTheChannel) {
  StartGate(1);
  ASSERT_TRUE(Deliver(0, 0, 0).ok());
  Status st = Deliver(0, 2, 0);
  EXPECT_EQ(st.code(), StatusCode::kProtocolError);
  EXPECT_NE(st.message().find("expected buffer sequence number 1 but got 2 (a gap)"),
            std::string::npos)
      << st.message();
  auto n = gate_->PollNext();
  // The first buffer, or the error, depending on the order of notifications; the error comes.
  while (n.ok() && n->has_value()) n = gate_->PollNext();
  ASSERT_FALSE(n.ok());
  EXPECT_NE(n.status().message().find("remote channel 0 of gate 'g'"), std::string::npos);
}

TEST_F(RemoteInputChannelTest, ReceiverIdsAreRandomNonZeroAndUnique) {
  StartGate(64);
  std::set<uint64_t> ids;
  uint32_t consecutive = 0;
  for (size_t i = 0; i < channels_.size(); ++i) {
    const uint64_t id = channels_[i]->receiver_id();
    EXPECT_NE(id, 0u);
    ids.insert(id);
    if (i > 0 && id == channels_[i - 1]->receiver_id() + 1) ++consecutive;
  }
  EXPECT_EQ(ids.size(), channels_.size());
  EXPECT_EQ(consecutive, 0u) << "receiver ids look sequential";
  // Over the whole 64-bit range: at least one id has a high bit set.
  EXPECT_TRUE(std::any_of(ids.begin(), ids.end(), [](uint64_t id) { return id >> 48 != 0; }));
}

TEST_F(RemoteInputChannelTest, AccessTokenGivesThePartitionProof) {
  const std::string token = auth::MakeJobToken();
  StartGate(2, token);
  for (uint32_t i = 0; i < 2; ++i) {
    const auth::Proof want = auth::MakePartitionProof(token, "p", i);
    std::span<const uint8_t> got = channels_[i]->access_proof();
    ASSERT_EQ(got.size(), want.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
  }
  auto plain = std::make_shared<RemoteInputChannel>(gate_.get(), 2, &client_,
                                                    transport::Endpoint{"127.0.0.1", 9}, "p", 0);
  EXPECT_TRUE(plain->access_proof().empty());
}

TEST_F(RemoteInputChannelTest, EventBudgetIsRefundedWhenTakenOrDropped) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  const size_t limit = 4 * EventBudget::ChargeFor(100);
  auto budget = std::make_shared<EventBudget>();
  ch.SetEventBudget(budget);
  for (int32_t seq = 0; seq < 3; ++seq) {
    ASSERT_TRUE(budget->TryCharge(100, limit));  // what the connection does before the read
    buffer::Buffer e = buffer::AllocateUnpooled(100, buffer::DataType::kEvent);
    e.SetSize(100);
    bool later = false;
    ASSERT_TRUE(ch.OnBuffer(std::move(e), seq, 0, &later).ok());
    ch.NotifyDeferred();
  }
  EXPECT_EQ(budget->used(), 3 * EventBudget::ChargeFor(100));
  EXPECT_TRUE(budget->TryCharge(100, limit));
  EXPECT_FALSE(budget->TryCharge(0, limit)) << "the budget holds four events of 100 bytes";
  EXPECT_TRUE(budget->TryCharge(0, limit + EventBudget::kPerChannelAllowance));
  budget->Refund(0);
  budget->Refund(100);
  auto n = gate_->PollNext();
  ASSERT_TRUE(n.ok() && n->has_value());
  EXPECT_EQ((*n)->buffer.type(), buffer::DataType::kEvent);
  EXPECT_EQ(budget->used(), 2 * EventBudget::ChargeFor(100));  // taken by the consumer
  ch.Release();  // the other two are dropped
  EXPECT_EQ(budget->used(), 0u);
  EXPECT_EQ(client_.cancels.load(), 1);
}

TEST_F(RemoteInputChannelTest, ReleaseGivesBackBuffersStillWithTheConsumer) {
  StartGate(2);
  channels_[0]->OnSenderBacklog(2);
  ASSERT_TRUE(Deliver(0, 0, 2).ok());
  ASSERT_TRUE(Deliver(1, 0, 0).ok());
  std::vector<buffer::Buffer> held = ConsumeAll();
  ASSERT_EQ(held.size(), 2u);
  gate_->Close();  // releases both channels while the consumer holds a buffer of each
  EXPECT_EQ(client_.cancels.load(), 2);
  EXPECT_LT(pool_->available_segments(), pool_->total_segments());
  held.clear();  // now every segment is home (TearDown checks)
}

// Buffer debloating: a size asked by the gate is kept pending and announced once (with the
// credit flush the client is notified for); after a (retried) PartitionRequest the last size
// is announced again; nothing after Release.
TEST_F(RemoteInputChannelTest, BufferSizeIsAnnouncedOnceAndAgainAfterARequest) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(), 0u);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(/*again=*/true), 0u) << "never asked: nothing";
  const int notes = client_.credit_notes.load();
  ch.AnnounceBufferSize(3000);
  EXPECT_EQ(client_.credit_notes.load(), notes + 1);
  ch.AnnounceBufferSize(0);  // not a size: ignored
  EXPECT_EQ(client_.credit_notes.load(), notes + 1);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(), 3000u);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(), 0u) << "announced once";
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(/*again=*/true), 3000u);
  ch.AnnounceBufferSize(5000);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(/*again=*/true), 5000u);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(), 0u) << "taken with the request";
  ch.Release();
  ch.AnnounceBufferSize(7000);
  EXPECT_EQ(client_.credit_notes.load(), notes + 2);
  EXPECT_EQ(ch.TakeBufferSizeAnnouncement(), 0u);
}

// Debloating's divisor: a channel's data buffers in flight are the ones received and not yet
// taken plus the sender's last reported backlog; a finished or released channel has none.
TEST_F(RemoteInputChannelTest, InFlightBuffersAreReceivedPlusTheSendersBacklog) {
  StartGate(1);
  RemoteInputChannel& ch = *channels_[0];
  EXPECT_EQ(ch.InFlightBuffers(), std::optional<uint32_t>(0));
  ASSERT_TRUE(Deliver(0, 0, 3).ok());
  ASSERT_TRUE(Deliver(0, 1, 2).ok());
  EXPECT_EQ(ch.InFlightBuffers(), std::optional<uint32_t>(4));  // 2 received + backlog 2
  std::vector<buffer::Buffer> held = ConsumeAll();
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(ch.InFlightBuffers(), std::optional<uint32_t>(2));  // taken: only the backlog
  ch.OnSenderBacklog(0);
  EXPECT_EQ(ch.InFlightBuffers(), std::optional<uint32_t>(0));
  held.clear();
  ch.Release();
  EXPECT_EQ(ch.InFlightBuffers(), std::nullopt);
}

// The gate's half: at the end of each debloating window it averages its remote channels'
// counts and the debloater divides by that (+1 for the producer's partly filled buffer).
TEST_F(RemoteInputChannelTest, GateSplitsTheDebloatedSizeOverTheCountedBuffers) {
  options_.debloat = true;
  options_.debloat_period = std::chrono::milliseconds(0);  // every GetNext ends a window
  StartGate(2);
  EXPECT_EQ(gate_->Stats().debloat_in_flight_buffers, 0) << "nothing counted yet";
  ASSERT_TRUE(Deliver(0, 0, 3).ok());
  ASSERT_TRUE(Deliver(0, 1, 3).ok());
  ASSERT_TRUE(Deliver(1, 0, 0).ok());
  // Channel 0: 2 received + backlog 3; channel 1: 1 received. (5 + 1) / 2 + 1 = 4.
  auto first = gate_->PollNext();
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_DOUBLE_EQ(gate_->Stats().debloat_in_flight_buffers, 4);
  // One taken (from either channel): 5 left over 2 channels -> 2.5, smoothed with 3 -> 2.75.
  auto second = gate_->PollNext();
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_DOUBLE_EQ(gate_->Stats().debloat_in_flight_buffers, 3.75);
}

// Redistribution's demand signal: the floating buffers the channels' backlogs want and do not
// hold reach the gate's floating pool as its reported backlog, and go away when the buffers
// are granted, the backlog is gone or the channel is released.
TEST_F(RemoteInputChannelTest, UncoveredBacklogIsTheFloatingPoolsReportedBacklog) {
  StartGate(2);
  const auto& floating = gate_->floating_pool();
  EXPECT_EQ(floating->Stats().backlog, 0u);
  // Backlog 3 on channel 0: the pool (4 floating) covers it; nothing is left wanting.
  channels_[0]->OnSenderBacklog(3);
  EXPECT_EQ(floating->Stats().lent, 3u);
  EXPECT_EQ(gate_->floating_demand(), 0);
  EXPECT_EQ(floating->Stats().backlog, 0u);
  // Backlog 8 on channel 1 (at most max_buffers_per_channel = 10 with its 2 exclusive): the
  // one floating buffer left covers 1 of 8, so 7 are wanted.
  channels_[1]->OnSenderBacklog(8);
  EXPECT_EQ(floating->Stats().lent, 4u);
  EXPECT_EQ(gate_->floating_demand(), 7);
  EXPECT_EQ(floating->Stats().backlog, 7u);
  // Channel 0's sender drained: its surplus stays until consumed, its want is still 0; channel
  // 1's backlog shrinks to 2 (it holds 3 free, wants 4: 1 wanted).
  channels_[0]->OnSenderBacklog(0);
  channels_[1]->OnSenderBacklog(2);
  EXPECT_EQ(gate_->floating_demand(), 1);
  EXPECT_EQ(floating->Stats().backlog, 1u);
  // Released: its share is taken back.
  channels_[1]->Release();
  EXPECT_EQ(gate_->floating_demand(), 0);
  EXPECT_EQ(floating->Stats().backlog, 0u);
}

}  // namespace
}  // namespace sluice::shuffle
