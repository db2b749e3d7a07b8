#include "tools/daemon/local_writer_service.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "client/local_protocol.h"
#include "schema/messages.h"
#include "shuffle/auth.h"
#include "shuffle/handshake.h"
#include "transport/log.h"
#include "sluice/buffer/segment_arena.h"

namespace sluice::daemon {

using client::local::LocalType;
namespace local = client::local;

namespace {

class StoreSink final : public WriterSink {
 public:
  explicit StoreSink(store::PartitionStore* store) : store_(store) {}
  Result<store::WriterId> OpenWriter(const store::WriterSpec& spec) override {
    return store_->OpenWriter(spec);
  }
  Status Append(store::WriterId writer, uint32_t subpartition, buffer::Buffer filled,
                uint32_t records) override {
    return store_->Append(writer, subpartition, std::move(filled), records);
  }
  Result<client::MapOutput> Commit(store::WriterId writer) override {
    return store_->Commit(writer);
  }
  void Abort(store::WriterId writer, std::string reason) override {
    store_->Abort(writer, std::move(reason));
  }
  // The store holds all of this writer's segments: its thread spills that output (whatever
  // its memory budget), so the segments come back as credit; at the quota the writer waits. A
  // failed spill aborts the writer in the store, and its next message gets the error.
  void WriterWaiting(store::WriterId writer) override { store_->WriterWaiting(writer); }

 private:
  store::PartitionStore* const store_;
};

// The service's poll timeout, and how often a writer that stays starved is reported again.
constexpr int kPollMs = 100;
constexpr auto kWaitingRepeat = std::chrono::milliseconds(200);

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

std::unique_ptr<WriterSink> MakeStoreSink(store::PartitionStore* store) {
  return std::make_unique<StoreSink>(store);
}

// One writer's shared memory. Referenced by its connection (1) and by every slot the sink holds
// (1 each); deletes itself at 0 (from whichever thread dropped the last reference), giving its
// reserved segments back to the pool. Slots the sink releases are queued for the service thread
// to return as credit while the connection is attached.
class WriterArena final : public buffer::SlotListener {
 public:
  // `live` counts arenas and `reserved` their segments (both outlive every arena).
  static Result<WriterArena*> Create(std::shared_ptr<buffer::NetworkBufferPool> pool,
                                     uint32_t slots, std::chrono::milliseconds reserve_timeout,
                                     int wake_fd, std::atomic<uint64_t>* live,
                                     std::atomic<uint64_t>* reserved);

  int memfd() const { return memfd_; }
  void CloseMemfd() {
    if (memfd_ >= 0) ::close(memfd_);
    memfd_ = -1;
  }
  buffer::SegmentArena& segments() { return *segments_; }
  // Service thread: one more slot in the sink.
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // Service thread: the connection lets go (no more credit notices).
  void Detach() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake_fd_ = -1;
      returned_.clear();
    }
    Unref();
  }
  // Service thread: slots released by the sink since the last call.
  void TakeReturned(std::vector<uint32_t>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    out->swap(returned_);
    returned_.clear();
  }
  void SlotRecycled(uint32_t slot) override;
  // Service thread: whether this thread is the service's (no wake-up needed then).
  static thread_local bool on_service_thread;

 private:
  WriterArena() = default;
  ~WriterArena() override;

  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  std::vector<buffer::MemorySegment*> reserved_;
  int memfd_ = -1;
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
  std::unique_ptr<buffer::SegmentArena> segments_;
  std::atomic<uint64_t>* live_ = nullptr;
  std::atomic<uint64_t>* reserved_count_ = nullptr;
  std::atomic<int64_t> refs_{1};
  std::mutex mu_;
  int wake_fd_ = -1;                // GUARDED_BY(mu_); -1 once detached
  std::vector<uint32_t> returned_;  // GUARDED_BY(mu_)
};

thread_local bool WriterArena::on_service_thread = false;

