// NetworkBufferPool: option validation, admission, exclusive segments, the raw free list.
#include "buffer/network_buffer_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <random>
#include <set>
#include <thread>

#include "buffer/local_buffer_pool.h"
#include "buffer/redistribution.h"
#include "buffer_test_death.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using test_util::PoolOptions;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class NetworkBufferPoolTest : public test_util::PoolTest {};

// --- Options ---

NetworkBufferPoolOptions Opts(uint64_t memory, uint32_t segment) {
  NetworkBufferPoolOptions o;
  o.network_memory = memory;
  o.segment_size = segment;
  return o;
}

TEST(NetworkBufferPoolOptionsTest, DefaultsAreValid) {
  EXPECT_TRUE(ValidateOptions(NetworkBufferPoolOptions{}).ok());
  EXPECT_TRUE(ValidateOptions(Opts(4096, 4096)).ok());
  EXPECT_TRUE(ValidateOptions(Opts(1 << 20, 1 << 20)).ok());
}

TEST(NetworkBufferPoolOptionsTest, SegmentSizeMustBeAPowerOfTwoFrom4KiBTo1MiB) {
  for (uint32_t bad : {0u, 3000u, 4095u, 2048u, 1024u, 4097u, 12288u, 2u << 20, 1u << 31}) {
    const Status st = ValidateOptions(Opts(64ull << 20, bad));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("segment_size " + std::to_string(bad))) << bad;
    EXPECT_THAT(st.message(), HasSubstr("power of two")) << bad;
    // Create reports the same error and allocates nothing.
    EXPECT_EQ(NetworkBufferPool::Create(Opts(64ull << 20, bad)).status().code(),
              StatusCode::kInvalidArgument);
  }
  for (uint32_t good : {4096u, 8192u, 32768u, 1u << 20}) {
    EXPECT_TRUE(ValidateOptions(Opts(4ull << 20, good)).ok()) << good;
  }
}

TEST(NetworkBufferPoolOptionsTest, NetworkMemoryMustHoldOneSegment) {
  for (uint64_t bad : {0ull, 1ull, 32767ull}) {
    const Status st = ValidateOptions(Opts(bad, 32768));
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("network_memory " + std::to_string(bad)));
    EXPECT_THAT(st.message(), HasSubstr("smaller than one segment"));
    EXPECT_THAT(st.message(), HasSubstr("at least 32768"));
  }
  EXPECT_TRUE(ValidateOptions(Opts(32768, 32768)).ok());
}

TEST(NetworkBufferPoolOptionsTest, TooManySegmentsRejected) {
  const Status st = ValidateOptions(Opts(1ull << 45, 4096));  // 2^33 segments
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("segment_size"));
}

TEST_F(NetworkBufferPoolTest, CreateCutsTheMemoryIntoSegments) {
  auto g = NetworkBufferPool::Create(Opts(10 * 4096 + 100, 4096));  // the remainder is unused
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ((*g)->total_segments(), 10u);
  EXPECT_EQ((*g)->segment_size(), 4096u);
  EXPECT_EQ((*g)->available_segments(), 10u);
  EXPECT_EQ((*g)->used_segments(), 0u);
  EXPECT_EQ((*g)->required_segments(), 0u);
  const NetworkBufferPoolStats s = (*g)->Stats();
  EXPECT_EQ(s.total, 10u);
  EXPECT_EQ(s.segment_size, 4096u);
  EXPECT_THAT((*g)->DebugString(), HasSubstr("total=10 available=10"));
  globals_.push_back(std::move(g).value());
}

TEST_F(NetworkBufferPoolTest, PreallocatedAndHugePageSlabsWork) {
  NetworkBufferPoolOptions o = Opts(4 << 20, 32768);
  o.preallocate = true;
  o.huge_pages = true;
  auto g = NetworkBufferPool::Create(o);
  ASSERT_TRUE(g.ok());
  MemorySegment* s = (*g)->TryRequestSegment();
  s->data()[32767] = 1;
  (*g)->RecycleSegment(s);
  globals_.push_back(std::move(g).value());
}

// --- Admission ---

