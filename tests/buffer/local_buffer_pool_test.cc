// LocalBufferPool: requests, caps, overdraft, blocking calls, destruction with buffers in
// flight, and resizing by redistribution.
#include "buffer/local_buffer_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "buffer/network_buffer_pool.h"
#include "buffer/redistribution.h"
#include "buffer_test_death.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using test_util::ExpectPoolAccounting;
using test_util::PoolOptions;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class LocalBufferPoolTest : public test_util::PoolTest {};

TEST_F(LocalBufferPoolTest, NonBlockingRequestReturnsEmptyAtExhaustion) {
  NetworkBufferPool& g = NewGlobal(16);
  auto pool = g.CreateLocalBufferPool(PoolOptions("out", 4, 4)).value();
  EXPECT_EQ(pool->name(), "out");
  EXPECT_EQ(pool->segment_size(), test_util::kSegment);
  EXPECT_EQ(pool->min_segments(), 4u);
  EXPECT_EQ(pool->max_segments(), 4u);
  EXPECT_EQ(pool->Stats().owned, 0u);  // segments are taken lazily

  std::vector<Buffer> held;
  std::set<uint8_t*> distinct;
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(pool->IsAvailable()) << i;
    held.push_back(pool->RequestBuffer());
    ASSERT_TRUE(held.back().valid()) << i;
    EXPECT_EQ(held.back().size(), 0u);
    distinct.insert(held.back().data());
  }
  EXPECT_EQ(distinct.size(), 4u);
  Buffer none = pool->RequestBuffer();
  EXPECT_FALSE(none.valid());
  EXPECT_FALSE(pool->IsAvailable());
  LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.owned, 4u);
  EXPECT_EQ(s.lent, 4u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_FALSE(s.available);
  EXPECT_EQ(g.available_segments(), 12u);

  held.pop_back();  // recycled into the pool, not the global free list
  s = pool->Stats();
  EXPECT_EQ(s.queued, 1u);
  EXPECT_EQ(s.lent, 3u);
  EXPECT_TRUE(s.available);
  EXPECT_EQ(g.available_segments(), 12u);
  EXPECT_TRUE(pool->RequestBuffer().valid());
  ExpectPoolAccounting(*pool);
}

TEST_F(LocalBufferPoolTest, AvailableMeansTheNextRequestSucceeds) {
  NetworkBufferPool& g = NewGlobal(8);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 3, 3)).value();
  std::vector<Buffer> held;
  while (pool->IsAvailable()) {
    held.push_back(pool->RequestBuffer());
    ASSERT_TRUE(held.back().valid());
    // One segment is already queued for the next request whenever the size allows.
    EXPECT_EQ(pool->Stats().owned, std::min<uint32_t>(3, held.size() + 1));
  }
  EXPECT_EQ(held.size(), 3u);
  EXPECT_FALSE(pool->RequestBuffer().valid());
}

TEST_F(LocalBufferPoolTest, DestroyedPoolHandsOutNothing) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 2, 2)).value();
  EXPECT_TRUE(pool->RequestBuffer().valid());
  pool->Destroy();
  pool->Destroy();  // idempotent
  EXPECT_TRUE(pool->IsDestroyed());
  EXPECT_FALSE(pool->RequestBuffer().valid());
  EXPECT_FALSE(pool->RequestBufferOrOverdraft().valid());
  EXPECT_FALSE(pool->IsAvailable());
  EXPECT_TRUE(pool->Stats().destroyed);
  EXPECT_EQ(g.Stats().local_pools, 0u);
  EXPECT_EQ(g.required_segments(), 0u);
}

// --- Per-subpartition cap ---

