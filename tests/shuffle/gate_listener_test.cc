// GateListener (the push mode's scheduling) without sockets or gates: requests coalesce into
// one scheduled run, a request from inside the run is dropped, Close ends the calls (from
// another thread: after waiting for the one in progress; from inside: after it), and requests
// racing runs lose nothing.
#include "shuffle/gate_listener.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;

// A scheduler that only records what it was asked to run; the test runs it.
struct RecordingScheduler {
  std::vector<std::shared_ptr<GateListener>> scheduled;
  GateListener::Scheduler fn() {
    return [this](std::shared_ptr<GateListener> l) { scheduled.push_back(std::move(l)); };
  }
  void RunAll() {
    auto batch = std::move(scheduled);
    scheduled.clear();
    for (auto& l : batch) l->Run();
  }
};

TEST(GateListenerTest, RequestsCoalesceIntoOneRun) {
  RecordingScheduler s;
  int calls = 0;
  auto l = std::make_shared<GateListener>([&] { ++calls; }, s.fn());
  l->Request();
  l->Request();
  l->Request();
  ASSERT_EQ(s.scheduled.size(), 1u);
  s.RunAll();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(l->runs(), 1u);
  l->Request();  // after the run started: a new one
  EXPECT_EQ(s.scheduled.size(), 1u);
  s.RunAll();
  EXPECT_EQ(calls, 2);
}

TEST(GateListenerTest, ARequestFromInsideTheRunIsDropped) {
  RecordingScheduler s;
  std::shared_ptr<GateListener> l;
  int calls = 0;
  l = std::make_shared<GateListener>(
      [&] {
        ++calls;
        l->Request();  // the function's own PollNext re-queueing a channel
      },
      s.fn());
  l->Request();
  s.RunAll();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(s.scheduled.empty());
  l->Request();  // from outside again: scheduled
  EXPECT_EQ(s.scheduled.size(), 1u);
  s.RunAll();
  l->Close();
}

TEST(GateListenerTest, CloseEndsTheCallsAndReleasesTheFunction) {
  RecordingScheduler s;
  auto state = std::make_shared<int>(0);
  std::weak_ptr<int> watch = state;
  auto l = std::make_shared<GateListener>([state] { ++*state; }, s.fn());
  state.reset();
  l->Request();
  l->Close();
  EXPECT_TRUE(watch.expired()) << "Close must release what the function holds";
  s.RunAll();  // the run scheduled before Close: no call
  EXPECT_EQ(l->runs(), 0u);
  l->Request();
  s.RunAll();
  EXPECT_EQ(l->runs(), 0u);
  l->Close();  // idempotent
}

TEST(GateListenerTest, CloseFromInsideEndsTheCallsAfterThisOne) {
  RecordingScheduler s;
  auto state = std::make_shared<int>(0);
  std::weak_ptr<int> watch = state;
  std::shared_ptr<GateListener> l;
  l = std::make_shared<GateListener>(
      [&l, state] {
        ++*state;
        l->Close();            // the consumer closing its gate at the end of input
        EXPECT_EQ(*state, 1);  // the function's state is still alive here
      },
      s.fn());
  state.reset();
  l->Request();
  s.RunAll();
  EXPECT_EQ(l->runs(), 1u);
  EXPECT_TRUE(watch.expired()) << "the function is released after the call that closed it";
  l->Request();
  s.RunAll();
  EXPECT_EQ(l->runs(), 1u);
}

TEST(GateListenerTest, CloseWaitsForTheCallInProgress) {
  std::mutex mu;
  std::condition_variable cv;
  bool inside = false, release = false;
  std::atomic<bool> call_done{false};
  auto l = std::make_shared<GateListener>(
      [&] {
        std::unique_lock lock(mu);
        inside = true;
        cv.notify_all();
        cv.wait(lock, [&] { return release; });
        call_done = true;
      },
      [](std::shared_ptr<GateListener>) {});
  std::thread io([&] { l->Run(); });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return inside; });
  }
  std::atomic<bool> closed{false};
  std::thread closer([&] {
    l->Close();
    closed = true;
    EXPECT_TRUE(call_done) << "Close returned while the call was still running";
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(closed) << "Close did not wait for the call in progress";
  {
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  }
  closer.join();
  io.join();
  EXPECT_TRUE(closed);
}

// Producers queue items and request from their threads while an "IO thread" runs what was
// scheduled; the function drains the queue, then lingers a little (a run's tail, where the
// race lives). No item is left behind: a request that comes after the function looked, while
// it still runs, schedules the next run. (Clearing the pending flag after the function instead
// of before it loses the items queued during the tail: this test then fails.)
TEST(GateListenerTest, RequestsRacingRunsLoseNothing) {
  constexpr int kProducers = 3;
  constexpr int kItems = 3000;
  std::mutex q_mu;
  std::deque<int> queue;  // GUARDED_BY(q_mu)
  std::atomic<int> consumed{0};

  std::mutex s_mu;
  std::condition_variable s_cv;
  std::deque<std::shared_ptr<GateListener>> scheduled;  // GUARDED_BY(s_mu)
  bool stop = false;

  auto l = std::make_shared<GateListener>(
      [&] {
        while (true) {
          std::lock_guard lock(q_mu);
          if (queue.empty()) break;
          queue.pop_front();
          consumed.fetch_add(1, std::memory_order_relaxed);
        }
        std::this_thread::sleep_for(50us);  // the run's tail
      },
      [&](std::shared_ptr<GateListener> x) {
        std::lock_guard lock(s_mu);
        scheduled.push_back(std::move(x));
        s_cv.notify_one();
      });
  std::thread io([&] {
    std::unique_lock lock(s_mu);
    while (true) {
      s_cv.wait(lock, [&] { return stop || !scheduled.empty(); });
      if (scheduled.empty()) return;
      auto x = std::move(scheduled.front());
      scheduled.pop_front();
      lock.unlock();
      x->Run();
      lock.lock();
    }
  });
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&] {
      for (int i = 0; i < kItems; ++i) {
        {
          std::lock_guard lock(q_mu);
          queue.push_back(i);
        }
        l->Request();
        if (i % 4 == 0) std::this_thread::sleep_for(20us);
      }
    });
  }
  for (auto& t : producers) t.join();
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (consumed.load() < kProducers * kItems && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  {
    std::lock_guard lock(s_mu);
    stop = true;
    s_cv.notify_one();
  }
  io.join();
  EXPECT_EQ(consumed.load(), kProducers * kItems) << "an item was left without a run";
  EXPECT_GE(l->runs(), 1u);
  EXPECT_LE(l->runs(), static_cast<uint64_t>(kProducers * kItems));
  l->Close();
}

}  // namespace
}  // namespace sluice::shuffle
