// Stress: many threads requesting and recycling across many pools (recycling on other threads
// too) while pools come and go and channels take and return exclusive segments; listeners
// registered while other threads recycle. Ends with exact accounting and the leak check.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "buffer/redistribution.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using test_util::PoolOptions;
using namespace std::chrono_literals;

// A buffer with the stamp its holder wrote: if two holders ever shared a segment, one of
// them finds the other's stamp.
struct Held {
  Buffer buffer;
  uint64_t stamp = 0;
};

void Stamp(Held& h, uint64_t stamp) {
  h.stamp = stamp;
  std::memcpy(h.buffer.data(), &stamp, sizeof(stamp));
  std::memcpy(h.buffer.data() + h.buffer.capacity() - sizeof(stamp), &stamp, sizeof(stamp));
  h.buffer.SetSize(sizeof(stamp));
}

bool StampIntact(const Held& h) {
  uint64_t head = 0, tail = 0;
  std::memcpy(&head, h.buffer.data(), sizeof(head));
  std::memcpy(&tail, h.buffer.data() + h.buffer.capacity() - sizeof(tail), sizeof(tail));
  return head == h.stamp && tail == h.stamp && h.buffer.size() == sizeof(uint64_t);
}

class BufferConcurrencyTest : public test_util::PoolTest {};

// The stress below: workers requesting and recycling across pools (some of each other's
// buffers through bounded mailboxes), while other threads create and drop pools, take and
// return exclusive segments and block for buffers. Members are shared by those threads.
class CrossPoolStress {
 public:
  static constexpr int kWorkers = 8;
  static constexpr int kPools = 16;

  struct PoolInfo {
    std::shared_ptr<LocalBufferPool> pool;
    uint32_t subpartitions = 0;
    bool overdraft = false;
  };
  struct Mailbox {
    std::mutex mu;
    std::vector<Held> items;
  };

  explicit CrossPoolStress(NetworkBufferPool& g) : g_(g), mailboxes_(kWorkers) {
    for (int i = 0; i < kPools; ++i) {
      LocalBufferPoolOptions o = PoolOptions("pool-" + std::to_string(i), 2 + i % 3, 6 + 3 * i);
      PoolInfo info;
      if (i % 4 == 1) {
        o.num_subpartitions = info.subpartitions = 4;
        o.max_buffers_per_subpartition = 3;
      }
      if (i % 4 == 2) {
        o.max_overdraft = 2;
        info.overdraft = true;
      }
      info.pool = g.CreateLocalBufferPool(o).value();
      pools_.push_back(std::move(info));
    }
  }

  // Worker `w` completes `iterations` request/recycle pairs; an empty request (the pool is lent
  // out: backpressure) releases what the worker holds and tries another pool.
  void Work(int w, int iterations) {
    std::mt19937 rng(1000 + w);
    std::vector<Held> held;
    uint64_t local_ok = 0, local_empty = 0, local_handed = 0;
    auto release_held = [&] {
      for (Held& h : held) Release(h);
      held.clear();
    };
    for (uint64_t attempt = 0; local_ok < static_cast<uint64_t>(iterations); ++attempt) {
      if ((attempt & 1) == 0) Drain(mailboxes_[w]);
      const PoolInfo& info = pools_[rng() % kPools];
      const int32_t sp = info.subpartitions > 0 ? static_cast<int32_t>(rng() % 4) : -1;
      Held h;
      h.buffer = (info.overdraft && rng() % 2 == 0) ? info.pool->RequestBufferOrOverdraft(sp)
                                                    : info.pool->RequestBuffer(sp);
      if (!h.buffer) {
        ++local_empty;
        release_held();
        Drain(mailboxes_[w]);
        std::this_thread::yield();
        continue;
      }
      ++local_ok;
      Stamp(h, (static_cast<uint64_t>(w) << 32) | static_cast<uint32_t>(local_ok));
      switch (rng() % 8) {
        case 0:
        case 1:  // recycled by another thread
          if (HandOff((w + 1 + rng() % (kWorkers - 1)) % kWorkers, h)) ++local_handed;
          break;
        case 2:
        case 3:  // kept a while
          if (held.size() >= 4) {
            Release(held.front());
            held.erase(held.begin());
          }
          held.push_back(std::move(h));
          break;
        default:
          Release(h);
      }
    }
    release_held();
    Drain(mailboxes_[w]);
    ok.fetch_add(local_ok);
    empty.fetch_add(local_empty);
    handed_off.fetch_add(local_handed);
  }