TEST_F(LocalBufferPoolTest, SubpartitionAtItsCapMakesThePoolUnavailable) {
  NetworkBufferPool& g = NewGlobal(16);
  LocalBufferPoolOptions o = PoolOptions("result-partition", 6, 6);
  o.num_subpartitions = 2;
  o.max_buffers_per_subpartition = 2;
  auto pool = g.CreateLocalBufferPool(o).value();

  Buffer a0 = pool->RequestBuffer(0);
  EXPECT_TRUE(pool->IsAvailable());
  Buffer b0 = pool->RequestBuffer(0);
  EXPECT_EQ(pool->SubpartitionBuffers(0), 2u);
  EXPECT_FALSE(pool->IsAvailable());  // segments are queued, but subpartition 0 is at its cap
  EXPECT_EQ(pool->Stats().queued, 1u);

  // The cap is backpressure, not a refusal (as in Flink): the writer checks availability.
  Buffer c1 = pool->RequestBuffer(1);
  ASSERT_TRUE(c1.valid());
  Buffer untagged = pool->RequestBuffer();
  ASSERT_TRUE(untagged.valid());
  EXPECT_EQ(pool->SubpartitionBuffers(1), 1u);
  EXPECT_FALSE(pool->IsAvailable());

  // A waiter is woken when the subpartition drops below its cap.
  auto wait = std::async(std::launch::async, [&] { return pool->WaitAvailable(30s); });
  std::this_thread::sleep_for(20ms);
  b0.Release();
  EXPECT_TRUE(wait.get().ok());
  EXPECT_EQ(pool->SubpartitionBuffers(0), 1u);
  EXPECT_TRUE(pool->IsAvailable());

  untagged.Release();
  c1.Release();
  EXPECT_EQ(pool->SubpartitionBuffers(1), 0u);
  a0.Release();
  EXPECT_EQ(pool->SubpartitionBuffers(0), 0u);
  ExpectPoolAccounting(*pool);
}

TEST_F(LocalBufferPoolTest, SubpartitionCountsAreKeptAboveTheCap) {
  NetworkBufferPool& g = NewGlobal(16);
  LocalBufferPoolOptions o = PoolOptions("p", 8, 8);
  o.num_subpartitions = 1;
  o.max_buffers_per_subpartition = 2;
  auto pool = g.CreateLocalBufferPool(o).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->RequestBuffer(0));
  EXPECT_EQ(pool->SubpartitionBuffers(0), 4u);
  EXPECT_FALSE(pool->IsAvailable());
  held.pop_back();
  EXPECT_FALSE(pool->IsAvailable());  // 3 >= 2
  held.pop_back();
  EXPECT_FALSE(pool->IsAvailable());  // 2 == cap
  held.pop_back();
  EXPECT_TRUE(pool->IsAvailable());
}

using LocalBufferPoolDeathTest = test_util::DeathTestFixture;

TEST_F(LocalBufferPoolDeathTest, UnknownSubpartitionAborts) {
  NetworkBufferPool& g = NewGlobal(4);
  LocalBufferPoolOptions o = PoolOptions("p", 2, 2);
  o.num_subpartitions = 2;
  auto pool = g.CreateLocalBufferPool(o).value();
  EXPECT_DEATH((void)pool->RequestBuffer(2), "subpartition the pool does not have");
  EXPECT_DEATH((void)pool->SubpartitionBuffers(5), "no such subpartition");
}

TEST_F(LocalBufferPoolDeathTest, RecycleIntoTheWrongPoolAborts) {
  NetworkBufferPool& g = NewGlobal(4);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 1, 1)).value();
  auto b = g.CreateLocalBufferPool(PoolOptions("b", 1, 1)).value();
  Buffer x = a->RequestBuffer();
  MemorySegment* s = x.segment();
  x.Release();
  EXPECT_DEATH(b->Recycle(s), "did not lend it");
}

// --- Overdraft ---

