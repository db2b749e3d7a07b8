// BufferListener on a LocalBufferPool: one-shot notification outside every lock, declining,
// destruction.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <thread>

#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using test_util::PoolOptions;
using namespace std::chrono_literals;

// Takes every buffer offered unless `on_available` says otherwise.
class TestListener final : public BufferListener {
 public:
  bool NotifyBufferAvailable(Buffer& buffer) override {
    available_calls.fetch_add(1);
    if (on_available) return on_available(buffer);
    taken = std::move(buffer);
    return true;
  }
  void NotifyBufferDestroyed() override { destroyed_calls.fetch_add(1); }

  std::function<bool(Buffer&)> on_available;
  Buffer taken;
  std::atomic<int> available_calls{0};
  std::atomic<int> destroyed_calls{0};
};

// Runs `fn` on another thread and fails (instead of hanging) if it does not finish: a
// deadlock in a listener shows up as a test failure.
void RunWithDeadline(const std::function<void()>& fn) {
  auto done = std::async(std::launch::async, fn);
  ASSERT_EQ(done.wait_for(20s), std::future_status::ready) << "deadlock";
  done.get();
}

class BufferListenerTest : public test_util::PoolTest {};

TEST_F(BufferListenerTest, NotRegisteredWhileABufferIsAvailable) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 2, 2)).value();
  TestListener l;
  EXPECT_FALSE(pool->AddBufferListener(&l));
  EXPECT_EQ(pool->Stats().listeners, 0u);
  EXPECT_EQ(pool->Stats().owned, 1u);  // the check refilled one segment
}

TEST_F(BufferListenerTest, NotifiedOnceWithTheRecycledBuffer) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  uint8_t* const bytes = held.data();
  TestListener l;
  ASSERT_TRUE(pool->AddBufferListener(&l));
  EXPECT_EQ(pool->Stats().listeners, 1u);
  held.Release();
  EXPECT_EQ(l.available_calls.load(), 1);
  ASSERT_TRUE(l.taken.valid());
  EXPECT_EQ(l.taken.data(), bytes);
  EXPECT_EQ(l.taken.size(), 0u);
  EXPECT_EQ(pool->Stats().listeners, 0u);
  EXPECT_EQ(pool->Stats().lent, 1u);

  l.taken.Release();  // one-shot: not offered again
  EXPECT_EQ(l.available_calls.load(), 1);
  EXPECT_EQ(pool->Stats().queued, 1u);
  EXPECT_TRUE(pool->IsAvailable());
  EXPECT_EQ(l.destroyed_calls.load(), 0);
}

TEST_F(BufferListenerTest, ListenersAreServedInOrder) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 2, 2)).value();
  Buffer a = pool->RequestBuffer();
  Buffer b = pool->RequestBuffer();
  TestListener first, second;
  ASSERT_TRUE(pool->AddBufferListener(&first));
  ASSERT_TRUE(pool->AddBufferListener(&second));
  b.Release();
  EXPECT_EQ(first.available_calls.load(), 1);
  EXPECT_EQ(second.available_calls.load(), 0);
  a.Release();
  EXPECT_EQ(second.available_calls.load(), 1);
  EXPECT_TRUE(first.taken.valid() && second.taken.valid());
}

TEST_F(BufferListenerTest, ListenerMayCallThePoolFromItsCallback) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener next;
  TestListener reentrant;
  Buffer extra;
  bool registered_next = false;
  reentrant.on_available = [&](Buffer& b) {
    // All of these take the pool's lock: the callback must run outside it.
    extra = pool->RequestBuffer();  // nothing left: this one is being offered
    EXPECT_FALSE(pool->IsAvailable());
    EXPECT_EQ(pool->Stats().listeners, 0u);
    registered_next = pool->AddBufferListener(&next);
    reentrant.taken = std::move(b);
    return true;
  };
  ASSERT_TRUE(pool->AddBufferListener(&reentrant));
  RunWithDeadline([&] { held.Release(); });  // notified on the releasing thread
  EXPECT_FALSE(extra.valid());
  EXPECT_TRUE(registered_next);
  ASSERT_TRUE(reentrant.taken.valid());
  RunWithDeadline([&] { reentrant.taken.Release(); });
  EXPECT_EQ(next.available_calls.load(), 1);
  EXPECT_TRUE(next.taken.valid());
}

