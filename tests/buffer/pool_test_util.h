// Helpers for the buffer tests (not API): sanitizer-aware scaling, a fixture that creates
// NetworkBufferPools and ends every test with the leak check, and small recyclers/listeners.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "testutil/pools.h"
#include "testutil/sanitizer.h"

namespace sluice::buffer::test_util {

// Iteration counts for stress tests: halved under a sanitizer (testutil/sanitizer.h).
inline int Scaled(int n) { return ::sluice::testutil::SanitizerScaled(n, 2); }

inline constexpr uint32_t kSegment = 4096;

inline std::shared_ptr<NetworkBufferPool> MakeGlobal(uint32_t segments,
                                                     uint32_t segment_size = kSegment) {
  return ::sluice::testutil::MakeNetworkBufferPool(segments, segment_size);
}

inline LocalBufferPoolOptions PoolOptions(std::string name, uint32_t min, uint32_t max) {
  LocalBufferPoolOptions o;
  o.name = std::move(name);
  o.min_segments = min;
  o.max_segments = max;
  return o;
}

// Fixture: every global pool made through NewGlobal() is checked after the test body (all
// local pools and buffers of the test are gone by then): every segment back in the free list,
// nothing reserved, no pool alive.
class PoolTest : public ::testing::Test {
 protected:
  NetworkBufferPool& NewGlobal(uint32_t segments, uint32_t segment_size = kSegment) {
    globals_.push_back(MakeGlobal(segments, segment_size));
    return *globals_.back();
  }
  std::shared_ptr<NetworkBufferPool> SharedGlobal(size_t i = 0) { return globals_.at(i); }
  // A global pool with a given redistribution policy (the default is kUsage).
  NetworkBufferPool& NewGlobalWith(uint32_t segments, RedistributionPolicy policy,
                                   uint32_t segment_size = kSegment) {
    NetworkBufferPoolOptions o;
    o.segment_size = segment_size;
    o.network_memory = static_cast<uint64_t>(segments) * segment_size;
    o.redistribution = policy;
    auto pool = NetworkBufferPool::Create(o);
    EXPECT_TRUE(pool.ok()) << pool.status().ToString();
    globals_.push_back(std::move(pool).value());
    return *globals_.back();
  }

  void TearDown() override {
    for (const auto& g : globals_) ExpectNoLeaks(*g);
  }

  static void ExpectNoLeaks(const NetworkBufferPool& g) {
    const NetworkBufferPoolStats s = g.Stats();
    EXPECT_EQ(s.available, s.total) << "leak check: " << g.DebugString();
    EXPECT_EQ(s.exclusive, 0u) << g.DebugString();
    EXPECT_EQ(s.pooled, 0u) << g.DebugString();
    EXPECT_EQ(s.required, 0u) << g.DebugString();
    EXPECT_EQ(s.local_pools, 0u) << g.DebugString();
  }

  std::vector<std::shared_ptr<NetworkBufferPool>> globals_;
};

// Per-pool accounting at a quiescent point.
inline void ExpectPoolAccounting(const LocalBufferPool& pool) {
  const LocalBufferPoolStats s = pool.Stats();
  EXPECT_EQ(s.owned, s.queued + s.lent) << pool.name();
  EXPECT_LE(s.overdraft, s.lent) << pool.name();
  EXPECT_GE(s.size, s.min) << pool.name();
  EXPECT_LE(s.size, s.max) << pool.name();
}

// A recycler that counts and forwards to the global free list.
class CountingRecycler final : public BufferRecycler {
 public:
  explicit CountingRecycler(NetworkBufferPool& g) : global_(g) {}
  void Recycle(MemorySegment* segment) override {
    recycled_.fetch_add(1);
    last_ = segment;
    global_.RecycleSegment(segment);
  }
  int recycled() const { return recycled_.load(); }
  MemorySegment* last() const { return last_; }

 private:
  NetworkBufferPool& global_;
  std::atomic<int> recycled_{0};
  MemorySegment* last_ = nullptr;
};

}  // namespace sluice::buffer::test_util
