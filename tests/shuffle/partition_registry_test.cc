// Tests of PartitionRegistry. Every test ends with the leak check.
#include "shuffle/partition_registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;

class PartitionRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { global_ = testutil::MakeNetworkBufferPool(256, 4096); }
  void TearDown() override {
    const buffer::NetworkBufferPoolStats s = global_->Stats();
    EXPECT_EQ(s.available, s.total) << "leak check: " << global_->DebugString();
    EXPECT_EQ(s.local_pools, 0u) << global_->DebugString();
  }
  std::shared_ptr<ResultPartition> NewPartition(const std::string& id) {
    ShuffleOptions o;
    o.credit.segment_size = 4096;
    o.buffer_timeout = kBufferTimeoutOff;
    return std::move(ResultPartition::Create(id, 2, global_, o)).value();
  }
  std::shared_ptr<buffer::NetworkBufferPool> global_;
};

TEST_F(PartitionRegistryTest, RegisterLookupDuplicateUnregister) {
  PartitionRegistry reg;
  std::shared_ptr<ResultPartition> a = NewPartition("job1/a");
  std::shared_ptr<ResultPartition> b = NewPartition("job1/b");
  EXPECT_EQ(reg.Lookup("job1/a"), nullptr);
  ASSERT_TRUE(reg.Register(a).ok());
  ASSERT_TRUE(reg.Register(b).ok());
  EXPECT_EQ(reg.Lookup("job1/a"), a);
  EXPECT_EQ(reg.Lookup("job1/b"), b);
  EXPECT_EQ(reg.size(), 2u);
  EXPECT_EQ(reg.Ids(), (std::vector<std::string>{"job1/a", "job1/b"}));

  std::shared_ptr<ResultPartition> dup = NewPartition("job1/a");
  const Status s = reg.Register(dup);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("job1/a"), std::string::npos) << s.message();
  EXPECT_EQ(reg.Lookup("job1/a"), a) << "the first registration stays";
  EXPECT_EQ(reg.Register(nullptr).code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(reg.Unregister("job1/a"), a);
  EXPECT_EQ(reg.Unregister("job1/a"), nullptr);
  EXPECT_EQ(reg.Lookup("job1/a"), nullptr);
  ASSERT_TRUE(reg.Register(dup).ok()) << "the id is free again";
  for (auto& p : {a, b, dup}) p->Release();
}

TEST_F(PartitionRegistryTest, WaitForPartitionRegisteredLater) {
  PartitionRegistry reg;
  EXPECT_EQ(reg.WaitFor("late", 10ms), nullptr) << "times out";
  std::shared_ptr<ResultPartition> p = NewPartition("late");
  auto waiter = std::async(std::launch::async, [&] { return reg.WaitFor("late", 20s); });
  std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(reg.Register(p).ok());
  ASSERT_EQ(waiter.wait_for(20s), std::future_status::ready);
  EXPECT_EQ(waiter.get(), p);
  EXPECT_EQ(reg.WaitFor("late", 0ms), p) << "already there: no wait";
  EXPECT_EQ(reg.WaitFor("late", std::chrono::milliseconds::max()), p) << "no overflow";
  p->Release();
}

TEST_F(PartitionRegistryTest, OnRegisteredRunsOnRegisteringThread) {
  PartitionRegistry reg;
  std::shared_ptr<ResultPartition> p = NewPartition("parked");
  std::atomic<int> calls{0};
  std::thread::id ran_on;
  std::shared_ptr<ResultPartition> got;
  const uint64_t token = reg.OnRegistered("parked", [&](std::shared_ptr<ResultPartition> rp) {
    ++calls;
    ran_on = std::this_thread::get_id();
    got = std::move(rp);
    // Callbacks run outside the lock: calling the registry is fine.
    EXPECT_NE(reg.Lookup("parked"), nullptr);
  });
  EXPECT_NE(token, 0u);
  EXPECT_EQ(reg.pending_callbacks(), 1u);
  std::thread::id registered_on;
  std::thread registrar([&] {
    registered_on = std::this_thread::get_id();
    ASSERT_TRUE(reg.Register(p).ok());
  });
  registrar.join();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(ran_on, registered_on);
  EXPECT_EQ(got, p);
  EXPECT_EQ(reg.pending_callbacks(), 0u);
  EXPECT_FALSE(reg.CancelCallback(token)) << "it has run";

  // Already registered: runs at once, on the caller's thread, token 0.
  int immediate = 0;
  EXPECT_EQ(reg.OnRegistered("parked",
                             [&](std::shared_ptr<ResultPartition> rp) {
                               EXPECT_EQ(rp, p);
                               ++immediate;
                             }),
            0u);
  EXPECT_EQ(immediate, 1);
  got.reset();
  p->Release();
}

TEST_F(PartitionRegistryTest, CancelCallback) {
  PartitionRegistry reg;
  int calls = 0;
  const uint64_t t1 = reg.OnRegistered("x", [&](std::shared_ptr<ResultPartition>) { ++calls; });
  const uint64_t t2 = reg.OnRegistered("x", [&](std::shared_ptr<ResultPartition>) { calls += 10; });
  EXPECT_NE(t1, t2);
  EXPECT_TRUE(reg.CancelCallback(t1));
  EXPECT_FALSE(reg.CancelCallback(t1));
  EXPECT_FALSE(reg.CancelCallback(12345));
  std::shared_ptr<ResultPartition> p = NewPartition("x");
  ASSERT_TRUE(reg.Register(p).ok());
  EXPECT_EQ(calls, 10) << "only the callback that was not cancelled ran";
  EXPECT_FALSE(reg.CancelCallback(t2));
  p->Release();
}

TEST_F(PartitionRegistryTest, ConcurrentRegisterLookupAndCallbacks) {
  PartitionRegistry reg;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20;
  std::atomic<int> callbacks{0};
  std::vector<uint64_t> tokens;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      tokens.push_back(reg.OnRegistered("p" + std::to_string(t) + "-" + std::to_string(i),
                                        [&](std::shared_ptr<ResultPartition>) { ++callbacks; }));
    }
  }
  std::vector<std::shared_ptr<ResultPartition>> parts(kThreads * kPerThread);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      parts[t * kPerThread + i] = NewPartition("p" + std::to_string(t) + "-" + std::to_string(i));
    }
  }
  std::atomic<int> found{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i)
        ASSERT_TRUE(reg.Register(parts[t * kPerThread + i]).ok());
    });
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (reg.WaitFor("p" + std::to_string(t) + "-" + std::to_string(i), 20s)) ++found;
      }
    });
  }
  // Cancel some callbacks while registrations run; each one either ran or was cancelled.
  int cancelled = 0;
  for (size_t i = 0; i < tokens.size(); i += 3) cancelled += reg.CancelCallback(tokens[i]) ? 1 : 0;
  for (auto& th : threads) th.join();
  EXPECT_EQ(found.load(), kThreads * kPerThread);
  EXPECT_EQ(callbacks.load() + cancelled, kThreads * kPerThread);
  EXPECT_EQ(reg.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(reg.pending_callbacks(), 0u);
  for (auto& p : parts) {
    reg.Unregister(p->id());
    p->Release();
  }
  EXPECT_EQ(reg.size(), 0u);
}

}  // namespace
}  // namespace sluice::shuffle