TEST_F(LocalBufferPoolTest, OverdraftLendsBeyondTheSizeAndMakesThePoolUnavailable) {
  NetworkBufferPool& g = NewGlobal(16);
  LocalBufferPoolOptions o = PoolOptions("writer", 2, 2);
  o.max_overdraft = 2;
  auto pool = g.CreateLocalBufferPool(o).value();
  Buffer a = pool->RequestBuffer();
  Buffer b = pool->RequestBuffer();
  EXPECT_FALSE(pool->RequestBuffer().valid());
  Buffer o1 = pool->RequestBufferOrOverdraft();
  Buffer o2 = pool->RequestBufferOrOverdraft();
  ASSERT_TRUE(o1.valid());
  ASSERT_TRUE(o2.valid());
  EXPECT_FALSE(pool->RequestBufferOrOverdraft().valid());  // at most max_overdraft
  LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.overdraft, 2u);
  EXPECT_EQ(s.owned, 4u);
  EXPECT_EQ(s.lent, 4u);
  EXPECT_FALSE(pool->IsAvailable());
  EXPECT_EQ(g.available_segments(), 12u);

  // Beyond the size, recycled segments go back to the global pool.
  o1.Release();
  EXPECT_EQ(pool->Stats().overdraft, 1u);
  EXPECT_EQ(g.available_segments(), 13u);
  a.Release();  // any buffer: they are interchangeable
  EXPECT_EQ(pool->Stats().overdraft, 0u);
  EXPECT_EQ(g.available_segments(), 14u);
  EXPECT_EQ(pool->Stats().queued, 0u);
  EXPECT_FALSE(pool->IsAvailable());
  b.Release();
  EXPECT_TRUE(pool->IsAvailable());
  EXPECT_EQ(pool->Stats().queued, 1u);
  // Overdraft only when the pool itself has nothing queued.
  Buffer q = pool->RequestBufferOrOverdraft();
  EXPECT_EQ(pool->Stats().overdraft, 0u);
  ExpectPoolAccounting(*pool);
}

TEST_F(LocalBufferPoolTest, OverdraftBecomesOrdinaryWhenThePoolGrows) {
  NetworkBufferPool& g = NewGlobal(8);
  LocalBufferPoolOptions o = PoolOptions("writer", 2, 6);
  o.max_overdraft = 2;
  auto pool = g.CreateLocalBufferPool(o).value();
  auto fixed = g.CreateLocalBufferPool(PoolOptions("fixed", 4, 4)).value();
  ASSERT_EQ(pool->Stats().size, 4u);
  std::vector<Buffer> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->RequestBuffer());
  held.push_back(pool->RequestBufferOrOverdraft());
  ASSERT_TRUE(held.back().valid());
  EXPECT_EQ(pool->Stats().overdraft, 1u);
  EXPECT_FALSE(pool->IsAvailable());

  fixed.reset();  // the pool grows to 6 while its overdraft buffer is out
  LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 6u);
  EXPECT_EQ(s.overdraft, 0u);  // 5 lent <= 6: ordinary buffers now
  EXPECT_TRUE(pool->IsAvailable());
  held.clear();
  s = pool->Stats();
  EXPECT_EQ(s.overdraft, 0u);
  EXPECT_EQ(s.queued, 6u);
  EXPECT_TRUE(pool->IsAvailable());
  ExpectPoolAccounting(*pool);
}

// --- Blocking requests ---

TEST_F(LocalBufferPoolTest, BlockingRequestTimesOut) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate-3", 1, 1)).value();
  Result<Buffer> first = pool->RequestBufferBlocking(-1, 1s);
  ASSERT_TRUE(first.ok());
  const auto start = std::chrono::steady_clock::now();
  Result<Buffer> r = pool->RequestBufferBlocking(-1, 50ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_THAT(r.status().message(), HasSubstr("'gate-3'"));
  EXPECT_THAT(r.status().message(), HasSubstr("within 50 ms"));
  EXPECT_THAT(r.status().message(), HasSubstr("all 1 of its segments are in use"));
}

