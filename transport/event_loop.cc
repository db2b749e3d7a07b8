#include "transport/event_loop.h"

#include <pthread.h>
#include <signal.h>

#include <boost/lockfree/queue.hpp>
#include <future>
#include <utility>

namespace sluice::transport {

// An unbounded MPSC hand-off of heap-allocated tasks; each Post allocates one node, which is
// fine for control messages. The data path batches before posting.
class EventLoop::Queue {
 public:
  Queue() : q_(1024) {}
  ~Queue() {
    Task* t = nullptr;
    while (q_.pop(t)) delete t;
  }
  void Push(Task* t) { q_.push(t); }
  Task* Pop() {
    Task* t = nullptr;
    return q_.pop(t) ? t : nullptr;
  }

 private:
  boost::lockfree::queue<Task*> q_;
};

EventLoop::EventLoop(std::string name) : name_(std::move(name)), queue_(std::make_unique<Queue>()) {}

Result<std::unique_ptr<EventLoop>> EventLoop::Start(std::string name) {
  std::unique_ptr<EventLoop> loop(new EventLoop(std::move(name)));
  if (int rc = uv_loop_init(&loop->loop_); rc != 0) {
    return IoError("event loop '" + loop->name_ + "': uv_loop_init failed: " + uv_strerror(rc));
  }
  loop->loop_.data = loop.get();
  if (int rc = uv_async_init(&loop->loop_, &loop->async_, &EventLoop::OnAsync); rc != 0) {
    uv_loop_close(&loop->loop_);
    return IoError("event loop '" + loop->name_ + "': uv_async_init failed: " + uv_strerror(rc));
  }
  loop->async_.data = loop.get();
  // The promise moves into the thread: set_value may still touch it after wait() returns.
  std::promise<void> started;
  auto started_f = started.get_future();
  EventLoop* raw = loop.get();
  loop->thread_ = std::thread([raw, started = std::move(started)]() mutable {
    raw->thread_id_.store(std::this_thread::get_id());
    pthread_setname_np(pthread_self(), raw->name_.substr(0, 15).c_str());
    // libuv writes with writev(), which raises SIGPIPE on a connection the peer reset; the
    // default action would kill the process. Blocked here, the write fails with EPIPE instead
    // and the connection closes with an error. (The signal is thread-directed, so this changes
    // nothing for the application's other threads.)
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    started.set_value();
    raw->Run();
  });
  started_f.wait();
  return loop;
}

EventLoop::~EventLoop() { Stop(); }

bool EventLoop::Post(Task task) {
  // posters_ keeps the async handle open while a Post that saw "not stopping" is in progress.
  // Sequentially consistent on purpose (here and in Drain): a Post increments posters_ then
  // reads stopping_, Stop sets stopping_ then Drain reads posters_; with weaker orders both
  // could miss the other's write and a task would be queued after the final drain.
  posters_.fetch_add(1, std::memory_order_seq_cst);
  if (stopping_.load(std::memory_order_seq_cst)) {
    posters_.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  queue_->Push(new Task(std::move(task)));
  uv_async_send(&async_);  // coalesces: only the first send before the callback writes
  posters_.fetch_sub(1, std::memory_order_seq_cst);
  return true;
}

bool EventLoop::RunOrPost(Task task) {
  if (IsLoopThread()) {
    task();
    return true;
  }
  return Post(std::move(task));
}

void EventLoop::OnAsync(uv_async_t* handle) { static_cast<EventLoop*>(handle->data)->Drain(); }

void EventLoop::Drain() {
  while (Task* t = queue_->Pop()) {
    (*t)();
    delete t;
  }
  if (stopping_.load(std::memory_order_seq_cst) && !stopped_.exchange(true)) {
    while (posters_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    while (Task* t = queue_->Pop()) {
      (*t)();
      delete t;
    }
    // Hooks may add hooks (or post): run a moved-out list until none is left.
    while (!stop_hooks_.empty()) {
      std::vector<Task> hooks = std::move(stop_hooks_);
      stop_hooks_.clear();
      for (Task& hook : hooks) hook();
    }
    // Close whatever the hooks left open, including our own async handle; the loop then runs
    // out of handles and uv_run returns. A handle other than ours that is still open here had
    // no owner to close it: it is counted as leaked (its memory is not ours to free).
    struct Walk {
      uv_handle_t* async;
      int leaked;
    } walk{reinterpret_cast<uv_handle_t*>(&async_), 0};
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void* arg) {
          auto* w = static_cast<Walk*>(arg);
          if (uv_is_closing(h)) return;
          if (h != w->async) ++w->leaked;
          uv_close(h, nullptr);
        },
        &walk);
    force_closed_ = walk.leaked;
  }
}

void EventLoop::AddStopHook(Task hook) { stop_hooks_.push_back(std::move(hook)); }

void EventLoop::Run() {
  uv_run(&loop_, UV_RUN_DEFAULT);
  // Count handles that are still open: after a clean stop there are none.
  int open = 0;
  uv_walk(&loop_, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &open);
  open_after_stop_.store(open + force_closed_);
  uv_loop_close(&loop_);
}

void EventLoop::Stop() {
  SLUICE_CHECK(!IsLoopThread(), "EventLoop::Stop called on its own loop thread");
  std::lock_guard lock(stop_mu_);  // a second Stop() returns once the first has joined
  if (!thread_.joinable()) return;  // never started (Start failed) or already joined
  stopping_.store(true, std::memory_order_seq_cst);
  uv_async_send(&async_);
  thread_.join();
  // Tasks posted concurrently with Stop may remain; Queue's destructor frees them.
}

}  // namespace sluice::transport