TEST_F(NetworkBufferPoolTest, AdmissionNeverExceedsTotal) {
  NetworkBufferPool& g = NewGlobal(10);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 6, 10));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(g.required_segments(), 6u);
  auto ex = g.RequestExclusiveSegments(4);
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  EXPECT_EQ(g.required_segments(), 10u);

  auto b = g.CreateLocalBufferPool(PoolOptions("gate-7", 1, 8));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  const std::string m = b.status().message();
  EXPECT_THAT(m, HasSubstr("local buffer pool 'gate-7'"));
  EXPECT_THAT(m, HasSubstr("required 1 segments"));
  EXPECT_THAT(m, HasSubstr("only 0 of 10 segments are available"));
  EXPECT_THAT(m, HasSubstr("10 are already reserved"));
  EXPECT_THAT(m, HasSubstr("segment size 4 KiB"));
  EXPECT_THAT(m, HasSubstr("network_memory 40 KiB"));
  EXPECT_THAT(m, HasSubstr("Raise network_memory to at least 44 KiB (45056 bytes)"));

  auto more = g.RequestExclusiveSegments(1);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(more.status().message(), HasSubstr("exclusive buffers of an input channel"));
  EXPECT_EQ(g.required_segments(), 10u);  // failures reserve nothing
  EXPECT_EQ(g.Stats().local_pools, 1u);

  g.RecycleExclusiveSegments(*ex);
  EXPECT_EQ(g.required_segments(), 6u);
  auto c = g.CreateLocalBufferPool(PoolOptions("c", 4, 4));
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(g.required_segments(), 10u);
}

TEST_F(NetworkBufferPoolTest, AdmissionMessageCountsPartialHeadroom) {
  NetworkBufferPool& g = NewGlobal(10, 32768);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 7, 7)).value();
  auto b = g.CreateLocalBufferPool(PoolOptions("out", 5, 9));
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("required 5 segments, but only 3 of 10"));
  EXPECT_THAT(b.status().message(), HasSubstr("segment size 32 KiB"));
  EXPECT_THAT(b.status().message(), HasSubstr("at least 384 KiB (393216 bytes)"));
  EXPECT_THAT(b.status().ToString(), HasSubstr("ResourceExhausted: "));
}

TEST_F(NetworkBufferPoolTest, InvalidPoolBoundsRejected) {
  NetworkBufferPool& g = NewGlobal(10);
  auto zero = g.CreateLocalBufferPool(PoolOptions("z", 0, 4));
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(zero.status().message(), HasSubstr("'z'"));
  auto inverted = g.CreateLocalBufferPool(PoolOptions("i", 5, 4));
  EXPECT_EQ(inverted.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(inverted.status().message(), HasSubstr("1 <= min <= max"));
  EXPECT_EQ(g.required_segments(), 0u);
}

TEST_F(NetworkBufferPoolTest, RandomAdmissionSequenceKeepsRequiredWithinTotal) {
  NetworkBufferPool& g = NewGlobal(64);
  std::mt19937 rng(42);
  std::vector<std::shared_ptr<LocalBufferPool>> pools;
  std::vector<std::vector<MemorySegment*>> exclusive;
  uint32_t expected_required = 0;
  int rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    switch (rng() % 4) {
      case 0: {
        const uint32_t min = 1 + rng() % 12;
        auto p = g.CreateLocalBufferPool(PoolOptions("p", min, min + rng() % 20));
        if (p.ok()) {
          expected_required += min;
          pools.push_back(std::move(p).value());
        } else {
          ASSERT_EQ(p.status().code(), StatusCode::kResourceExhausted);
          ASSERT_GT(expected_required + min, 64u);
          ++rejected;
        }
        break;
      }
      case 1: {
        const uint32_t n = 1 + rng() % 6;
        auto ex = g.RequestExclusiveSegments(n, 1s);
        if (ex.ok()) {
          expected_required += n;
          exclusive.push_back(std::move(ex).value());
        } else {
          ASSERT_EQ(ex.status().code(), StatusCode::kResourceExhausted) << ex.status().ToString();
          ++rejected;
        }
        break;
      }
      case 2:
        if (!pools.empty()) {
          const size_t k = rng() % pools.size();
          expected_required -= pools[k]->min_segments();
          pools.erase(pools.begin() + static_cast<long>(k));
        }
        break;
      case 3:
        if (!exclusive.empty()) {
          const size_t k = rng() % exclusive.size();
          expected_required -= static_cast<uint32_t>(exclusive[k].size());
          g.RecycleExclusiveSegments(exclusive[k]);
          exclusive.erase(exclusive.begin() + static_cast<long>(k));
        }
        break;
    }
    ASSERT_EQ(g.required_segments(), expected_required);
    ASSERT_LE(g.required_segments(), g.total_segments());
    // Sizes always follow the redistribution rule.
    std::vector<PoolBounds> bounds;
    for (const auto& p : pools) bounds.push_back({p->min_segments(), p->max_segments()});
    const std::vector<uint32_t> sizes = RedistributeSpare(bounds, 64 - expected_required);
    for (size_t k = 0; k < pools.size(); ++k) ASSERT_EQ(pools[k]->Stats().size, sizes[k]);
  }
  EXPECT_GT(rejected, 0);
  for (auto& ex : exclusive) g.RecycleExclusiveSegments(ex);
}