TEST_F(LocalBufferPoolTest, BlockingRequestTimeoutNamesAnEmptyGlobalPool) {
  NetworkBufferPool& g = NewGlobal(2);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 2)).value();
  MemorySegment* d1 = g.TryRequestSegment();
  MemorySegment* d2 = g.TryRequestSegment();
  Result<Buffer> r = pool->RequestBufferBlocking(-1, 20ms);
  ASSERT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_THAT(r.status().message(), HasSubstr("network buffer pool has none free"));
  g.RecycleSegment(d1);
  g.RecycleSegment(d2);
}

TEST_F(LocalBufferPoolTest, BlockingRequestSucceedsWhenAnotherThreadRecycles) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  std::thread t([&] {
    std::this_thread::sleep_for(30ms);
    held.Release();
  });
  Result<Buffer> r = pool->RequestBufferBlocking(-1, 30s);
  t.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->valid());
}

TEST_F(LocalBufferPoolTest, BlockingRequestSucceedsWhenTheGlobalPoolRefills) {
  NetworkBufferPool& g = NewGlobal(2);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 2)).value();
  MemorySegment* d1 = g.TryRequestSegment();
  MemorySegment* d2 = g.TryRequestSegment();
  std::thread t([&] {
    std::this_thread::sleep_for(30ms);
    g.RecycleSegment(d1);
  });
  Result<Buffer> r = pool->RequestBufferBlocking(-1, 30s);
  t.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  r->Release();
  g.RecycleSegment(d2);
}

TEST_F(LocalBufferPoolTest, CancelWakesBlockedRequestsFromAnotherThread) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  auto blocked =
      std::async(std::launch::async, [&] { return pool->RequestBufferBlocking(-1, 60s); });
  auto waiting = std::async(std::launch::async, [&] { return pool->WaitAvailable(60s); });
  std::this_thread::sleep_for(30ms);
  const auto start = std::chrono::steady_clock::now();
  pool->CancelBlockingRequests();
  Result<Buffer> r = blocked.get();
  Status w = waiting.get();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  EXPECT_THAT(r.status().message(), HasSubstr("'gate'"));
  EXPECT_EQ(w.code(), StatusCode::kCancelled);
  // From now on as well.
  EXPECT_EQ(pool->RequestBufferBlocking(-1, 60s).status().code(), StatusCode::kCancelled);
}

TEST_F(LocalBufferPoolTest, DestroyWakesBlockedRequestsWithClosed) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  auto blocked =
      std::async(std::launch::async, [&] { return pool->RequestBufferBlocking(-1, 60s); });
  auto waiting = std::async(std::launch::async, [&] { return pool->WaitAvailable(60s); });
  std::this_thread::sleep_for(30ms);
  pool->Destroy();
  Result<Buffer> r = blocked.get();
  EXPECT_EQ(r.status().code(), StatusCode::kClosed);
  EXPECT_THAT(r.status().message(), HasSubstr("'gate' was destroyed"));
  EXPECT_EQ(waiting.get().code(), StatusCode::kClosed);
}

TEST_F(LocalBufferPoolTest, WaitAvailableTimesOutUnderBackpressure) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  EXPECT_TRUE(pool->WaitAvailable(0ms).ok());
  Buffer held = pool->RequestBuffer();
  Status st = pool->WaitAvailable(20ms);
  EXPECT_EQ(st.code(), StatusCode::kTimeout);
  EXPECT_THAT(st.message(), HasSubstr("backpressure"));
}

