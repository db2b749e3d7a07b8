// Usage-driven redistribution on real pools (NetworkBufferPoolOptions::redistribution =
// kUsage): a starving pool takes an idle pool's share, Flink's rule (kStatic) does not, lent
// segments are never taken by force, a reported backlog counts as demand, a starving listener
// is served by the rebalance it triggers, and pools resize under concurrent requests and
// recycles (ThreadSanitizer). Every test ends with the leak check (PoolTest).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "buffer/redistribution.h"
#include "pool_test_util.h"
#include "testutil/wait.h"

namespace sluice::buffer {
namespace {

using test_util::ExpectPoolAccounting;
using test_util::PoolOptions;
using namespace std::chrono_literals;

class UsageRedistributionTest : public test_util::PoolTest {};

std::vector<Buffer> TakeAll(LocalBufferPool& pool) {
  std::vector<Buffer> held;
  while (Buffer b = pool.RequestBuffer()) held.push_back(std::move(b));
  return held;
}

TEST_F(UsageRedistributionTest, AStarvingPoolTakesTheIdlePoolsShare) {
  NetworkBufferPool& g = NewGlobalWith(40, RedistributionPolicy::kUsage);
  auto idle = g.CreateLocalBufferPool(PoolOptions("idle", 1, 32)).value();
  auto busy = g.CreateLocalBufferPool(PoolOptions("busy", 1, 32)).value();
  // No demand yet: Flink's rule, 38 spare over headroom 31 and 31.
  EXPECT_EQ(idle->Stats().size, 20u);
  EXPECT_EQ(busy->Stats().size, 20u);

  std::vector<Buffer> held = TakeAll(*busy);
  // The request that found the pool at its size rebalanced: busy sampled peak 20 + starved
  // (20 + 10 + 1 = 31, want 39 -> its max 32), idle wants its min 1; the 7 left over go to the
  // idle pool by Flink's rule.
  EXPECT_EQ(held.size(), 20u);
  EXPECT_EQ(g.Stats().rebalances, 1u);
  EXPECT_EQ(busy->Stats().size, 32u);
  EXPECT_EQ(busy->Stats().want, 32u);
  EXPECT_EQ(idle->Stats().size, 8u);
  std::vector<Buffer> more = TakeAll(*busy);
  EXPECT_EQ(more.size(), 12u);  // up to its max; at its max starvation asks for nothing
  EXPECT_EQ(g.Stats().rebalances, 1u);
  EXPECT_GT(busy->Stats().starved_wait_ns, 0u);  // the request that found none, served later
  ExpectPoolAccounting(*busy);
  ExpectPoolAccounting(*idle);
  held.clear();
  more.clear();
}

TEST_F(UsageRedistributionTest, FlinksRuleKeepsTheIdlePoolsShare) {
  NetworkBufferPool& g = NewGlobalWith(40, RedistributionPolicy::kStatic);
  auto idle = g.CreateLocalBufferPool(PoolOptions("idle", 1, 32)).value();
  auto busy = g.CreateLocalBufferPool(PoolOptions("busy", 1, 32)).value();
  std::vector<Buffer> held = TakeAll(*busy);
  std::vector<Buffer> more = TakeAll(*busy);
  EXPECT_EQ(held.size(), 20u);
  EXPECT_EQ(more.size(), 0u);  // 20 segments stay free for a pool that uses none
  EXPECT_EQ(g.available_segments(), 20u);
  EXPECT_EQ(g.Stats().rebalances, 0u);
  g.Rebalance();  // static: recomputes Flink's rule, same sizes
  EXPECT_EQ(busy->Stats().size, 20u);
  EXPECT_EQ(idle->Stats().size, 20u);
  held.clear();
}

TEST_F(UsageRedistributionTest, LentSegmentsAreNeverTakenByForce) {
  NetworkBufferPool& g = NewGlobalWith(40, RedistributionPolicy::kUsage);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 1, 40)).value();
  std::vector<Buffer> a_held;
  for (int i = 0; i < 30; ++i) a_held.push_back(a->RequestBuffer());
  ASSERT_TRUE(a_held.back().valid());
  auto b = g.CreateLocalBufferPool(PoolOptions("b", 1, 40)).value();
  // A shrank to 20 on paper but keeps the 30 it lent out.
  EXPECT_EQ(a->Stats().size, 20u);
  EXPECT_EQ(a->Stats().owned, 30u);
  std::vector<Buffer> b_held = TakeAll(*b);
  EXPECT_EQ(b_held.size(), 10u);  // only what is free
  EXPECT_EQ(g.Stats().rebalances, 1u);
  // Both busy: A wants 38 (demand 30), B 39 (starved at 20); water-filling gives each 19 of the
  // 38 spare. A still holds its 30.
  EXPECT_EQ(a->Stats().size, 20u);
  EXPECT_EQ(b->Stats().size, 20u);
  EXPECT_EQ(a->Stats().owned, 30u);
  EXPECT_EQ(a->Stats().lent, 30u);
  // A returns 10: they go back to the global pool (A is over its size), and B, waiting for it,
  // queues one at once.
  a_held.resize(20);
  EXPECT_EQ(a->Stats().owned, 20u);
  std::vector<Buffer> b_more = TakeAll(*b);
  EXPECT_EQ(b_more.size(), 10u);
  EXPECT_EQ(b->Stats().owned, 20u);
  ExpectPoolAccounting(*a);
  ExpectPoolAccounting(*b);
  a_held.clear();
  b_held.clear();
  b_more.clear();
}

