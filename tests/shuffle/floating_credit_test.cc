// FloatingCreditScheduler (the round-robin policy alone) and FloatingCreditDispatcher (real
// buffers from a LocalBufferPool, fake receivers): fairness, conservation of credit, no grant
// after Close, and the leak check.
#include "shuffle/floating_credit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

TEST(FloatingCreditSchedulerTest, NothingWantedNothingGranted) {
  FloatingCreditScheduler s(4);
  EXPECT_FALSE(s.Grant().has_value());
  s.SetWanted(2, 0);
  EXPECT_FALSE(s.Grant().has_value());
  EXPECT_EQ(s.waiting(), 0u);
  EXPECT_EQ(s.grants(), 0u);
}

TEST(FloatingCreditSchedulerTest, RoundRobinNotFirstCome) {
  FloatingCreditScheduler s(4);
  s.SetWanted(0, 3);  // first come, wants the most
  s.SetWanted(1, 1);
  s.SetWanted(3, 2);
  std::vector<uint32_t> order;
  while (auto g = s.Grant()) order.push_back(*g);
  EXPECT_EQ(order, (std::vector<uint32_t>{0, 1, 3, 0, 3, 0}));
  EXPECT_EQ(s.total_wanted(), 0u);
  EXPECT_EQ(s.grants(), 6u);
}

TEST(FloatingCreditSchedulerTest, WantDroppedToZeroIsSkippedAndRejoinKeepsItsPlace) {
  FloatingCreditScheduler s(3);
  s.SetWanted(0, 2);
  s.SetWanted(1, 2);
  s.SetWanted(2, 2);
  EXPECT_EQ(s.Grant(), 0u);  // round: 1 2 0
  s.SetWanted(1, 0);         // its backlog was met another way...
  s.SetWanted(1, 1);         // ...and it wants again before its turn: same place, not the tail
  EXPECT_EQ(s.Grant(), 1u);  // round: 2 0
  s.SetWanted(2, 0);         // skipped when its turn comes
  EXPECT_EQ(s.Grant(), 0u);
  EXPECT_FALSE(s.Grant().has_value());
  EXPECT_EQ(s.waiting(), 0u);
  EXPECT_EQ(s.total_wanted(), 0u);
  s.SetWanted(2, 1);  // left the round when skipped: joins the tail
  EXPECT_EQ(s.Grant(), 2u);
  EXPECT_EQ(s.grants(), 4u);
}

// Property: under random want updates, every channel that wants a buffer is granted one within
// N grants (N = channels wanting one when it started waiting), and the grants plus the wants
// left equal everything ever wanted (no credit lost or double counted).
TEST(FloatingCreditSchedulerTest, EveryWaitingChannelServedWithinOneRound) {
  constexpr uint32_t kChannels = 257;
  FloatingCreditScheduler s(kChannels);
  std::mt19937 rng(7);
  std::vector<int64_t> waited(kChannels, -1);  // grants since it started waiting, -1: not
  std::vector<uint32_t> bound(kChannels, 0);
  uint64_t grants = 0;
  std::vector<uint32_t> want(kChannels, 0);
  for (int step = 0; step < 200000; ++step) {
    if (rng() % 3 == 0) {
      const uint32_t c = rng() % kChannels;
      const uint32_t w = rng() % 11;  // a new backlog-driven want (absolute)
      want[c] = w;
      s.SetWanted(c, w);
      if (w > 0 && waited[c] < 0) {
        waited[c] = 0;
        bound[c] = s.waiting();
      } else if (w == 0) {
        waited[c] = -1;
      }
    } else if (auto g = s.Grant()) {
      ++grants;
      ASSERT_GT(want[*g], 0u) << "granted a channel that wanted nothing";
      --want[*g];
      for (uint32_t c = 0; c < kChannels; ++c) {
        if (waited[c] >= 0) ++waited[c];
      }
      ASSERT_LE(static_cast<uint64_t>(waited[*g]), bound[*g]) << "channel " << *g;
      waited[*g] = want[*g] > 0 ? 0 : -1;
      bound[*g] = s.waiting();
    }
    ASSERT_EQ(s.grants(), grants);
    uint64_t sum = 0;
    if (step % 1000 == 0) {
      for (uint32_t c = 0; c < kChannels; ++c) sum += want[c];
      ASSERT_EQ(s.total_wanted(), sum);
      for (uint32_t c = 0; c < kChannels; ++c) ASSERT_EQ(s.wanted(c), want[c]);
    }
  }
}