// With wake_batch, a writer blocked in WaitAvailable is woken by a run of returns, but a single
// return still reaches it (through the recheck): it never waits for a run that cannot come.
TEST_F(LocalBufferPoolTest, WakeBatchWaiterSeesASingleReturn) {
  NetworkBufferPool& g = NewGlobal(16);
  LocalBufferPoolOptions o = PoolOptions("out", 16, 16);
  o.wake_batch = 4;
  auto pool = g.CreateLocalBufferPool(o).value();
  std::vector<Buffer> held;
  while (Buffer b = pool->RequestBuffer()) held.push_back(std::move(b));
  ASSERT_EQ(held.size(), 16u);
  EXPECT_FALSE(pool->IsAvailable());
  auto wait = std::async(std::launch::async, [&] { return pool->WaitAvailable(60s); });
  std::this_thread::sleep_for(20ms);
  held.back().Release();
  held.pop_back();
  EXPECT_TRUE(wait.get().ok());
  EXPECT_TRUE(pool->IsAvailable());
  // Nothing comes back: still a Timeout naming backpressure, and Cancel still wakes at once.
  held.push_back(pool->RequestBuffer());
  ASSERT_TRUE(held.back().valid());
  Status st = pool->WaitAvailable(20ms);
  EXPECT_EQ(st.code(), StatusCode::kTimeout);
  EXPECT_THAT(st.message(), HasSubstr("backpressure"));
  auto cancelled = std::async(std::launch::async, [&] { return pool->WaitAvailable(60s); });
  std::this_thread::sleep_for(20ms);
  pool->CancelBlockingRequests();
  EXPECT_EQ(cancelled.get().code(), StatusCode::kCancelled);
  held.clear();
  ExpectPoolAccounting(*pool);
}

// A writer that waits for availability and a recycler on another thread, with a wake batch:
// every buffer comes back and each one taken is distinct (TSan runs this).
TEST_F(LocalBufferPoolTest, WakeBatchWriterAndRecyclerLoseNothing) {
  NetworkBufferPool& g = NewGlobal(32);
  LocalBufferPoolOptions o = PoolOptions("out", 16, 16);
  o.wake_batch = 4;
  auto pool = g.CreateLocalBufferPool(o).value();
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Buffer> in_flight;
  bool done = false;
  std::thread recycler([&] {
    while (true) {
      Buffer b;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return done || !in_flight.empty(); });
        if (in_flight.empty()) return;
        b = std::move(in_flight.front());
        in_flight.pop_front();
      }
      b.Release();
    }
  });
  uint64_t taken = 0;
  for (int i = 0; i < 20000; ++i) {
    ASSERT_TRUE(pool->WaitAvailable(60s).ok());
    Buffer b = pool->RequestBuffer();
    ASSERT_TRUE(b.valid());
    ++taken;
    {
      std::lock_guard lock(mu);
      in_flight.push_back(std::move(b));
    }
    cv.notify_one();
  }
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  recycler.join();
  EXPECT_EQ(taken, 20000u);
  EXPECT_EQ(pool->Stats().lent, 0u);
  ExpectPoolAccounting(*pool);
}

// --- Destruction with buffers in flight ---

TEST_F(LocalBufferPoolTest, DestroyWithBuffersInFlightReturnsThemOnRecycle) {
  NetworkBufferPool& g = NewGlobal(8);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 4, 4)).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 3; ++i) held.push_back(pool->RequestBuffer());
  EXPECT_EQ(pool->Stats().owned, 4u);  // 3 lent + 1 queued
  pool->Destroy();
  NetworkBufferPoolStats s = g.Stats();
  EXPECT_EQ(s.local_pools, 0u);
  EXPECT_EQ(s.required, 0u);
  EXPECT_EQ(s.available, 5u);  // the queued one went home at once
  EXPECT_EQ(s.pooled, 3u);
  EXPECT_EQ(pool->Stats().owned, 3u);
  held[0].Release();
  EXPECT_EQ(g.available_segments(), 6u);
  held.clear();
  EXPECT_EQ(g.available_segments(), 8u);
  EXPECT_EQ(pool->Stats().owned, 0u);
}