// --- Exclusive segments ---

TEST_F(NetworkBufferPoolTest, ExclusiveSegmentsAreOwnedUntilReturned) {
  NetworkBufferPool& g = NewGlobal(8);
  EXPECT_TRUE(g.RequestExclusiveSegments(0)->empty());
  auto ex = g.RequestExclusiveSegments(3);
  ASSERT_TRUE(ex.ok());
  ASSERT_EQ(ex->size(), 3u);
  EXPECT_EQ(std::set<MemorySegment*>(ex->begin(), ex->end()).size(), 3u);
  NetworkBufferPoolStats s = g.Stats();
  EXPECT_EQ(s.exclusive, 3u);
  EXPECT_EQ(s.required, 3u);
  EXPECT_EQ(s.available, 5u);
  EXPECT_EQ(s.pooled, 0u);

  // A channel wraps its exclusive segments with its own recycler.
  test_util::CountingRecycler channel(g);
  {
    Buffer b = Buffer::Wrap((*ex)[0], &channel);
    b.SetSize(10);
  }
  // The counting recycler returned segment 0 straight to the free list; take it back so the
  // reservation is returned whole below.
  EXPECT_EQ(channel.recycled(), 1);
  MemorySegment* again = g.TryRequestSegment();
  ASSERT_EQ(again, (*ex)[0]);

  g.RecycleExclusiveSegments(*ex);
  s = g.Stats();
  EXPECT_EQ(s.exclusive, 0u);
  EXPECT_EQ(s.required, 0u);
  EXPECT_EQ(s.available, 8u);
}

TEST_F(NetworkBufferPoolTest, ExclusiveRequestTakesQueuedSegmentsOfShrunkPoolsAtOnce) {
  NetworkBufferPool& g = NewGlobal(8);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 1, 8)).value();
  {
    std::vector<Buffer> held;
    for (int i = 0; i < 8; ++i) held.push_back(pool->RequestBuffer());
    ASSERT_TRUE(held.back().valid());
  }
  EXPECT_EQ(pool->Stats().queued, 8u);
  EXPECT_EQ(g.available_segments(), 0u);
  const auto start = std::chrono::steady_clock::now();
  auto ex = g.RequestExclusiveSegments(4, 10s);
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);  // no waiting for a timeout
  EXPECT_EQ(pool->Stats().size, 4u);
  EXPECT_EQ(pool->Stats().owned, 4u);
  g.RecycleExclusiveSegments(*ex);
  EXPECT_EQ(pool->Stats().size, 8u);
}

TEST_F(NetworkBufferPoolTest, ExclusiveRequestTimesOutWhenPoolsKeepTheirBuffers) {
  NetworkBufferPool& g = NewGlobal(8);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 1, 8)).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 8; ++i) held.push_back(pool->RequestBuffer());
  ASSERT_TRUE(held.back().valid());
  ASSERT_EQ(g.available_segments(), 0u);
  const uint32_t required_before = g.required_segments();

  const auto start = std::chrono::steady_clock::now();
  auto ex = g.RequestExclusiveSegments(2, 100ms);
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(ex.ok());
  EXPECT_EQ(ex.status().code(), StatusCode::kTimeout);
  EXPECT_THAT(ex.status().message(), HasSubstr("timed out after 100 ms"));
  EXPECT_THAT(ex.status().message(), HasSubstr("2 exclusive segments (0 became free)"));
  EXPECT_THAT(ex.status().message(), HasSubstr("Raise network_memory"));
  EXPECT_THAT(ex.status().message(), HasSubstr("timeout"));
  EXPECT_GE(waited, 100ms);
  EXPECT_EQ(g.required_segments(), required_before);
  EXPECT_EQ(g.available_segments(), 0u);
  EXPECT_EQ(g.Stats().exclusive, 0u);
  EXPECT_EQ(pool->Stats().size, 8u);  // grown back
  held.clear();
  EXPECT_EQ(pool->Stats().queued, 8u);
}