// A receiver that takes up to `limit` buffers and keeps them. Thread-safe.
class FakeReceiver final : public FloatingCreditReceiver {
 public:
  FakeReceiver(FloatingCreditDispatcher* d, uint32_t index) : d_(d), index_(index) {}
  void Want(uint32_t n) {
    {
      std::lock_guard lock(mu_);
      limit_ = static_cast<uint32_t>(held_.size()) + n;
      d_->SetWanted(index_, n);  // under the receiver's lock, as RemoteInputChannel does
    }
    d_->Pump();
  }
  bool OfferFloating(buffer::Buffer& b) override {
    std::lock_guard lock(mu_);
    ++offers_;
    if (held_.size() >= limit_) {
      d_->SetWanted(index_, 0);
      return false;
    }
    held_.push_back(std::move(b));
    d_->SetWanted(index_, limit_ - static_cast<uint32_t>(held_.size()));
    return true;
  }
  // Returns every held buffer to the pool (outside the lock).
  size_t ReturnAll() {
    std::vector<buffer::Buffer> out;
    {
      std::lock_guard lock(mu_);
      out.swap(held_);
      limit_ = 0;
      d_->SetWanted(index_, 0);
    }
    return out.size();
  }
  size_t held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }

 private:
  FloatingCreditDispatcher* const d_;
  const uint32_t index_;
  std::mutex mu_;
  std::vector<buffer::Buffer> held_;
  uint32_t limit_ = 0;
  uint32_t offers_ = 0;
};

class FloatingCreditDispatcherTest : public ::testing::Test {
 protected:
  void Make(uint32_t budget, uint32_t channels) {
    global_ = testutil::MakeNetworkBufferPool(64, 4096);
    buffer::LocalBufferPoolOptions o;
    o.name = "wide gate floating";
    o.min_segments = budget;
    o.max_segments = budget;
    pool_ = std::move(global_->CreateLocalBufferPool(o)).value();
    d_ = std::make_shared<FloatingCreditDispatcher>(pool_, channels);
    for (uint32_t i = 0; i < channels; ++i) {
      receivers_.push_back(std::make_unique<FakeReceiver>(d_.get(), i));
      d_->Register(i, receivers_.back().get());
    }
  }
  void TearDown() override {
    if (d_) d_->Close();
    for (auto& r : receivers_) r->ReturnAll();
    if (pool_) pool_->Destroy();
    pool_.reset();
    d_.reset();
    if (global_) testutil::ExpectAllSegmentsBack(*global_, "floating credit test");
  }
  std::shared_ptr<buffer::NetworkBufferPool> global_;
  std::shared_ptr<buffer::LocalBufferPool> pool_;
  std::shared_ptr<FloatingCreditDispatcher> d_;
  std::vector<std::unique_ptr<FakeReceiver>> receivers_;
};

TEST_F(FloatingCreditDispatcherTest, BudgetSharedRoundRobinThenReturnedBuffersGoToWaiters) {
  Make(4, 8);
  receivers_[0]->Want(10);  // first come: takes the whole budget, nobody else wants yet
  EXPECT_EQ(receivers_[0]->held(), 4u);
  for (uint32_t i = 1; i < 8; ++i) receivers_[i]->Want(1);
  EXPECT_EQ(d_->waiting(), 8u);  // channel 0 still wants 6
  // Channel 0 returns its four: they go round robin to the channels waiting longest (1..4),
  // not back to channel 0, although it asked first.
  EXPECT_EQ(receivers_[0]->ReturnAll(), 4u);
  receivers_[0]->Want(6);
  for (uint32_t i = 1; i <= 4; ++i) EXPECT_EQ(receivers_[i]->held(), 1u) << i;
  EXPECT_EQ(receivers_[0]->held(), 0u);
  for (uint32_t i = 5; i < 8; ++i) EXPECT_EQ(receivers_[i]->held(), 0u) << i;
  for (uint32_t i = 1; i <= 4; ++i) receivers_[i]->ReturnAll();
  for (uint32_t i = 5; i < 8; ++i) EXPECT_EQ(receivers_[i]->held(), 1u) << i;
  EXPECT_EQ(receivers_[0]->held(), 1u);  // channel 0 rejoined at the tail, after 5..7
  EXPECT_EQ(pool_->Stats().lent, 4u);
}

TEST_F(FloatingCreditDispatcherTest, NoGrantAfterClose) {
  Make(2, 2);
  d_->Close();
  receivers_[0]->Want(1);
  EXPECT_EQ(receivers_[0]->held(), 0u);
  EXPECT_EQ(d_->grants(), 0u);
}

// Many threads want and return buffers at once; every buffer ends in a receiver or the pool
// (never two), and channels that keep wanting are all served. TSan runs it (concurrency).
TEST_F(FloatingCreditDispatcherTest, ConcurrentWantAndReturnConservesBuffers) {
  constexpr uint32_t kChannels = 64;
  Make(8, kChannels);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<std::atomic<uint64_t>> served(kChannels);
  for (uint32_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!stop.load()) {
        const uint32_t c = (rng() % (kChannels / 4)) * 4 + t;  // each thread its own channels
        served[c] += receivers_[c]->ReturnAll();
        receivers_[c]->Want(1 + rng() % 3);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& th : threads) th.join();
  size_t held = 0;
  for (auto& r : receivers_) held += r->held();
  const buffer::LocalBufferPoolStats st = pool_->Stats();
  EXPECT_EQ(held, st.lent);
  EXPECT_LE(held, 8u);
  uint32_t never = 0;
  for (uint32_t c = 0; c < kChannels; ++c) never += served[c].load() == 0 ? 1 : 0;
  EXPECT_EQ(never, 0u) << "channels never granted a buffer";
}

}  // namespace
}  // namespace sluice::shuffle