TEST_F(LocalBufferPoolTest, DroppedPoolIsFreedWhenItsLastBufferComesBack) {
  NetworkBufferPool& g = NewGlobal(8);
  std::shared_ptr<NetworkBufferPool> global = SharedGlobal();
  const long base = global.use_count();  // the fixture and this test
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 4, 4)).value();
  EXPECT_EQ(global.use_count(), base + 1);  // every pool keeps the global pool alive
  Buffer a = pool->RequestBuffer();
  Buffer b = pool->RequestBuffer();
  Buffer shared = b.Share();
  pool.reset();  // destroyed, but the object lives on while its buffers are out
  EXPECT_EQ(g.Stats().local_pools, 0u);
  EXPECT_EQ(g.Stats().pooled, 2u);
  EXPECT_EQ(global.use_count(), base + 1);
  a.SetSize(5);  // still perfectly usable
  a.Release();
  EXPECT_EQ(g.available_segments(), 7u);
  b.Release();
  EXPECT_EQ(global.use_count(), base + 1);
  shared.Release();  // the last one: the pool object is deleted (ASan checks the rest)
  EXPECT_EQ(global.use_count(), base);
  EXPECT_EQ(g.available_segments(), 8u);
}

TEST_F(LocalBufferPoolTest, DroppedPoolWithoutBuffersIsFreedAtOnce) {
  NetworkBufferPool& g = NewGlobal(8);
  std::shared_ptr<NetworkBufferPool> global = SharedGlobal();
  const long base = global.use_count();
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 4, 4)).value();
  { Buffer b = pool->RequestBuffer(); }
  pool.reset();
  EXPECT_EQ(global.use_count(), base);
}

TEST_F(LocalBufferPoolTest, BuffersMayOutliveEveryUserPointer) {
  Buffer survivor;
  {
    auto global = test_util::MakeGlobal(4);
    auto pool = global->CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
    survivor = pool->RequestBuffer();
  }  // the user dropped both pools; the buffer keeps them alive
  ASSERT_TRUE(survivor.valid());
  survivor.data()[0] = 1;
  survivor.Release();  // frees the local pool, then the global pool (ASan: no leak, no UAF)
}

// --- Resizing through redistribution ---

std::vector<uint32_t> ExpectedSizes(const std::vector<const LocalBufferPool*>& pools,
                                    uint32_t spare) {
  std::vector<PoolBounds> bounds;
  for (const auto* p : pools) bounds.push_back({p->min_segments(), p->max_segments()});
  return RedistributeSpare(bounds, spare);
}