TEST_F(NetworkBufferPoolTest, ExclusiveRequestTimeoutReturnsPartialSegments) {
  NetworkBufferPool& g = NewGlobal(4);
  MemorySegment* direct[3];
  for (auto*& s : direct) s = g.TryRequestSegment();
  auto ex = g.RequestExclusiveSegments(2, 50ms);
  ASSERT_EQ(ex.status().code(), StatusCode::kTimeout);
  EXPECT_THAT(ex.status().message(), HasSubstr("(1 became free)"));
  EXPECT_EQ(g.available_segments(), 1u);
  EXPECT_EQ(g.required_segments(), 0u);
  for (auto* s : direct) g.RecycleSegment(s);
}

TEST_F(NetworkBufferPoolTest, ExclusiveRequestWaitsForBuffersReturnedByAnotherThread) {
  NetworkBufferPool& g = NewGlobal(8);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 1, 8)).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 8; ++i) held.push_back(pool->RequestBuffer());
  ASSERT_TRUE(held.back().valid());

  std::thread releaser([&] {
    std::this_thread::sleep_for(50ms);
    held[0].Release();  // the pool shrank to 6 while owning 8: these go to the global pool
    held[1].Release();
  });
  auto ex = g.RequestExclusiveSegments(2, 30s);
  releaser.join();
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  EXPECT_EQ(ex->size(), 2u);
  EXPECT_EQ(g.Stats().exclusive, 2u);
  EXPECT_EQ(g.required_segments(), 3u);
  EXPECT_EQ(pool->Stats().size, 6u);
  EXPECT_EQ(pool->Stats().owned, 6u);
  g.RecycleExclusiveSegments(*ex);
  EXPECT_EQ(pool->Stats().size, 8u);
  held.clear();
}

TEST_F(NetworkBufferPoolTest, ExclusiveRequestWaitsForDirectRecycles) {
  NetworkBufferPool& g = NewGlobal(4);
  std::vector<MemorySegment*> direct;
  while (MemorySegment* s = g.TryRequestSegment()) direct.push_back(s);
  auto fut = std::async(std::launch::async, [&] { return g.RequestExclusiveSegments(3, 30s); });
  for (MemorySegment* s : direct) {
    std::this_thread::sleep_for(10ms);
    g.RecycleSegment(s);
  }
  auto ex = fut.get();
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  EXPECT_EQ(g.available_segments(), 1u);
  g.RecycleExclusiveSegments(*ex);
}

// --- Raw free list and its invariants ---

TEST_F(NetworkBufferPoolTest, DirectRecyclerReturnsToTheFreeList) {
  NetworkBufferPool& g = NewGlobal(2);
  Buffer b = Buffer::Wrap(g.TryRequestSegment(), g.direct_recycler());
  EXPECT_EQ(g.available_segments(), 1u);
  EXPECT_EQ(g.used_segments(), 1u);
  EXPECT_EQ(g.Stats().pooled, 1u);  // neither exclusive nor free
  b.Release();
  EXPECT_EQ(g.available_segments(), 2u);
}

using NetworkBufferPoolDeathTest = test_util::DeathTestFixture;

TEST_F(NetworkBufferPoolDeathTest, DoubleRecycleAborts) {
  NetworkBufferPool& g = NewGlobal(2);
  MemorySegment* s = g.TryRequestSegment();
  g.RecycleSegment(s);
  EXPECT_DEATH(g.RecycleSegment(s), "segment recycled twice into the NetworkBufferPool");
}

TEST_F(NetworkBufferPoolDeathTest, RecycleOfAHeldOrForeignSegmentAborts) {
  NetworkBufferPool& g = NewGlobal(2);
  NetworkBufferPool& other = NewGlobal(2);
  MemorySegment* s = g.TryRequestSegment();
  Buffer b = Buffer::Wrap(s, g.direct_recycler());
  EXPECT_DEATH(g.RecycleSegment(s), "while a Buffer still holds it");
  EXPECT_DEATH(other.RecycleSegment(s), "does not belong to");
  Buffer unpooled = AllocateUnpooled(8);
  EXPECT_DEATH(g.RecycleSegment(unpooled.segment()), "does not belong to");
}

TEST_F(NetworkBufferPoolDeathTest, ReturningMoreExclusiveSegmentsThanRequestedAborts) {
  NetworkBufferPool& g = NewGlobal(2);
  MemorySegment* s = g.TryRequestSegment();
  MemorySegment* one[] = {s};
  EXPECT_DEATH(g.RecycleExclusiveSegments(one), "more exclusive segments returned");
  g.RecycleSegment(s);
}

}  // namespace
}  // namespace sluice::buffer