  // Pools created and destroyed (redistribution), sometimes dropped with buffers in flight.
  void Churn() {
    std::mt19937 rng(7);
    while (!stop.load()) {
      const uint32_t min = 1 + rng() % 4;
      auto p = g_.CreateLocalBufferPool(PoolOptions("churn", min, min + rng() % 40));
      if (!p.ok()) {
        churn_failures.fetch_add(1);
        continue;
      }
      std::shared_ptr<LocalBufferPool> pool = std::move(p).value();
      std::vector<Buffer> bs;
      for (uint32_t k = rng() % 6; k > 0; --k) {
        if (Buffer b = pool->RequestBuffer()) bs.push_back(std::move(b));
      }
      switch (rng() % 3) {
        case 0:
          pool->Destroy();
          bs.clear();
          break;
        case 1:
          pool.reset();  // freed when the last buffer is back
          bs.clear();
          break;
        default:
          bs.clear();
          pool.reset();
      }
      churn_cycles.fetch_add(1);
      std::this_thread::sleep_for(20us);  // leave the cores to the workers
    }
  }

  // A channel taking and returning exclusive segments (pools shrink and grow around it).
  void Exclusive() {
    std::mt19937 rng(11);
    while (!stop.load()) {
      auto ex = g_.RequestExclusiveSegments(1 + rng() % 3, 60s);
      if (!ex.ok()) {
        ADD_FAILURE() << ex.status().ToString();
        exclusive_failures.fetch_add(1);
        return;
      }
      for (MemorySegment* s : *ex) std::memset(s->data(), 0x5A, 64);
      g_.RecycleExclusiveSegments(*ex);
      exclusive_cycles.fetch_add(1);
      std::this_thread::sleep_for(20us);
    }
  }

  // A consumer blocking for buffers on the pools in turn.
  void Blocking() {
    int i = 0;
    while (!stop.load()) {
      LocalBufferPool& p = *pools_[i++ % kPools].pool;
      Result<Buffer> r = p.RequestBufferBlocking(-1, 60s);
      if (!r.ok()) {
        ADD_FAILURE() << r.status().ToString();
        return;
      }
      blocking_ok.fetch_add(1);
      std::this_thread::sleep_for(20us);
    }
  }

  // After every thread stopped: nothing lent, exact accounting per pool and globally, and the
  // pools' sizes are what RedistributeSpare gives (Flink's rule). Drops the pools.
  void ExpectQuiescent() {
    const NetworkBufferPoolStats gs = g_.Stats();
    EXPECT_EQ(gs.local_pools, static_cast<uint32_t>(kPools));
    EXPECT_EQ(gs.exclusive, 0u);
    uint32_t owned = 0, required = 0;
    std::vector<PoolBounds> bounds;
    for (const PoolInfo& info : pools_) {
      const LocalBufferPoolStats s = info.pool->Stats();
      test_util::ExpectPoolAccounting(*info.pool);
      EXPECT_EQ(s.lent, 0u) << info.pool->name();
      EXPECT_EQ(s.overdraft, 0u) << info.pool->name();
      EXPECT_EQ(s.listeners, 0u) << info.pool->name();
      EXPECT_LE(s.owned, s.size) << info.pool->name();
      owned += s.owned;
      required += s.min;
      bounds.push_back({s.min, s.max});
      for (uint32_t sp = 0; sp < info.subpartitions; ++sp) {
        EXPECT_EQ(info.pool->SubpartitionBuffers(sp), 0u);
      }
    }
    EXPECT_EQ(gs.required, required);
    EXPECT_EQ(gs.available + owned, gs.total);
    const std::vector<uint32_t> sizes = RedistributeSpare(bounds, gs.total - required);
    for (size_t i = 0; i < pools_.size(); ++i) EXPECT_EQ(pools_[i].pool->Stats().size, sizes[i]);
    pools_.clear();
  }

  // Every mailbox emptied: before joining threads that may wait for its buffers.
  void DrainAll() {
    for (Mailbox& box : mailboxes_) Drain(box);
  }

  std::atomic<uint64_t> ok{0}, empty{0}, handed_off{0}, corrupt{0};
  std::atomic<int> churn_cycles{0}, churn_failures{0};
  std::atomic<int> exclusive_cycles{0}, exclusive_failures{0};
  std::atomic<int> blocking_ok{0};
  std::atomic<bool> stop{false};

