// transport::Timer: fires once on the loop thread, Stop and the destructor cancel it, it may be
// destroyed from its own callback, and every handle is closed when the loop stops.
#include "transport/timer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>

#include "transport/event_loop.h"

namespace sluice::transport {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<EventLoop> StartLoop() {
  auto loop = EventLoop::Start("timer-test");
  EXPECT_TRUE(loop.ok()) << loop.status().ToString();
  return loop.ok() ? std::move(*loop) : nullptr;
}

// Runs `task` on the loop thread and waits for it.
void OnLoop(EventLoop* loop, std::function<void()> task) {
  std::promise<void> done;
  ASSERT_TRUE(loop->Post([&] {
    task();
    done.set_value();
  }));
  done.get_future().wait();
}

TEST(TimerTest, FiresOnceOnTheLoopThreadAndMayBeDestroyedInItsCallback) {
  auto loop = StartLoop();
  ASSERT_NE(loop, nullptr);
  std::promise<bool> fired;
  Timer* raw = nullptr;
  OnLoop(loop.get(), [&] {
    raw = new Timer(loop.get());
    raw->Start(1ms, [&] {
      const bool on_loop = loop->IsLoopThread();
      EXPECT_FALSE(raw->pending());
      delete raw;  // from its own callback
      fired.set_value(on_loop);
    });
    EXPECT_TRUE(raw->pending());
  });
  EXPECT_TRUE(fired.get_future().get());
  loop->Stop();
  EXPECT_EQ(loop->open_handles_after_stop(), 0);
}

TEST(TimerTest, StopAndDestroyCancelTheCallbackAndCloseTheHandle) {
  auto loop = StartLoop();
  ASSERT_NE(loop, nullptr);
  std::atomic<int> calls{0};
  std::unique_ptr<Timer> stopped;
  OnLoop(loop.get(), [&] {
    stopped = std::make_unique<Timer>(loop.get());
    stopped->Start(5ms, [&] { calls.fetch_add(1); });
    stopped->Stop();
    EXPECT_FALSE(stopped->pending());
    stopped->Stop();  // idempotent
    Timer destroyed(loop.get());
    destroyed.Start(5ms, [&] { calls.fetch_add(1); });
  });
  // A later timer that fires proves the loop ran past both deadlines.
  std::promise<void> later;
  std::unique_ptr<Timer> probe;
  OnLoop(loop.get(), [&] {
    probe = std::make_unique<Timer>(loop.get());
    probe->Start(50ms, [&] { later.set_value(); });
  });
  later.get_future().wait();
  EXPECT_EQ(calls.load(), 0);
  OnLoop(loop.get(), [&] {
    stopped.reset();
    probe.reset();
  });
  loop->Stop();
  EXPECT_EQ(loop->open_handles_after_stop(), 0);
}

TEST(TimerTest, RestartReplacesThePendingCallback) {
  auto loop = StartLoop();
  ASSERT_NE(loop, nullptr);
  std::atomic<int> first{0};
  std::promise<void> second;
  std::unique_ptr<Timer> timer;
  OnLoop(loop.get(), [&] {
    timer = std::make_unique<Timer>(loop.get());
    timer->Start(1ms, [&] { first.fetch_add(1); });
    timer->Start(20ms, [&] { second.set_value(); });
  });
  second.get_future().wait();
  EXPECT_EQ(first.load(), 0);
  OnLoop(loop.get(), [&] { timer.reset(); });
  loop->Stop();
  EXPECT_EQ(loop->open_handles_after_stop(), 0);
}

}  // namespace
}  // namespace sluice::transport
