// Timer: a one-shot timer on an EventLoop, so layers above transport/ (shuffle/) never touch
// uv_timer_t. Internal header (not installed).
//
// Loop-thread only: create, start, stop and destroy it on its loop's thread. The callback runs
// on that thread and may destroy the Timer that called it (the libuv handle is freed in its
// close callback, after the Timer is gone).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

namespace sluice::transport {

class EventLoop;

class Timer {
 public:
  // An idle timer on `loop` (not owned; must outlive the Timer).
  explicit Timer(EventLoop* loop);
  // Stops the timer; its callback never runs after this.
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Runs `callback` once after `delay`; replaces a pending start.
  void Start(std::chrono::milliseconds delay, std::function<void()> callback);
  // Cancels a pending start. Idempotent.
  void Stop();
  bool pending() const;

 private:
  struct Handle;
  Handle* handle_;  // freed by libuv's close callback
};

// The loop's cached clock in milliseconds (uv_now): the time at the start of this loop pass.
uint64_t LoopNowMs(EventLoop* loop);

}  // namespace sluice::transport