 private:
  void Release(Held& h) {
    if (!StampIntact(h)) corrupt.fetch_add(1);
    h.buffer.Release();
  }
  void Drain(Mailbox& box) {
    std::vector<Held> mine;
    {
      std::lock_guard lock(box.mu);
      mine.swap(box.items);
    }
    for (Held& h : mine) Release(h);
  }
  // Into worker `to`'s mailbox; released here when it is full (mailboxes are bounded: on two
  // cores the receiver may be descheduled for a whole time slice). True when handed off.
  bool HandOff(int to, Held& h) {
    Mailbox& box = mailboxes_[to];
    std::unique_lock lock(box.mu);
    if (box.items.size() < 16) {
      box.items.push_back(std::move(h));
      return true;
    }
    lock.unlock();
    Release(h);
    return false;
  }

  NetworkBufferPool& g_;
  std::vector<PoolInfo> pools_;
  std::vector<Mailbox> mailboxes_;
};

TEST_F(BufferConcurrencyTest, RequestRecycleAcrossPoolsWhilePoolsComeAndGo) {
  const int iterations = test_util::Scaled(100000);
  // Flink's rule: the sizes at the end are checked against RedistributeSpare.
  CrossPoolStress st(NewGlobalWith(320, RedistributionPolicy::kStatic));
  std::vector<std::thread> workers;
  for (int w = 0; w < CrossPoolStress::kWorkers; ++w) {
    workers.emplace_back([&st, w, iterations] { st.Work(w, iterations); });
  }
  std::thread churn([&st] { st.Churn(); });
  std::thread exclusive([&st] { st.Exclusive(); });
  std::thread blocking([&st] { st.Blocking(); });

  for (auto& t : workers) t.join();
  st.DrainAll();  // before joining threads that may wait for those buffers
  st.stop.store(true);
  churn.join();
  exclusive.join();
  blocking.join();

  EXPECT_EQ(st.corrupt.load(), 0u);
  EXPECT_EQ(st.ok.load(), static_cast<uint64_t>(CrossPoolStress::kWorkers) * iterations);
  EXPECT_GT(st.handed_off.load(), 0u);
  EXPECT_GT(st.churn_cycles.load(), 0);
  EXPECT_EQ(st.churn_failures.load(), 0);
  EXPECT_GT(st.exclusive_cycles.load(), 0);
  EXPECT_EQ(st.exclusive_failures.load(), 0);
  EXPECT_GT(st.blocking_ok.load(), 0);
  std::printf("ok=%llu empty=%llu handed_off=%llu churn=%d exclusive=%d blocking=%d\n",
              static_cast<unsigned long long>(st.ok.load()),
              static_cast<unsigned long long>(st.empty.load()),
              static_cast<unsigned long long>(st.handed_off.load()), st.churn_cycles.load(),
              st.exclusive_cycles.load(), st.blocking_ok.load());
  st.ExpectQuiescent();
}

// The last two buffers of a pool the user dropped come back on two threads at once: one of them
// deletes the pool, the other must not touch it afterwards. In odd rounds the user drops the
// pool while a buffer is coming back instead. ASan and TSan watch the rest.
TEST_F(BufferConcurrencyTest, LastBuffersOfADroppedPoolReturnConcurrently) {
  NetworkBufferPool& g = NewGlobal(16);
  const int rounds = test_util::Scaled(2000);
  for (int round = 0; round < rounds; ++round) {
    auto pool = g.CreateLocalBufferPool(PoolOptions("dropped", 2, 2)).value();
    Buffer a = pool->RequestBuffer();
    Buffer b = pool->RequestBuffer();
    ASSERT_TRUE(a.valid() && b.valid());
    std::shared_ptr<LocalBufferPool> user;
    if (round % 2 == 1) user = pool;  // dropped below, racing with a's return
    pool.reset();
    std::atomic<int> go{0};
    std::thread other([&] {
      while (go.load(std::memory_order_acquire) == 0) {
      }
      a.Release();
    });
    go.store(1, std::memory_order_release);
    b.Release();
    user.reset();
    other.join();
    ASSERT_EQ(g.available_segments(), 16u) << "round " << round;
  }
}

// Listener registered by consumers that found the pool empty, notified by whichever thread
// recycles next. Every registration is answered exactly once; a lost notification shows up
// as a consumer that waits past its deadline.
class StressListener final : public BufferListener {
 public:
  enum State : int { kWaiting = 0, kTaken, kDeclined, kDestroyed };