Result<WriterArena*> WriterArena::Create(std::shared_ptr<buffer::NetworkBufferPool> pool,
                                         uint32_t slots, std::chrono::milliseconds reserve_timeout,
                                         int wake_fd, std::atomic<uint64_t>* live,
                                         std::atomic<uint64_t>* reserved_count) {
  auto reserved = pool->RequestExclusiveSegments(slots, reserve_timeout);
  if (!reserved.ok()) {
    return Status(reserved.status().code(),
                  "write credit of " + std::to_string(slots) + " segments: " +
                      reserved.status().message());
  }
  auto* a = new WriterArena();
  a->pool_ = std::move(pool);
  a->reserved_ = std::move(*reserved);
  a->live_ = live;
  live->fetch_add(1, std::memory_order_relaxed);
  a->reserved_count_ = reserved_count;
  reserved_count->fetch_add(a->reserved_.size(), std::memory_order_relaxed);
  const uint32_t seg = a->pool_->segment_size();
  a->bytes_ = size_t{slots} * seg;
  a->memfd_ = ::memfd_create("sluice-writer-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  Status error;
  if (a->memfd_ < 0 || ::ftruncate(a->memfd_, static_cast<off_t>(a->bytes_)) != 0) {
    error = IoError(Errno("memfd for a writer arena"));
  } else if (::fcntl(a->memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    error = IoError(Errno("sealing a writer arena"));
  } else {
    void* p = ::mmap(nullptr, a->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, a->memfd_, 0);
    if (p == MAP_FAILED) {
      error = IoError(Errno("mmap of a writer arena"));
    } else {
      a->base_ = static_cast<uint8_t*>(p);
    }
  }
  if (!error.ok()) {
    a->Unref();
    return error;
  }
  a->segments_ = std::make_unique<buffer::SegmentArena>(a->base_, slots, seg, a);
  a->wake_fd_ = wake_fd;
  return a;
}

WriterArena::~WriterArena() {
  segments_.reset();
  if (base_ != nullptr) ::munmap(base_, bytes_);
  CloseMemfd();
  reserved_count_->fetch_sub(reserved_.size(), std::memory_order_relaxed);
  if (!reserved_.empty()) pool_->RecycleExclusiveSegments(reserved_);
  live_->fetch_sub(1, std::memory_order_relaxed);
}

void WriterArena::SlotRecycled(uint32_t slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (wake_fd_ >= 0) {
      returned_.push_back(slot);
      // Under the lock: Detach (which precedes the service's end) cannot pass us.
      if (!on_service_thread) {
        const uint64_t one = 1;
        (void)!::write(wake_fd_, &one, sizeof(one));
      }
    }
  }
  Unref();
}

// ---------------------------------------------------------------------------------------------

// Reserves writer arenas on a thread of its own, so that a writer whose credit waits for free
// segments (up to reserve_timeout) does not hold up the writers the service thread serves
// meanwhile. Requests are served in order, each within reserve_timeout of its own request;
// results wait for the service thread (Take), which is woken through its eventfd.
// Thread-safe; Stop() before the pool, the counters and the eventfd go.
class ArenaReserver {
 public:
  struct Done {
    uint64_t conn;   // the connection that asked
    uint32_t slots;  // what it asked for
    Result<WriterArena*> arena;
  };

  ArenaReserver(std::shared_ptr<buffer::NetworkBufferPool> pool,
                std::chrono::milliseconds timeout, int wake_fd, std::atomic<uint64_t>* live,
                std::atomic<uint64_t>* reserved)
      : pool_(std::move(pool)), timeout_(timeout), wake_fd_(wake_fd), live_(live),
        reserved_(reserved), thread_([this] { Run(); }) {}
  ~ArenaReserver() { Stop(); }
  ArenaReserver(const ArenaReserver&) = delete;
  ArenaReserver& operator=(const ArenaReserver&) = delete;

  void Request(uint64_t conn, uint32_t slots) {
    std::lock_guard<std::mutex> lock(mu_);
    todo_.push_back({conn, slots, std::chrono::steady_clock::now() + timeout_});
    pending_segments_ += slots;
    cv_.notify_one();
  }
  // The results so far; their segments no longer count in pending_segments().
  std::vector<Done> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Done> out;
    out.swap(done_);
    for (const Done& d : out) pending_segments_ -= d.slots;
    return out;
  }
  // Segments asked for and not taken yet (not in the arenas' reserved count until then).
  uint64_t pending_segments() const {
    std::lock_guard<std::mutex> lock(mu_);
    return pending_segments_;
  }
  // Waits for a reservation in progress (at most reserve_timeout), drops the requests not
  // started and frees the arenas not taken. Idempotent.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
    for (Done& d : done_) {
      if (d.arena.ok()) (*d.arena)->Detach();
    }
    done_.clear();
  }

 private:
  struct Todo {
    uint64_t conn;
    uint32_t slots;
    std::chrono::steady_clock::time_point deadline;
  };

  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || !todo_.empty(); });
      if (stop_) return;
      const Todo t = todo_.front();
      todo_.pop_front();
      lock.unlock();
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(
          t.deadline - std::chrono::steady_clock::now());
      Result<WriterArena*> arena = WriterArena::Create(
          pool_, t.slots, std::max(left, std::chrono::milliseconds(0)), wake_fd_, live_, reserved_);
      lock.lock();
      done_.push_back({t.conn, t.slots, std::move(arena)});
      const uint64_t one = 1;
      (void)!::write(wake_fd_, &one, sizeof(one));
    }
  }

  const std::shared_ptr<buffer::NetworkBufferPool> pool_;
  const std::chrono::milliseconds timeout_;
  const int wake_fd_;
  std::atomic<uint64_t>* const live_;
  std::atomic<uint64_t>* const reserved_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Todo> todo_;          // GUARDED_BY(mu_)
  std::vector<Done> done_;         // GUARDED_BY(mu_)
  uint64_t pending_segments_ = 0;  // GUARDED_BY(mu_)
  bool stop_ = false;              // GUARDED_BY(mu_)
  std::thread thread_;             // last: starts after the fields above
};