TEST_F(UsageRedistributionTest, AReportedBacklogIsDemand) {
  NetworkBufferPool& g = NewGlobalWith(40, RedistributionPolicy::kUsage);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 1, 32)).value();
  auto b = g.CreateLocalBufferPool(PoolOptions("b", 1, 32)).value();
  b->SetBacklog(24);
  g.Rebalance();
  EXPECT_EQ(b->Stats().backlog, 24u);
  EXPECT_EQ(b->Stats().demand, 24u);
  EXPECT_EQ(b->Stats().want, 31u);  // 24 + 6 + 1
  // The 8 nobody wants go by Flink's rule over the headroom left (weights 8 and 1): 7 and 1.
  EXPECT_EQ(b->Stats().size, 32u);
  EXPECT_EQ(a->Stats().size, 8u);
  EXPECT_EQ(g.Stats().rebalances, 1u);
  // The backlog gone, the demand halves each round; the want keeps its hysteresis band.
  b->SetBacklog(0);
  g.Rebalance();
  EXPECT_EQ(b->Stats().demand, 12u);
  EXPECT_EQ(b->Stats().want, 16u);  // 12 + 3 + 1: more than 25% below 31
}

class CountingListener final : public BufferListener {
 public:
  bool NotifyBufferAvailable(Buffer& buffer) override {
    std::lock_guard lock(mu_);
    got_.push_back(std::move(buffer));
    return true;
  }
  void NotifyBufferDestroyed() override {}
  size_t count() {
    std::lock_guard lock(mu_);
    return got_.size();
  }
  void Clear() {
    std::lock_guard lock(mu_);
    got_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<Buffer> got_;
};

TEST_F(UsageRedistributionTest, AStarvingListenerIsServedByTheRebalanceItTriggers) {
  NetworkBufferPool& g = NewGlobalWith(40, RedistributionPolicy::kUsage);
  auto idle = g.CreateLocalBufferPool(PoolOptions("idle", 1, 32)).value();
  auto busy = g.CreateLocalBufferPool(PoolOptions("busy", 1, 32)).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 20; ++i) held.push_back(busy->RequestBuffer());
  ASSERT_TRUE(held.back().valid());
  CountingListener listener;
  // Registered (none was queued), then served by the rebalance its starvation started.
  EXPECT_TRUE(busy->AddBufferListener(&listener));
  EXPECT_EQ(listener.count(), 1u);
  EXPECT_EQ(busy->Stats().listeners, 0u);
  EXPECT_EQ(busy->Stats().size, 32u);
  listener.Clear();
  held.clear();
}

