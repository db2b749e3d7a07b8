#include "shuffle/gate_listener.h"

#include <utility>

namespace sluice::shuffle {

GateListener::GateListener(std::function<void()> fn, Scheduler scheduler)
    : scheduler_(std::move(scheduler)), fn_(std::move(fn)) {}

void GateListener::Request() {
  // The function's own PollNext re-queues a channel that holds more; the function takes it
  // before it returns, so no second run is needed for it.
  if (RunningHere()) return;
  if (requested_.exchange(true)) return;  // a run is pending: it will see this too
  scheduler_(shared_from_this());
}

void GateListener::Run() {
  // Cleared before the function drains, so a request from another thread that comes after
  // the drain looked schedules the next run instead of being lost.
  requested_.store(false);
  std::lock_guard lock(run_mu_);
  if (closed_ || !fn_) return;
  runs_.fetch_add(1, std::memory_order_relaxed);
  running_.store(std::this_thread::get_id());
  fn_();
  running_.store(std::thread::id());
  if (closed_) fn_ = nullptr;  // closed from inside: release what the function holds
}

void GateListener::Close() {
  if (RunningHere()) {
    closed_ = true;  // this thread holds run_mu_ (inside Run); fn_ is released after the call
    return;
  }
  std::function<void()> dead;  // destroyed after the lock: it may own the consumer's state
  {
    std::lock_guard lock(run_mu_);
    closed_ = true;
    dead = std::move(fn_);
    fn_ = nullptr;
  }
}

}  // namespace sluice::shuffle