class LocalWriterService::Impl {
 public:
  Impl(const LocalWriterServiceOptions& options, std::shared_ptr<buffer::NetworkBufferPool> pool,
       WriterSink* sink)
      : options_(options), pool_(std::move(pool)), sink_(sink) {}
  ~Impl() { Stop(); }

  Status Bind();
  void Run();
  void Stop();
  LocalWriterStats Stats() const;
  const std::string& path() const { return options_.socket_path; }
  void StartThread() {
    reserver_ = std::make_unique<ArenaReserver>(pool_, options_.reserve_timeout, wake_fd_,
                                                &arenas_, &reserved_segments_);
    thread_ = std::thread([this] { Run(); });
  }

 private:
  // kReserving: opened in the sink, its arena asked of the reserver, no grant sent yet.
  enum class Phase { kHandshake, kOpen, kReserving, kWriting, kCommitted };
  struct Conn {
    uint64_t id = 0;  // for the reserver's results
    int fd = -1;
    std::string peer;  // "pid P uid U" for messages
    std::unique_ptr<shuffle::ServerHandshake> hs;
    std::unique_ptr<local::FrameReader> reader;
    std::chrono::steady_clock::time_point since;
    Phase phase = Phase::kHandshake;
    store::WriterSpec spec;
    store::WriterId writer = 0;
    bool writer_open = false;  // opened in the sink, not committed or aborted
    WriterArena* arena = nullptr;
    std::vector<uint8_t> in_sink;  // per slot: 1 while the sink holds it
    uint32_t slots_in_sink = 0;
    std::vector<local::RecordFraming> framing;
    bool closing = false;
    bool waiting = false;  // every slot in the sink
    std::chrono::steady_clock::time_point asked;  // when the sink was last told it waits
  };

  void Accept();
  // Reads and serves what one connection sent; false when it must close.
  bool ServeReadable(Conn& c);
  Status Serve(Conn& c, uint8_t type, std::span<const uint8_t> body);
  Status OnHandshake(Conn& c, uint8_t type, std::span<const uint8_t> body);
  Status OnOpenWriter(Conn& c, std::span<const uint8_t> body);
  // The reserver's results: a grant to each connection still waiting for one (an arena whose
  // connection went is freed), or its failure.
  void TakeReservations();
  Status Grant(Conn& c, WriterArena* arena);
  Status OnFilled(Conn& c, std::span<const uint8_t> body);
  Status OnCommit(Conn& c);
  void SendCredits();
  // Tells the sink about writers whose every slot it holds (once per starvation, and again every
  // kWaitingRepeat while it lasts: space under the quota may have been freed, a pipelined
  // writer's reader may have stalled); closes the connections marked closing; updates the
  // waiting gauge.
  void CheckConnections();
  // Fails the writer (the sink aborts it with `why`), tells it, and marks the connection closed.
  void Fail(Conn& c, const Status& why, bool tell);
  void AbortGone(Conn& c);
  void Close(Conn& c);
  std::string Who(const Conn& c) const;

  const LocalWriterServiceOptions options_;
  const std::shared_ptr<buffer::NetworkBufferPool> pool_;
  WriterSink* const sink_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::list<Conn> conns_;  // service thread only
  uint64_t next_conn_id_ = 1;  // service thread only
  std::unique_ptr<ArenaReserver> reserver_;  // started before, stopped after the thread
  std::vector<uint32_t> scratch_;      // slots returned by one arena (service thread)
  std::vector<uint8_t> credit_frame_;  // the Credit frame being sent (service thread)
  schema::MessageBuilder mb_;