// Pools resize while threads request and recycle (some buffers are released by another
// thread), others idle in phases, a thread rebalances, and a pool comes and goes. At the end:
// exact accounting, sizes within bounds and adding up, and every segment home.
TEST_F(UsageRedistributionTest, PoolsResizeUnderConcurrentRequestAndRecycle) {
  constexpr int kPools = 6;
  NetworkBufferPool& g = NewGlobalWith(256, RedistributionPolicy::kUsage);
  std::vector<std::shared_ptr<LocalBufferPool>> pools;
  for (int i = 0; i < kPools; ++i) {
    pools.push_back(g.CreateLocalBufferPool(PoolOptions("p" + std::to_string(i), 2, 128)).value());
  }
  const int iterations = test_util::Scaled(100000);
  std::atomic<bool> stop{false};
  std::mutex handoff_mu;
  std::vector<Buffer> handoff;  // released by the recycler thread
  std::atomic<uint64_t> got{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kPools; ++w) {
    workers.emplace_back([&, w] {
      std::mt19937 rng(w);
      std::vector<Buffer> mine;
      for (int i = 0; i < iterations; ++i) {
        // Busy phases (hold up to 100) and idle phases (hold nothing), per worker.
        const bool busy = ((i / 2000) + w) % 3 != 0;
        if (busy && mine.size() < 100 && rng() % 4 != 0) {
          if (Buffer b = pools[w]->RequestBuffer()) {
            got.fetch_add(1, std::memory_order_relaxed);
            mine.push_back(std::move(b));
          }
        } else if (!mine.empty()) {
          if (rng() % 2 == 0) {
            std::lock_guard lock(handoff_mu);
            handoff.push_back(std::move(mine.back()));
          }
          mine.pop_back();
        }
      }
    });
  }
  std::thread recycler([&] {
    while (!stop.load()) {
      std::vector<Buffer> batch;
      {
        std::lock_guard lock(handoff_mu);
        batch.swap(handoff);
      }
      batch.clear();
      std::this_thread::yield();
    }
  });
  std::thread rebalancer([&] {
    while (!stop.load()) {
      g.Rebalance();
      std::this_thread::sleep_for(1ms);
    }
  });
  std::thread churn([&] {
    while (!stop.load()) {
      auto p = g.CreateLocalBufferPool(PoolOptions("churn", 1, 64));
      if (p.ok()) {
        Buffer b = (*p)->RequestBuffer();
        (void)b;
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  for (auto& t : workers) t.join();
  stop.store(true);
  recycler.join();
  rebalancer.join();
  churn.join();
  handoff.clear();

  EXPECT_GT(got.load(), 0u);
  EXPECT_GT(g.Stats().rebalances, 0u);
  g.Rebalance();  // quiescent: the sizes must add up exactly
  uint64_t sizes = 0, mins = 0, headroom = 0, owned = 0;
  for (const auto& p : pools) {
    ExpectPoolAccounting(*p);
    const LocalBufferPoolStats s = p->Stats();
    EXPECT_EQ(s.lent, 0u) << p->name();
    EXPECT_EQ(s.listeners, 0u) << p->name();
    EXPECT_LE(s.owned, s.size) << p->name();
    sizes += s.size;
    mins += s.min;
    headroom += s.max - s.min;
    owned += s.owned;
  }
  const NetworkBufferPoolStats gs = g.Stats();
  EXPECT_EQ(gs.available + owned, gs.total);
  EXPECT_EQ(sizes, mins + std::min<uint64_t>(gs.total - gs.required, headroom));
  pools.clear();
}

}  // namespace
}  // namespace sluice::buffer