TEST_F(BufferListenerTest, ListenerMayReleaseTheOfferedBufferAndRegisterAgain) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener l;
  int rounds = 0;
  l.on_available = [&](Buffer& b) {
    Buffer mine = std::move(b);
    if (++rounds < 3) {
      mine.Release();  // back to the pool (nobody waiting): queued
      // A buffer is queued now: not registered, request it directly.
      EXPECT_FALSE(pool->AddBufferListener(&l));
      Buffer again = pool->RequestBuffer();
      EXPECT_TRUE(again.valid());
      EXPECT_TRUE(pool->AddBufferListener(&l));
      again.Release();  // re-enters this callback on this thread
    } else {
      l.taken = std::move(mine);
    }
    return true;
  };
  ASSERT_TRUE(pool->AddBufferListener(&l));
  RunWithDeadline([&] { held.Release(); });
  EXPECT_EQ(rounds, 3);
  EXPECT_TRUE(l.taken.valid());
  EXPECT_EQ(pool->Stats().listeners, 0u);
}

TEST_F(BufferListenerTest, DecliningListenerPassesTheBufferOn) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener decliner, taker;
  decliner.on_available = [](Buffer& b) {
    EXPECT_TRUE(b.valid());
    return false;  // leaves the buffer in place
  };
  ASSERT_TRUE(pool->AddBufferListener(&decliner));
  ASSERT_TRUE(pool->AddBufferListener(&taker));
  held.Release();
  EXPECT_EQ(decliner.available_calls.load(), 1);
  EXPECT_EQ(taker.available_calls.load(), 1);
  EXPECT_TRUE(taker.taken.valid());
  EXPECT_EQ(pool->Stats().listeners, 0u);  // the decliner was one-shot too
  taker.taken.Release();
  EXPECT_EQ(decliner.available_calls.load(), 1);
}

TEST_F(BufferListenerTest, BufferDeclinedByEveryoneIsQueued) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener a, b;
  a.on_available = b.on_available = [](Buffer&) { return false; };
  ASSERT_TRUE(pool->AddBufferListener(&a));
  ASSERT_TRUE(pool->AddBufferListener(&b));
  held.Release();
  EXPECT_EQ(a.available_calls.load() + b.available_calls.load(), 2);
  const LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.queued, 1u);
  EXPECT_EQ(s.lent, 0u);
  EXPECT_TRUE(s.available);
}

TEST_F(BufferListenerTest, RemovedListenerIsNotNotified) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener l;
  ASSERT_TRUE(pool->AddBufferListener(&l));
  EXPECT_TRUE(pool->RemoveBufferListener(&l));
  EXPECT_FALSE(pool->RemoveBufferListener(&l));
  held.Release();
  EXPECT_EQ(l.available_calls.load(), 0);
}

TEST_F(BufferListenerTest, DestroyNotifiesWaitingListeners) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener a, b;
  ASSERT_TRUE(pool->AddBufferListener(&a));
  ASSERT_TRUE(pool->AddBufferListener(&b));
  pool->Destroy();
  EXPECT_EQ(a.destroyed_calls.load(), 1);
  EXPECT_EQ(b.destroyed_calls.load(), 1);
  EXPECT_FALSE(pool->AddBufferListener(&a));  // destroyed: not registered
  held.Release();                             // goes to the global pool, not to a listener
  EXPECT_EQ(a.available_calls.load() + b.available_calls.load(), 0);
  EXPECT_EQ(a.destroyed_calls.load(), 1);
}

TEST_F(BufferListenerTest, DroppingThePoolNotifiesListeners) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 1)).value();
  Buffer held = pool->RequestBuffer();
  TestListener l;
  ASSERT_TRUE(pool->AddBufferListener(&l));
  pool.reset();
  EXPECT_EQ(l.destroyed_calls.load(), 1);
}

TEST_F(BufferListenerTest, ListenerIsServedWhenTheGlobalPoolRefills) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 4)).value();
  std::vector<MemorySegment*> direct;
  while (MemorySegment* s = g.TryRequestSegment()) direct.push_back(s);
  TestListener l;
  ASSERT_TRUE(pool->AddBufferListener(&l));  // also asks the global pool to call back
  RunWithDeadline([&] { g.RecycleSegment(direct.back()); });
  direct.pop_back();
  EXPECT_EQ(l.available_calls.load(), 1);
  EXPECT_TRUE(l.taken.valid());
  EXPECT_EQ(pool->Stats().lent, 1u);
  for (MemorySegment* s : direct) g.RecycleSegment(s);
}

TEST_F(BufferListenerTest, ListenerIsServedWhenThePoolGrows) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(PoolOptions("p", 1, 4)).value();
  auto other = g.CreateLocalBufferPool(PoolOptions("other", 3, 3)).value();
  Buffer held = pool->RequestBuffer();
  TestListener l;
  ASSERT_TRUE(pool->AddBufferListener(&l));
  other.reset();
  EXPECT_EQ(l.available_calls.load(), 1);
  EXPECT_TRUE(l.taken.valid());
}

}  // namespace
}  // namespace sluice::buffer