  std::atomic<uint64_t> connections_{0}, opened_{0}, committed_{0}, aborted_{0}, failed_{0},
      refused_{0}, buffers_{0}, bytes_{0}, arenas_{0}, waiting_{0}, reserved_segments_{0};
};

Status LocalWriterService::Impl::Bind() {
  const std::string& path = options_.socket_path;
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("local_socket '" + path + "' must be 1.." +
                           std::to_string(sizeof(addr.sun_path) - 1) + " bytes long");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return InvalidArgument("local_socket " + path + " exists and is not a socket; remove it "
                             "or set local_socket to another path");
    }
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = probe >= 0 &&
                      ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (probe >= 0) ::close(probe);
    if (live) {
      return InvalidArgument("local_socket " + path + " is in use by another process (another "
                             "sluiced with this state directory?); stop it or set local_socket");
    }
    ::unlink(path.c_str());  // stale: left by a daemon that did not stop cleanly
  }
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) return IoError(Errno("local_socket: socket"));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return IoError(Errno(("local_socket " + path + ": bind").c_str()));
  }
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(listen_fd_, 128) != 0) {
    const Status s = IoError(Errno(("local_socket " + path).c_str()));
    ::unlink(path.c_str());
    return s;
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return IoError(Errno("local writer service: eventfd"));
  return Status::Ok();
}

std::string LocalWriterService::Impl::Who(const Conn& c) const {
  std::string s = "local writer (" + c.peer + ")";
  if (c.phase == Phase::kReserving || c.phase == Phase::kWriting ||
      c.phase == Phase::kCommitted) {
    s += " of job " + c.spec.job + " partition " + std::to_string(c.spec.partition) +
         " attempt " + std::to_string(c.spec.attempt);
  }
  return s;
}

void LocalWriterService::Impl::Accept() {
  while (true) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;  // EAGAIN, or an error the next poll reports again
    ucred cred{};
    socklen_t len = sizeof(cred);
    const bool have_cred = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    const std::string peer = have_cred ? "pid " + std::to_string(cred.pid) + " uid " +
                                             std::to_string(cred.uid)
                                       : "unknown peer";
    Status refuse;
    if (!have_cred || (!options_.any_uid && cred.uid != ::geteuid())) {
      refuse = Status(StatusCode::kPermissionDenied,
                      "local writer (" + peer + ") refused: only uid " +
                          std::to_string(::geteuid()) + " (the daemon's) may write through " +
                          options_.socket_path + "; set local_socket_any_uid = true to allow "
                          "other users (they still need the secret)");
    } else if (conns_.size() >= options_.max_connections) {
      refuse = ResourceExhausted("local writer (" + peer + ") refused: " +
                                 std::to_string(conns_.size()) + " local connections are open "
                                 "(the limit); retry later");
    }
    if (!refuse.ok()) {
      ++refused_;
      (void)local::SendFrameNoWait(fd, local::EncodeError(refuse), peer);
      ::close(fd);
      continue;
    }
    Conn& c = conns_.emplace_back();
    c.id = next_conn_id_++;
    c.fd = fd;
    c.peer = peer;
    c.hs = std::make_unique<shuffle::ServerHandshake>(options_.auth, pool_->segment_size(),
                                                      options_.node_name, peer);
    c.reader = std::make_unique<local::FrameReader>(fd, peer, /*accept_fds=*/false);
    c.since = std::chrono::steady_clock::now();
    ++connections_;
  }
}

void LocalWriterService::Impl::Run() {
  WriterArena::on_service_thread = true;
  std::vector<pollfd> fds;
  std::vector<Conn*> order;
  while (!stop_.load(std::memory_order_acquire)) {
    fds.clear();
    order.clear();
    fds.push_back({listen_fd_, POLLIN, 0});
    fds.push_back({wake_fd_, POLLIN, 0});
    for (Conn& c : conns_) {
      fds.push_back({c.fd, POLLIN, 0});
      order.push_back(&c);
    }
    if (::poll(fds.data(), fds.size(), kPollMs) < 0 && errno != EINTR) break;
    if (fds[1].revents != 0) {
      uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof(n));
    }
    for (size_t i = 0; i < order.size(); ++i) {
      if (fds[i + 2].revents != 0 && !order[i]->closing && !ServeReadable(*order[i])) {
        order[i]->closing = true;
      }
    }
    TakeReservations();
    SendCredits();
    if (fds[0].revents != 0) Accept();
    CheckConnections();
    // Slots released on this thread meanwhile (an abort) wrote no wake-up: send them now.
    SendCredits();
  }
  for (Conn& c : conns_) {
    Fail(c, Status(StatusCode::kClosed, "daemon " + options_.node_name + " is shutting down: "
                                        "the writer's uncommitted output was dropped"),
         true);
    Close(c);
  }
  conns_.clear();
}

