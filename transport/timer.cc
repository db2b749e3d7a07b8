#include "transport/timer.h"

#include <uv.h>

#include <utility>

#include "transport/event_loop.h"

namespace sluice::transport {

struct Timer::Handle {
  uv_timer_t timer;
  std::function<void()> callback;
};

Timer::Timer(EventLoop* loop) : handle_(new Handle) {
  uv_timer_init(loop->loop(), &handle_->timer);
  handle_->timer.data = handle_;
}

Timer::~Timer() {
  uv_timer_stop(&handle_->timer);
  handle_->callback = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_->timer),
           [](uv_handle_t* h) { delete static_cast<Handle*>(h->data); });
}

void Timer::Start(std::chrono::milliseconds delay, std::function<void()> callback) {
  handle_->callback = std::move(callback);
  uv_timer_start(
      &handle_->timer,
      [](uv_timer_t* t) {
        // Moved out first: the callback may destroy the Timer (and so clear handle->callback).
        std::function<void()> cb = std::move(static_cast<Handle*>(t->data)->callback);
        if (cb) cb();
      },
      static_cast<uint64_t>(delay.count() < 0 ? 0 : delay.count()), 0);
}

void Timer::Stop() {
  uv_timer_stop(&handle_->timer);
  handle_->callback = nullptr;
}

bool Timer::pending() const {
  return uv_is_active(reinterpret_cast<const uv_handle_t*>(&handle_->timer)) != 0;
}

uint64_t LoopNowMs(EventLoop* loop) { return uv_now(loop->loop()); }

}  // namespace sluice::transport