TEST_F(LocalBufferPoolTest, PoolsAreResizedWhenOthersComeAndGo) {
  NetworkBufferPool& g = NewGlobal(32);
  auto a = g.CreateLocalBufferPool(PoolOptions("a", 2, 32)).value();
  EXPECT_EQ(a->Stats().size, 32u);

  std::vector<Buffer> held;
  for (int i = 0; i < 20; ++i) held.push_back(a->RequestBuffer());
  held.resize(8);  // 12 back in a's queue
  LocalBufferPoolStats s = a->Stats();
  EXPECT_EQ(s.owned, 21u);  // 20 requested + 1 queued eagerly
  EXPECT_EQ(s.lent, 8u);
  EXPECT_EQ(s.queued, 13u);
  EXPECT_EQ(g.available_segments(), 11u);

  // A fixed pool of 20 leaves a 10 spare: a shrinks to 12 and returns 9 queued at once.
  auto b = g.CreateLocalBufferPool(PoolOptions("b", 20, 20)).value();
  s = a->Stats();
  EXPECT_EQ(s.size, 12u);
  EXPECT_EQ(s.size, ExpectedSizes({a.get(), b.get()}, 10)[0]);
  EXPECT_EQ(s.owned, 12u);
  EXPECT_EQ(s.queued, 4u);
  EXPECT_EQ(s.lent, 8u);
  EXPECT_EQ(g.available_segments(), 20u);

  // Another fixed pool of 6 leaves 4 spare: a shrinks to 6; 4 queued return now, and 2 of the
  // 8 lent ones return when they are recycled.
  auto c = g.CreateLocalBufferPool(PoolOptions("c", 6, 6)).value();
  s = a->Stats();
  EXPECT_EQ(s.size, 6u);
  EXPECT_EQ(s.owned, 8u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(g.available_segments(), 24u);
  held.pop_back();
  held.pop_back();
  EXPECT_EQ(a->Stats().owned, 6u);
  EXPECT_EQ(g.available_segments(), 26u);
  held.clear();  // these stay in a
  s = a->Stats();
  EXPECT_EQ(s.owned, 6u);
  EXPECT_EQ(s.queued, 6u);
  EXPECT_EQ(g.available_segments(), 26u);

  // A resizable pool shares the spare with a in proportion to the capped headroom.
  c.reset();
  auto d = g.CreateLocalBufferPool(PoolOptions("d", 2, 4)).value();
  // required 2 + 20 + 2 = 24, spare 8: weights min(8, 30) = 8 and min(8, 2) = 2.
  const std::vector<uint32_t> expected = ExpectedSizes({a.get(), b.get(), d.get()}, 8);
  EXPECT_EQ(expected, (std::vector<uint32_t>{2 + 6, 20, 2 + 2}));
  EXPECT_EQ(a->Stats().size, expected[0]);
  EXPECT_EQ(d->Stats().size, expected[2]);

  b.reset();
  d.reset();
  EXPECT_EQ(a->Stats().size, 32u);
  ExpectPoolAccounting(*a);
}

TEST_F(LocalBufferPoolTest, AvailabilityReturnsWhenTheGlobalPoolRefills) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 4)).value();
  std::vector<MemorySegment*> direct;
  while (MemorySegment* s = g.TryRequestSegment()) direct.push_back(s);
  EXPECT_FALSE(pool->IsAvailable());  // registers with the global pool
  EXPECT_FALSE(pool->RequestBuffer().valid());
  EXPECT_FALSE(pool->Stats().available);

  g.RecycleSegment(direct.back());
  direct.pop_back();
  // Refilled eagerly by the recycling thread: available without asking again.
  LocalBufferPoolStats s = pool->Stats();
  EXPECT_TRUE(s.available);
  EXPECT_EQ(s.queued, 1u);
  EXPECT_EQ(g.available_segments(), 0u);
  Buffer b = pool->RequestBuffer();
  EXPECT_TRUE(b.valid());
  EXPECT_FALSE(pool->Stats().available);  // still waiting for more (size 4)
  g.RecycleSegment(direct.back());
  direct.pop_back();
  EXPECT_TRUE(pool->Stats().available);
  for (MemorySegment* d : direct) g.RecycleSegment(d);
}

TEST_F(LocalBufferPoolTest, GrowingPoolRefillsAndWakesWaiters) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 4)).value();
  auto other = g.CreateLocalBufferPool(PoolOptions("other", 3, 3)).value();
  Buffer held = pool->RequestBuffer();
  EXPECT_FALSE(pool->IsAvailable());
  auto waiting = std::async(std::launch::async, [&] { return pool->WaitAvailable(30s); });
  std::this_thread::sleep_for(20ms);
  other.reset();  // pool grows to 4 and refills without being asked
  EXPECT_TRUE(waiting.get().ok());
  EXPECT_EQ(pool->Stats().size, 4u);
}

TEST_F(LocalBufferPoolTest, StatsAccounting) {
  NetworkBufferPool& g = NewGlobal(16);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 2, 8)).value();
  std::vector<Buffer> held;
  for (int i = 0; i < 5; ++i) held.push_back(pool->RequestBuffer());
  held.resize(3);
  const LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.min, 2u);
  EXPECT_EQ(s.max, 8u);
  EXPECT_EQ(s.size, 8u);
  EXPECT_EQ(s.owned, 6u);
  EXPECT_EQ(s.queued, 3u);
  EXPECT_EQ(s.lent, 3u);
  EXPECT_EQ(s.listeners, 0u);
  EXPECT_TRUE(s.available);
  EXPECT_FALSE(s.destroyed);
  const NetworkBufferPoolStats gs = g.Stats();
  EXPECT_EQ(gs.pooled, 6u);
  EXPECT_EQ(gs.available + gs.pooled + gs.exclusive, gs.total);
  ExpectPoolAccounting(*pool);
}

}  // namespace
}  // namespace sluice::buffer