void LocalWriterService::Impl::CheckConnections() {
  const auto now = std::chrono::steady_clock::now();
  uint64_t waiting = 0;
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn& c = *it;
    if ((c.phase == Phase::kHandshake || c.phase == Phase::kOpen) &&
        now - c.since > options_.handshake_timeout) {
      Fail(c, TimeoutError(Who(c) + " did not authenticate and open a writer within " +
                           std::to_string(options_.handshake_timeout.count()) + " ms"),
           true);
    }
    const bool starved = c.phase == Phase::kWriting && c.writer_open &&
                         c.slots_in_sink == c.in_sink.size();
    if (starved) {
      ++waiting;
      if (!c.waiting || now - c.asked >= kWaitingRepeat) {
        sink_->WriterWaiting(c.writer);
        c.asked = now;
      }
    }
    c.waiting = starved;
    if (c.closing) {
      Close(c);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
  waiting_.store(waiting, std::memory_order_relaxed);
}

bool LocalWriterService::Impl::ServeReadable(Conn& c) {
  while (true) {
    auto frame = c.reader->Next(/*wait=*/false);
    if (!frame.ok()) {
      if (frame.status().code() == StatusCode::kClosed) {
        AbortGone(c);
        return false;
      }
      Fail(c, Status(frame.status().code(), Who(c) + ": " + frame.status().message()), true);
      return false;
    }
    if (!frame->has_value()) return true;
    if (Status s = Serve(c, (*frame)->type, (*frame)->body); !s.ok()) {
      Fail(c, s, true);
      return false;
    }
    if (c.closing) return false;
  }
}

Status LocalWriterService::Impl::Serve(Conn& c, uint8_t type, std::span<const uint8_t> body) {
  if (c.phase == Phase::kHandshake) return OnHandshake(c, type, body);
  const auto t = static_cast<LocalType>(type);
  const std::string name(local::LocalTypeName(type));
  if (t == LocalType::kOpenWriter && c.phase == Phase::kOpen) return OnOpenWriter(c, body);
  if (t == LocalType::kFilled && c.phase == Phase::kWriting) return OnFilled(c, body);
  if (t == LocalType::kCommit && c.phase == Phase::kWriting) return OnCommit(c);
  if (t == LocalType::kAbort) {
    auto reason = local::ParseText(t, body, local::kMaxReasonLength);
    if (!reason.ok()) return reason.status();
    if (c.writer_open) {
      sink_->Abort(c.writer, Who(c) + " aborted: " + *reason);
      c.writer_open = false;
      ++aborted_;
    }
    c.closing = true;
    return Status::Ok();
  }
  return ProtocolError(Who(c) + " sent " + name + " " +
                       (c.phase == Phase::kOpen        ? "before OpenWriter"
                        : c.phase == Phase::kReserving ? "before its credit was granted"
                        : c.phase == Phase::kCommitted ? "after Commit"
                                                       : "which a writer never sends"));
}

Status LocalWriterService::Impl::OnHandshake(Conn& c, uint8_t type,
                                             std::span<const uint8_t> body) {
  const auto t = static_cast<LocalType>(type);
  if (t == LocalType::kHello) {
    auto hello = schema::ParseHello(body);
    if (!hello.ok()) return hello.status();
    schema::HandshakeFields ack;
    if (auto e = c.hs->OnHello(**hello, &ack)) return shuffle::HandshakeStatus(*e);
    auto frame = local::EncodeFrame(LocalType::kHelloAck, mb_.HelloAck(ack));
    if (Status s = local::SendFrameNoWait(c.fd, frame, c.peer); !s.ok()) return s;
  } else if (t == LocalType::kAuthResponse) {
    auto response = schema::ParseAuthResponse(body);
    if (!response.ok()) return response.status();
    if (auto e = c.hs->OnAuthResponse(**response)) return shuffle::HandshakeStatus(*e);
  } else {
    return Status(StatusCode::kPermissionDenied,
                  Who(c) + " sent " + std::string(local::LocalTypeName(type)) +
                      " before authenticating: a writer must prove the cluster secret first "
                      "(Hello, AuthResponse); give it the secret or the daemon's state_dir");
  }
  if (c.hs->authenticated()) c.phase = Phase::kOpen;
  return Status::Ok();
}

Status LocalWriterService::Impl::OnOpenWriter(Conn& c, std::span<const uint8_t> body) {
  auto m = local::ParseOpenWriter(body);
  if (!m.ok()) return m.status();
  if (m->token.size() < shuffle::auth::kMinJobTokenLength) {
    // The first writer's token guards the job: readers, read sets and release need it.
    return Status(StatusCode::kPermissionDenied,
                  Who(c) + ": job '" + m->job + "' token is " + std::to_string(m->token.size()) +
                      " characters; a job needs a random token of at least " +
                      std::to_string(shuffle::auth::kMinJobTokenLength) +
                      " (WriterOptions::token, e.g. shuffle::auth::MakeJobToken(); sluice put "
                      "makes one)");
  }
  const uint32_t credit = m->credit == 0 ? options_.writer_credit : m->credit;
  if (credit > options_.max_writer_credit) {
    return InvalidArgument(Who(c) + " asked for " + std::to_string(credit) +
                           " segments of write credit; this daemon grants at most " +
                           std::to_string(options_.max_writer_credit) + " (writer_max_credit)");
  }
  // Arenas held, and those the reserver is still getting (not counted in the former yet).
  const uint64_t reserved =
      reserved_segments_.load(std::memory_order_relaxed) + reserver_->pending_segments();
  if (options_.max_reserved_segments != 0 && reserved + credit > options_.max_reserved_segments) {
    return ResourceExhausted(Who(c) + " asked for " + std::to_string(credit) +
                             " segments of write credit; local writers hold " +
                             std::to_string(reserved) + " of the " +
                             std::to_string(options_.max_reserved_segments) +
                             " they may (half of network_memory); retry when writers finish, or "
                             "raise network_memory");
  }
  c.spec.job = m->job;
  c.spec.token = m->token;
  c.spec.partition = m->partition;
  c.spec.attempt = m->attempt;
  c.spec.subpartitions = m->subpartitions;
  c.spec.mode = m->mode == local::WireMode::kBlocking ? store::PartitionMode::kBlocking
                                                      : store::PartitionMode::kPipelined;
  c.spec.retention = std::chrono::seconds(m->retention_s);
  auto id = sink_->OpenWriter(c.spec);
  if (!id.ok()) return id.status();
  c.phase = Phase::kReserving;
  c.writer = *id;
  c.writer_open = true;
  ++opened_;
  // The segments may have to be waited for: on the reserver's thread, not this one.
  reserver_->Request(c.id, credit);
  return Status::Ok();
}

void LocalWriterService::Impl::TakeReservations() {
  for (ArenaReserver::Done& d : reserver_->Take()) {
    auto it = std::find_if(conns_.begin(), conns_.end(),
                           [&](const Conn& c) { return c.id == d.conn; });
    const bool waiting = it != conns_.end() && !it->closing && it->phase == Phase::kReserving;
    if (!waiting) {
      if (d.arena.ok()) (*d.arena)->Detach();  // the writer went (or failed) meanwhile
      continue;
    }
    Conn& c = *it;
    const Status s = d.arena.ok() ? Grant(c, *d.arena)
                                  : Status(d.arena.status().code(),
                                           Who(c) + ": " + d.arena.status().message());
    if (!s.ok()) Fail(c, s, true);
  }
}

Status LocalWriterService::Impl::Grant(Conn& c, WriterArena* arena) {
  c.arena = arena;
  const uint32_t credit = arena->segments().slots();
  c.in_sink.assign(credit, 0);
  c.framing.assign(c.spec.subpartitions, local::RecordFraming(options_.max_record));
  c.phase = Phase::kWriting;
  const auto grant = local::EncodeGrant({pool_->segment_size(), credit});
  Status s = local::SendFrameNoWait(c.fd, grant, c.peer, c.arena->memfd());
  c.arena->CloseMemfd();
  return s;
}

Status LocalWriterService::Impl::OnFilled(Conn& c, std::span<const uint8_t> body) {
  auto m = local::ParseFilled(body);
  if (!m.ok()) return m.status();
  const auto granted = static_cast<uint32_t>(c.in_sink.size());
  const uint32_t seg = pool_->segment_size();
  if (m->slot >= granted) {
    return ProtocolError(Who(c) + " handed over slot " + std::to_string(m->slot) + ", but only " +
                         std::to_string(granted) + " slots (0.." + std::to_string(granted - 1) +
                         ") were granted to it");
  }
  if (c.in_sink[m->slot] != 0) {
    return ProtocolError(Who(c) + " handed over slot " + std::to_string(m->slot) +
                         " again: it was handed over before and not returned as credit yet");
  }
  if (m->subpartition >= c.spec.subpartitions) {
    return ProtocolError(Who(c) + " handed over a buffer of subpartition " +
                         std::to_string(m->subpartition) + "; it opened " +
                         std::to_string(c.spec.subpartitions) + " subpartitions");
  }
  if (m->size == 0 || m->size > seg) {
    return ProtocolError(Who(c) + " handed over a buffer of " + std::to_string(m->size) +
                         " bytes; a segment holds 1.." + std::to_string(seg));
  }
  buffer::SegmentArena& segments = c.arena->segments();
  auto records = c.framing[m->subpartition].Check({segments.slot_data(m->slot), m->size});
  if (!records.ok()) {
    return ProtocolError(Who(c) + ", subpartition " + std::to_string(m->subpartition) + ": " +
                         records.status().message());
  }
  c.in_sink[m->slot] = 1;
  ++c.slots_in_sink;
  c.arena->Ref();
  ++buffers_;
  bytes_ += m->size;
  Status s = sink_->Append(c.writer, m->subpartition, segments.Wrap(m->slot, m->size), *records);
  if (!s.ok()) return Status(s.code(), Who(c) + ": " + s.message());
  return Status::Ok();
}

Status LocalWriterService::Impl::OnCommit(Conn& c) {
  for (uint32_t s = 0; s < c.framing.size(); ++s) {
    if (!c.framing[s].AtBoundary()) {
      return ProtocolError(Who(c) + " committed with subpartition " + std::to_string(s) +
                           " ending inside a record; nothing was committed");
    }
  }
  auto out = sink_->Commit(c.writer);
  if (!out.ok()) return Status(out.status().code(), Who(c) + ": " + out.status().message());
  c.writer_open = false;
  c.phase = Phase::kCommitted;
  ++committed_;
  const auto ack = local::EncodeText(LocalType::kCommitAck, client::EncodeMapOutput(*out));
  if (!local::SendFrameNoWait(c.fd, ack, c.peer).ok()) c.closing = true;
  return Status::Ok();
}

void LocalWriterService::Impl::SendCredits() {
  for (Conn& c : conns_) {
    if (c.arena == nullptr) continue;
    c.arena->TakeReturned(&scratch_);
    if (scratch_.empty()) continue;
    for (uint32_t slot : scratch_) {
      c.in_sink[slot] = 0;
      --c.slots_in_sink;
    }
    c.waiting = false;  // a later starvation is a new one
    if (c.closing || c.phase == Phase::kCommitted) continue;
    local::EncodeCreditInto(scratch_, &credit_frame_);
    // Never waits: a writer has at most its granted slots' credit unread, a few hundred bytes,
    // so a full socket means a writer that does not read; waiting for it would stall every
    // other writer on this thread.
    const Status sent = local::SendFrameNoWait(c.fd, credit_frame_, c.peer);
    if (sent.code() == StatusCode::kResourceExhausted) {
      Fail(c, Status(sent.code(), Who(c) + " does not read its credit: " + sent.message()),
           /*tell=*/false);
    } else if (!sent.ok()) {
      c.closing = true;  // gone: AbortGone names it
    }
  }
}

void LocalWriterService::Impl::Fail(Conn& c, const Status& why, bool tell) {
  if (c.writer_open) {
    sink_->Abort(c.writer, why.message());
    c.writer_open = false;
    ++aborted_;
  }
  ++failed_;
  if (tell) (void)local::SendFrameNoWait(c.fd, local::EncodeError(why), c.peer);
  c.closing = true;
}

// The peer went away with its writer open: seen as end of stream on a read, or as a failed
// send of credit (the same death, whichever the loop noticed first).
void LocalWriterService::Impl::AbortGone(Conn& c) {
  if (!c.writer_open) return;
  sink_->Abort(c.writer, Who(c) + " closed its local connection before Commit (the writer "
                                  "process exited or was killed)");
  c.writer_open = false;
  ++aborted_;
}

void LocalWriterService::Impl::Close(Conn& c) {
  AbortGone(c);
  if (c.arena != nullptr) c.arena->Detach();
  c.arena = nullptr;
  c.reader.reset();
  if (c.fd >= 0) ::close(c.fd);
  c.fd = -1;
  --connections_;
}

void LocalWriterService::Impl::Stop() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  // After the thread (which failed the writers still waiting) and before the eventfd goes.
  if (reserver_) reserver_->Stop();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(options_.socket_path.c_str());
    listen_fd_ = -1;
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  wake_fd_ = -1;
}

