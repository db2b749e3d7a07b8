#include "transport/event_loop.h"

#include <pthread.h>
#include <signal.h>

#include <future>
#include <utility>

namespace sluice::transport {

// An unbounded MPSC hand-off of heap-allocated tasks: producers push onto a lock-free stack
// with one CAS; the loop thread takes the whole stack with one exchange and runs it oldest
// first. Taking everything at once means no node is ever popped singly, so there is no ABA and
// no freelist: every shared access is an atomic with acquire/release, which ThreadSanitizer can
// check. (boost::lockfree::queue, used before, reads a freelist node's `next` without
// synchronization when producers race, a data race by the memory model that TSan reports.)
// Each Post allocates one node, fine for control messages; the data path batches before posting.
class EventLoop::Queue {
 public:
  Queue() = default;
  ~Queue() {
    Node* n = head_.exchange(nullptr, std::memory_order_acquire);
    while (n != nullptr) {
      Node* next = n->next;
      delete n;
      n = next;
    }
  }
  void Push(Task task) {
    auto* n = new Node{std::move(task), head_.load(std::memory_order_relaxed)};
    while (!head_.compare_exchange_weak(n->next, n, std::memory_order_release,
                                        std::memory_order_relaxed)) {
    }
  }
  // Runs every task queued now, in posting order; returns false when there was none.
  bool RunAll() {
    Node* n = head_.exchange(nullptr, std::memory_order_acquire);
    if (n == nullptr) return false;
    Node* oldest_first = nullptr;
    while (n != nullptr) {
      Node* next = n->next;
      n->next = oldest_first;
      oldest_first = n;
      n = next;
    }
    while (oldest_first != nullptr) {
      Node* next = oldest_first->next;
      oldest_first->task();
      delete oldest_first;
      oldest_first = next;
    }
    return true;
  }

 private:
  struct Node {
    Task task;
    Node* next;
  };
  std::atomic<Node*> head_{nullptr};
};

EventLoop::EventLoop(std::string name)
    : name_(std::move(name)), queue_(std::make_unique<Queue>()) {}

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
  queue_->Push(std::move(task));
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
  // One batch per wake-up: a task pushed after the exchange comes with its own uv_async_send,
  // so it gets a later wake-up, and busy producers cannot starve the sockets of this loop.
  queue_->RunAll();
  // The stop sequence runs in Run(), after uv_run returns: outside every callback, where it can
  // let close callbacks run (uv_run is not reentrant).
  if (stopping_.load(std::memory_order_seq_cst)) uv_stop(&loop_);
}

void EventLoop::AddStopHook(Task hook) { stop_hooks_.push_back(std::move(hook)); }

bool EventLoop::HasClosingHandles() {
  bool closing = false;
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void* arg) {
        if (uv_is_closing(h)) *static_cast<bool*>(arg) = true;
      },
      &closing);
  return closing;
}

void EventLoop::Run() {
  uv_run(&loop_, UV_RUN_DEFAULT);  // until Drain sees stopping_ and calls uv_stop

  // 1. Tasks posted before Stop (a Post that saw "not stopping" may still be pushing).
  while (posters_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  while (queue_->RunAll()) {
  }
  // 2. Owners close their handles (hooks may add hooks).
  while (!stop_hooks_.empty()) {
    std::vector<Task> hooks = std::move(stop_hooks_);
    stop_hooks_.clear();
    for (Task& hook : hooks) hook();
  }
  // 3. Let the close callbacks run; they may close further handles (a cancelled connect closes
  // its retry timer, a connection's last handle tells its handler), so repeat until none is
  // closing. Posts are refused by now; the async handle stays open until step 4.
  for (int i = 0; i < 10000 && HasClosingHandles(); ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  // 4. A handle other than ours still open had no owner to close it: count it as leaked (its
  // memory is not ours to free), close it, and close our async handle.
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
  uv_run(&loop_, UV_RUN_DEFAULT);  // only closing handles are left: returns once they closed
  int open = 0;
  uv_walk(
      &loop_, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &open);
  open_after_stop_.store(open + walk.leaked);
  uv_loop_close(&loop_);
}

void EventLoop::Stop() {
  SLUICE_CHECK(!IsLoopThread(), "EventLoop::Stop called on its own loop thread");
  std::lock_guard lock(stop_mu_);   // a second Stop() returns once the first has joined
  if (!thread_.joinable()) return;  // never started (Start failed) or already joined
  stopping_.store(true, std::memory_order_seq_cst);
  uv_async_send(&async_);
  thread_.join();
  // Tasks posted concurrently with Stop may remain; Queue's destructor frees them.
}

}  // namespace sluice::transport
