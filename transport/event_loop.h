// EventLoop: one libuv loop on its own thread. Every socket handle lives on exactly one loop
// and is touched only from that loop's thread.
//
// Other threads hand work in with Post(): tasks go onto a lock-free MPSC list and one
// uv_async_send wakes the loop; wake-ups coalesce, so each wake-up drains the whole list. A
// cross-core wake-up costs tens of microseconds here, so callers on the data path should batch
// (post once for many buffers) rather than post per buffer.
//
// Thread-safe: Post, Stop and the accessors may be called from any thread; loop() only on the
// loop thread.
#pragma once

#include <uv.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "buffer/status.h"

namespace sluice::transport {

class EventLoop {
 public:
  using Task = std::function<void()>;

  // Starts the loop thread. `name` appears in errors and the thread name.
  static Result<std::unique_ptr<EventLoop>> Start(std::string name);
  // Stops (see Stop) and joins.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs `task` on the loop thread, after the tasks posted before it. Returns false (and drops
  // the task) once the loop is stopping.
  bool Post(Task task);
  // Runs `task` now when called on the loop thread, else posts it.
  bool RunOrPost(Task task);
  bool IsLoopThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // Stops the loop: runs the tasks already posted, then the stop hooks (which close their
  // handles), lets every close callback run (they may close more handles), force-closes and
  // counts what is left, closes the loop and joins the thread. Idempotent and thread-safe (a
  // concurrent second call returns after the join).
  // REQUIRES: not called from the loop thread (checked).
  void Stop();
  // A hook run on the loop thread when Stop() begins, before remaining handles are force-closed
  // (servers and connections use it to close cleanly). Loop thread only.
  void AddStopHook(Task hook);

  // The libuv loop. Loop thread only.
  uv_loop_t* loop() { return &loop_; }
  const std::string& name() const { return name_; }
  // Handles that no owner closed: those the stop hooks left open (force-closed by Stop, their
  // memory leaked) plus any still open after the loop ended. The leak check after Stop: 0.
  int open_handles_after_stop() const { return open_after_stop_.load(); }

 private:
  explicit EventLoop(std::string name);
  void Run();
  void Drain();
  bool HasClosingHandles();
  static void OnAsync(uv_async_t* handle);

  class Queue;
  const std::string name_;
  uv_loop_t loop_;
  uv_async_t async_;
  std::unique_ptr<Queue> queue_;
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::atomic<bool> stopping_{false};
  std::atomic<int> posters_{0};
  std::atomic<int> open_after_stop_{0};
  std::vector<Task> stop_hooks_;  // loop thread only
  std::mutex stop_mu_;            // serializes Stop()
};

}  // namespace sluice::transport
