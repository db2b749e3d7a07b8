// GateListener: the push mode of an InputGate. Instead of a consumer thread blocking in
// GetNext, the user's function runs on an IO thread whenever the gate has something new
// (ShuffleEnvironment::CreateInputGate with a listener), so a buffer reaches its consumer
// without waking another thread: the IO thread that read it runs the consumer's work.
//
//   channel becomes non-empty (any thread, under its lock) --> InputGate::QueueChannel
//     --> GateListener::Request() --> scheduler (ShuffleClient: at the end of the IO thread's
//         read pass, or one posted task) --> GateListener::Run() --> the user's function,
//         which drains the gate with PollNext / RecordReader::Next(0)
//
// Requests coalesce: one run is scheduled at a time, and a request made while the function
// runs on its own thread (its own PollNext finding a channel with more) is dropped, since the
// function drains the gate before it returns. Requests from other threads during a run
// schedule the next run.
//
// Close() (the gate's Close) waits for a run in progress on another thread and ends the
// calls: none starts after it returns. Called from inside the function (a consumer closing
// its gate at the end of input), it ends the calls after the current one.
//
// Thread-safe. Held by shared_ptr: the gate and every pending schedule keep it alive.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace sluice::shuffle {

class GateListener : public std::enable_shared_from_this<GateListener> {
 public:
  // Arranges one later call of Run() on the scheduler's thread. Any thread; it must not call
  // Run() itself (callers hold channel and gate locks).
  using Scheduler = std::function<void(std::shared_ptr<GateListener>)>;

  GateListener(std::function<void()> fn, Scheduler scheduler);

  // Something new is queued: schedules a run unless one is pending. Any thread.
  void Request();
  // Calls the function unless closed. The scheduler's thread.
  void Run();
  // No call starts after this returns (see above). Idempotent. Any thread.
  void Close();

  // Calls of the function so far (tests, metrics).
  uint64_t runs() const { return runs_.load(std::memory_order_relaxed); }

 private:
  bool RunningHere() const { return running_.load() == std::this_thread::get_id(); }

  const Scheduler scheduler_;
  std::mutex run_mu_;                       // held while the function runs
  std::function<void()> fn_;                // GUARDED_BY(run_mu_): released by Close
  bool closed_ = false;                     // GUARDED_BY(run_mu_)
  std::atomic<std::thread::id> running_{};  // the thread inside fn_, if any
  std::atomic<bool> requested_{false};      // a run is scheduled and has not started
  std::atomic<uint64_t> runs_{0};
};

}  // namespace sluice::shuffle