  bool NotifyBufferAvailable(Buffer& buffer) override {
    calls.fetch_add(1);
    if (decline_every > 0 && offers.fetch_add(1) % decline_every == decline_every - 1) {
      state.store(kDeclined, std::memory_order_release);
      return false;
    }
    taken = std::move(buffer);
    state.store(kTaken, std::memory_order_release);
    return true;
  }
  void NotifyBufferDestroyed() override {
    calls.fetch_add(1);
    state.store(kDestroyed, std::memory_order_release);
  }

  std::atomic<int> state{kWaiting};
  std::atomic<int> calls{0};
  std::atomic<int> offers{0};
  int decline_every = 0;
  Buffer taken;
};

TEST_F(BufferConcurrencyTest, ListenersRegisteredWhileOthersRecycle) {
  constexpr int kConsumers = 4;
  constexpr int kProducers = 2;
  const int rounds = test_util::Scaled(20000);
  NetworkBufferPool& g = NewGlobal(16);
  auto pool = g.CreateLocalBufferPool(PoolOptions("gate", 3, 3)).value();

  std::atomic<bool> stop{false};
  std::atomic<int> registered{0}, answered{0}, via_listener{0}, via_request{0}, lost{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      StressListener listener;
      listener.decline_every = 5 + c;
      int expected_calls = 0;
      for (int i = 0; i < rounds; ++i) {
        Buffer b = pool->RequestBuffer();
        if (b) {
          via_request.fetch_add(1);
        } else {
          listener.state.store(StressListener::kWaiting);
          if (!pool->AddBufferListener(&listener)) continue;  // one is free now: ask again
          registered.fetch_add(1);
          ++expected_calls;
          const auto deadline = std::chrono::steady_clock::now() + 30s;
          int st;
          while ((st = listener.state.load(std::memory_order_acquire)) ==
                 StressListener::kWaiting) {
            if (std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::yield();
          }
          if (st == StressListener::kWaiting) {
            lost.fetch_add(1);
            pool->RemoveBufferListener(&listener);
            return;
          }
          answered.fetch_add(1);
          if (st != StressListener::kTaken) continue;
          b = std::move(listener.taken);
          via_listener.fetch_add(1);
        }
        b.data()[0] = static_cast<uint8_t>(c);
        std::this_thread::yield();  // hold it across a context switch
        EXPECT_EQ(b.data()[0], static_cast<uint8_t>(c));
        b.Release();
      }
      EXPECT_EQ(listener.calls.load(), expected_calls);
    });
  }
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&] {
      std::vector<Buffer> held;
      while (!stop.load()) {
        while (held.size() < 2) {
          Buffer b = pool->RequestBuffer();
          if (!b) break;
          held.push_back(std::move(b));
        }
        std::this_thread::yield();
        held.clear();  // recycled here: consumers' listeners run on this thread
        std::this_thread::yield();
      }
    });
  }
  for (int c = 0; c < kConsumers; ++c) threads[c].join();
  stop.store(true);
  for (size_t t = kConsumers; t < threads.size(); ++t) threads[t].join();

  EXPECT_EQ(lost.load(), 0);
  EXPECT_EQ(registered.load(), answered.load());
  EXPECT_GT(registered.load(), 0);
  EXPECT_GT(via_listener.load(), 0);
  std::printf("registered=%d via_listener=%d via_request=%d\n", registered.load(),
              via_listener.load(), via_request.load());

  // Teardown with waiting listeners: each is told the pool is gone, exactly once.
  std::vector<Buffer> all;
  while (Buffer b = pool->RequestBuffer()) all.push_back(std::move(b));
  ASSERT_EQ(all.size(), 3u);
  StressListener waiting[3];
  for (auto& l : waiting) ASSERT_TRUE(pool->AddBufferListener(&l));
  std::thread destroyer([&] { pool->Destroy(); });
  destroyer.join();
  for (auto& l : waiting) {
    EXPECT_EQ(l.state.load(), StressListener::kDestroyed);
    EXPECT_EQ(l.calls.load(), 1);
  }
  all.clear();
  const LocalBufferPoolStats s = pool->Stats();
  EXPECT_EQ(s.owned, 0u);
  EXPECT_EQ(s.lent, 0u);
  pool.reset();
}

}  // namespace
}  // namespace sluice::buffer