LocalWriterStats LocalWriterService::Impl::Stats() const {
  LocalWriterStats s;
  s.connections = connections_.load();
  s.writers_opened = opened_.load();
  s.writers_committed = committed_.load();
  s.writers_aborted = aborted_.load();
  s.writers_failed = failed_.load();
  s.refused = refused_.load();
  s.buffers = buffers_.load();
  s.bytes = bytes_.load();
  s.arenas = arenas_.load();
  s.reserved_segments = reserved_segments_.load();
  s.writers_waiting = waiting_.load();
  return s;
}

Result<std::unique_ptr<LocalWriterService>> LocalWriterService::Start(
    const LocalWriterServiceOptions& options, std::shared_ptr<buffer::NetworkBufferPool> pool,
    WriterSink* sink) {
  if (Status s = shuffle::auth::ValidateAuthConfig(options.auth, "local writer service");
      !s.ok()) {
    return s;
  }
  if (options.auth.off) {  // sluiced serves no unauthenticated peer, local ones included
    return InvalidArgument("local writer service: auth.off is not supported; give it the "
                           "daemon's secret (auth.secret)");
  }
  if (options.writer_credit == 0 || options.writer_credit > options.max_writer_credit) {
    return InvalidArgument("writer_credit " + std::to_string(options.writer_credit) +
                           " must be 1..writer_max_credit (" +
                           std::to_string(options.max_writer_credit) + ")");
  }
  auto impl = std::make_unique<Impl>(options, std::move(pool), sink);
  if (Status s = impl->Bind(); !s.ok()) return s;
  impl->StartThread();
  return std::unique_ptr<LocalWriterService>(new LocalWriterService(std::move(impl)));
}

std::string RenderLocalWriterMetrics(const std::string& node, const LocalWriterStats& stats) {
  std::string label;
  for (const char c : node) {
    if (c == '\\' || c == '"') label += '\\';
    if (c == '\n') {
      label += "\\n";
      continue;
    }
    label += c;
  }
  std::string out;
  auto add = [&](const char* name, const char* type, const char* help, uint64_t v) {
    out += std::string("# HELP sluice_") + name + " " + help + "\n# TYPE sluice_" + name + " " +
           type + "\nsluice_" + name + "{node=\"" + label + "\"} " + std::to_string(v) + "\n";
  };
  add("local_writer_connections", "gauge", "open local writer connections", stats.connections);
  add("local_writers_opened_total", "counter", "local writers opened", stats.writers_opened);
  add("local_writers_committed_total", "counter", "local writers committed",
      stats.writers_committed);
  add("local_writers_aborted_total", "counter",
      "local writers aborted (Abort, disconnect before Commit, failure)", stats.writers_aborted);
  add("local_writers_failed_total", "counter", "local writers failed for breaking a rule",
      stats.writers_failed);
  add("local_writer_refused_total", "counter", "local connections refused (uid, limit)",
      stats.refused);
  add("local_writer_buffers_total", "counter", "buffers handed over by local writers",
      stats.buffers);
  add("local_writer_bytes_total", "counter", "bytes handed over by local writers", stats.bytes);
  add("local_writer_arenas", "gauge", "live writer arenas (shared memory)", stats.arenas);
  add("local_writer_reserved_segments", "gauge",
      "network memory segments the writer arenas reserve (at most half of the pool)",
      stats.reserved_segments);
  add("local_writers_waiting", "gauge", "local writers with every segment of credit in the store",
      stats.writers_waiting);
  return out;
}

LocalWriterService::LocalWriterService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LocalWriterService::~LocalWriterService() { Stop(); }
void LocalWriterService::Stop() { impl_->Stop(); }
const std::string& LocalWriterService::socket_path() const { return impl_->path(); }
LocalWriterStats LocalWriterService::Stats() const { return impl_->Stats(); }

}  // namespace sluice::daemon
