#include "transport/connection.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string_view>

#include "transport/log.h"

namespace sluice::transport {

namespace {
std::atomic<uint64_t> g_next_connection_id{1};
constexpr size_t kMaxStaging = kFrameHeaderSize + kMaxMetadataLength;
// Staging bytes read together with a payload window: the next header, typical metadata and a
// few payload bytes (copied), so that full-segment frames take one readv each.
constexpr size_t kStagingTailBytes = 512;
// libuv's own limit of reads per readiness event.
constexpr int kReadsPerWakeup = 32;

// Whether the environment variable `name` says off ("off", "0" or "false").
bool OffByEnvironment(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  const std::string_view s(v);
  return s == "off" || s == "0" || s == "false";
}

// SLUICE_DIRECT_WRITES=off turns write-through off process-wide, and SLUICE_DIRECT_READS=off
// read-through, so that one binary can be measured with and without them (read once).
bool DirectWritesOffByEnvironment() {
  static const bool off = OffByEnvironment("SLUICE_DIRECT_WRITES");
  return off;
}
bool DirectReadsOffByEnvironment() {
  static const bool off = OffByEnvironment("SLUICE_DIRECT_READS");
  return off;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// OutFrame

OutFrame::OutFrame(OutFrame&& o) noexcept
    : big_(std::move(o.big_)), head_len_(o.head_len_), payload_(std::move(o.payload_)) {
  if (!big_) std::memcpy(inline_.data(), o.inline_.data(), head_len_);
  o.head_len_ = 0;
}

OutFrame& OutFrame::operator=(OutFrame&& o) noexcept {
  if (this != &o) {
    big_ = std::move(o.big_);
    head_len_ = o.head_len_;
    if (!big_) std::memcpy(inline_.data(), o.inline_.data(), head_len_);
    payload_ = std::move(o.payload_);
    o.head_len_ = 0;
  }
  return *this;
}

uint8_t* OutFrame::Reserve(size_t n) {
  head_len_ = static_cast<uint32_t>(n);
  if (n <= kInlineBytes) return inline_.data();
  big_.reset(new uint8_t[n]);
  return big_.get();
}

Result<OutFrame> OutFrame::TryMake(uint8_t type, std::span<const uint8_t> metadata,
                                   buffer::Buffer payload) {
  if (metadata.size() > kMaxMetadataLength) {
    return InvalidArgument("a frame of type " + std::to_string(type) + " with " +
                           std::to_string(metadata.size()) +
                           " bytes of metadata cannot be sent: the limit is " +
                           std::to_string(kMaxMetadataLength) + " bytes");
  }
  const uint64_t payload_len = payload ? payload.size() : 0;
  if (kFrameHeaderSize + metadata.size() + payload_len > UINT32_MAX) {
    return InvalidArgument("a frame of type " + std::to_string(type) + " with a payload of " +
                           std::to_string(payload_len) + " bytes is longer than a frame can be");
  }
  return Make(type, metadata, std::move(payload));
}

OutFrame OutFrame::Make(uint8_t type, std::span<const uint8_t> metadata, buffer::Buffer payload) {
  SLUICE_CHECK(metadata.size() <= kMaxMetadataLength, "frame metadata longer than 65535 bytes");
  OutFrame f;
  uint8_t* out = f.Reserve(kFrameHeaderSize + metadata.size());
  const uint32_t payload_len = payload ? payload.size() : 0;
  EncodeFrameHeader(std::span<uint8_t, kFrameHeaderSize>(out, kFrameHeaderSize), type,
                    static_cast<uint16_t>(metadata.size()), payload_len);
  if (!metadata.empty()) std::memcpy(out + kFrameHeaderSize, metadata.data(), metadata.size());
  f.payload_ = std::move(payload);
  return f;
}

OutFrame OutFrame::Raw(std::span<const uint8_t> bytes) {
  OutFrame f;
  std::memcpy(f.Reserve(bytes.size()), bytes.data(), bytes.size());
  return f;
}

// ---------------------------------------------------------------------------------------------
// Connection

// Forwards decoder callbacks to the handler (installed after construction) and counts frames.
class Connection::DecoderSink final : public FrameSink {
 public:
  explicit DecoderSink(Connection* c) : c_(c) {}
  Admission OnFrame(const FrameHeader& h, std::span<const uint8_t> metadata) override {
    // The handler may close the connection while one read holds several frames: the rest of
    // that read is dropped, the handler sees nothing after its Close.
    if (c_->closing_.load(std::memory_order_relaxed) ||
        c_->close_after_flush_.load(std::memory_order_relaxed)) {
      return Admission::Discard();
    }
    c_->metrics_->frames_in.fetch_add(1, std::memory_order_relaxed);
    return c_->handler_->OnFrame(h, metadata);
  }
  Status OnPayload(buffer::Buffer payload) override {
    return c_->handler_->OnPayload(std::move(payload));
  }

 private:
  Connection* const c_;
};

// One uv_write: the frames it carries stay alive (payload Buffers included) until OnWrite.
struct Connection::WriteBatch {
  uv_write_t req;
  Connection* conn = nullptr;
  std::vector<OutFrame> frames;
  std::vector<uv_buf_t> bufs;
  size_t bytes = 0;
};

Connection::Connection(EventLoop* loop, uv_tcp_t* tcp, const TransportOptions& options,
                       std::shared_ptr<TransportMetrics> metrics, std::string peer,
                       bool client_side)
    : loop_(loop),
      tcp_(tcp),
      timer_(new uv_timer_t),
      idle_(new uv_idle_t),
      delay_timer_(new uv_timer_t),
      options_(options),
      metrics_(std::move(metrics)),
      peer_(std::move(peer)),
      id_(g_next_connection_id.fetch_add(1)),
      client_side_(client_side),
      direct_enabled_(options.direct_writes && !options.faults.active() &&
                      !DirectWritesOffByEnvironment()),
      direct_reads_enabled_(options.direct_reads && !options.faults.active() &&
                            !DirectReadsOffByEnvironment()),
      sink_(std::make_unique<DecoderSink>(this)),
      decoder_(sink_.get(), options.limits) {
  staging_capacity_ = std::clamp<size_t>(options.staging_read_bytes, kFrameHeaderSize, kMaxStaging);
  fault_rng_ = options.faults.seed ^ (id_ * 0x9E3779B97F4A7C15ull);
  // Small until the handshake is done (see TransportOptions::handshake_max_metadata); grown to
  // kMaxStaging on the first large read after it.
  staging_.reset(new uint8_t[staging_capacity_]);
  staging_allocated_ = staging_capacity_;
  decoder_.set_max_metadata(options.handshake_max_metadata);
}

Connection::~Connection() = default;

std::shared_ptr<Connection> Connection::Adopt(EventLoop* loop, uv_tcp_t* tcp,
                                              const TransportOptions& options,
                                              std::shared_ptr<TransportMetrics> metrics,
                                              std::string peer, bool client_side) {
  std::shared_ptr<Connection> c(
      new Connection(loop, tcp, options, std::move(metrics), std::move(peer), client_side));
  c->self_ = c;
  c->metrics_->connections_opened.fetch_add(1, std::memory_order_relaxed);
  tcp->data = c.get();
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp), &fd) == 0) c->fd_ = fd;
  uv_tcp_nodelay(tcp, 1);
  if (options.send_buffer_bytes > 0) {
    int v = options.send_buffer_bytes;
    uv_send_buffer_size(reinterpret_cast<uv_handle_t*>(tcp), &v);
  }
  if (options.recv_buffer_bytes > 0) {
    int v = options.recv_buffer_bytes;
    uv_recv_buffer_size(reinterpret_cast<uv_handle_t*>(tcp), &v);
  }
  uv_timer_init(loop->loop(), c->timer_);
  c->timer_->data = c.get();
  uv_idle_init(loop->loop(), c->idle_);
  c->idle_->data = c.get();
  uv_timer_init(loop->loop(), c->delay_timer_);
  c->delay_timer_->data = c.get();
  c->open_handles_ = 4;
  const uint64_t now = uv_now(loop->loop());
  c->created_ms_ = c->last_read_ms_ = c->last_write_ms_ = now;
  // The liveness tick: a quarter of the shortest deadline, between 10 ms and 1 s.
  int64_t shortest = 1000 * 4;
  for (auto d : {options.heartbeat_interval, options.idle_timeout, options.handshake_timeout,
                 options.close_flush_timeout}) {
    if (d.count() > 0) shortest = std::min<int64_t>(shortest, d.count());
  }
  const uint64_t tick = static_cast<uint64_t>(std::clamp<int64_t>(shortest / 4, 10, 1000));
  uv_timer_start(c->timer_, &Connection::OnTick, tick, tick);
  return c;
}

void Connection::Start(std::unique_ptr<ConnectionHandler> handler) {
  SLUICE_CHECK(!started_, "Connection::Start called twice");
  SLUICE_CHECK(handler != nullptr, "Connection::Start needs a handler (the factory returned none)");
  started_ = true;
  handler_ = std::move(handler);
  if (closing_) return;
  if (int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(tcp_), &Connection::OnAlloc,
                             &Connection::OnRead);
      rc != 0) {
    Close(IoError("cannot read from " + peer_ + ": " + uv_strerror(rc)));
  }
}

// Reading. libuv's own read takes one buffer per read() call, which costs two system calls per
// frame: one into the payload window, one for the next header. Instead, when libuv reports
// the socket readable (it asks OnAlloc for a buffer), the connection reads with readv into
// [rest of the payload window, a short staging tail]: the tail catches the next frame's header,
// its metadata and the first bytes of its payload, so a stream of full-segment frames costs
// one system call per frame and a copy of a few hundred bytes. OnAlloc then declines libuv's
// read with an empty buffer (documented: UV_ENOBUFS in the read callback), and libuv calls
// OnRead at once; that ends the pass.
//
// libuv calls OnRead through stream->read_cb after OnAlloc returns, and uv_read_stop() (also
// inside uv_close) clears that pointer; so a Close() or read stop requested during the pass
// (by the handler, a decode error, EOF) is only recorded, and OnRead carries it out.
void Connection::OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  c->in_socket_read_ = true;
  c->ReadSocket();
  *buf = uv_buf_init(nullptr, 0);
}

void Connection::ReadSocket() {
  drain_pass_ = lingering_;
  if (drain_pass_) {
    DrainSocket();
    return;
  }
  // Read-through: no other thread reads during the pass; after it, one may take whole frames
  // when the decoder holds no part of one (ReadFramesFromAnyThread). Until a direct reader
  // first asks, read_idle_ stays false and the pass takes no lock (a client's connection never
  // reads through); that first ask finds the connection busy and posts MarkReadIdle.
  if (!direct_reader_asked_.load(std::memory_order_acquire)) {
    ReadPasses();
    return;
  }
  SetReadIdle(false);
  ReadPasses();
  MarkReadIdle();
}

void Connection::MarkReadIdle() {
  SetReadIdle(direct_reads_enabled_ && established_ && !closing_ && !close_after_flush_ &&
              decoder_.at_frame_boundary());
}

void Connection::SetReadIdle(bool idle) {
  std::lock_guard lock(read_mu_);
  read_idle_ = idle;
}

void Connection::ReadPasses() {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp_), &fd) != 0) return;
  // As many passes per wake-up as libuv allows itself, so one busy socket cannot starve the
  // others on this loop; data left over makes the (level-triggered) poll report it again.
  for (int pass = 0; pass < kReadsPerWakeup; ++pass) {
    if (closing_ || close_after_flush_) return;
    iovec iov[2];
    int iovcnt = 0;
    const std::span<uint8_t> window = decoder_.PayloadWindow();
    size_t staging_len = 0;
    if (!window.empty()) {
      iov[iovcnt++] = {window.data(), window.size()};
      staging_len = std::min(staging_capacity_, kStagingTailBytes);
    } else {
      staging_len = std::clamp(decoder_.FeedBytesWanted(), staging_capacity_, kMaxStaging);
      if (staging_len > staging_allocated_) {
        if (established_) {
          staging_.reset(new uint8_t[kMaxStaging]);
          staging_allocated_ = kMaxStaging;
        } else {
          staging_len = staging_allocated_;  // read a large frame in pieces until then
        }
      }
    }
    iov[iovcnt++] = {staging_.get(), staging_len};
    const size_t asked = window.size() + staging_len;
    ssize_t got = 0;
    do {
      got = ::readv(fd, iov, iovcnt);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      Close(IoError("connection to " + peer_ + " failed: " + uv_strerror(-err)));
      return;
    }
    if (got == 0) {
      EndOfStream();
      return;
    }
    const auto n = static_cast<size_t>(got);
    bytes_in_.fetch_add(n, std::memory_order_relaxed);
    metrics_->bytes_in.fetch_add(n, std::memory_order_relaxed);
    last_read_ms_ = uv_now(loop_->loop());
    const size_t into_window = std::min(n, window.size());
    Status st;
    if (into_window > 0) {
      metrics_->payload_direct_bytes.fetch_add(into_window, std::memory_order_relaxed);
      st = decoder_.CommitPayload(into_window);
    }
    if (st.ok() && n > into_window) st = decoder_.Feed({staging_.get(), n - into_window});
    if (!st.ok()) {
      HandleDecodeError();
      return;
    }
    if (n < asked) return;  // drained: the next readv would only say EAGAIN
  }
}

void Connection::EndOfStream() {
  if (Status st = decoder_.Finish(); !st.ok()) {
    HandleDecodeError();
    return;
  }
  Close(ClosedError("connection closed by peer " + peer_));
}

void Connection::OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* c = static_cast<Connection*>(s->data);
  if (nread == UV_ENOBUFS && c->in_socket_read_) {
    // The end of a ReadSocket pass: carry out what it deferred.
    c->in_socket_read_ = false;
    if (!c->closing_ && !c->drain_pass_ && c->handler_) c->handler_->OnReadPassEnd();
    if (c->closing_) {
      c->CloseHandles();
    } else if (c->stop_reading_deferred_) {
      c->stop_reading_deferred_ = false;
      uv_read_stop(s);
    }
    return;
  }
  // libuv reads nothing itself (OnAlloc declines every buffer); should it still report an end
  // or an error, it is handled like ours.
  if (c->closing_ || nread >= 0) return;
  if (nread == UV_EOF) {
    c->EndOfStream();
    return;
  }
  c->Close(
      IoError("connection to " + c->peer_ + " failed: " + uv_strerror(static_cast<int>(nread))));
}

// An HTTP client (a browser, a Prometheus scrape pointed at the wrong port) gets an answer
// it can show instead of a silent close. It goes out like a last frame (CloseAfterFlush), so
// a request longer than one read (a body, say) does not reset the connection under it.
void Connection::AnswerHttp() {
  metrics_->http_requests.fetch_add(1, std::memory_order_relaxed);
  Log(LogLevel::kDebug, "closing connection from " + peer_ +
                            ": an HTTP request reached the Sluice data port");
  static const std::string kBody =
      "This is the data port of sluiced (the Sluice shuffle daemon); it speaks the Sluice "
      "binary protocol, not HTTP.\nMetrics and health are served over HTTP on the daemon's "
      "metrics_listen address (default 127.0.0.1:9470): GET /metrics, GET /healthz, each with "
      "\"Authorization: Bearer <token>\" (the daemon's metrics_token_file, default "
      "<state_dir>/metrics_token).\n";
  static const std::string kResponse =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: " + std::to_string(kBody.size()) + "\r\nConnection: close\r\n\r\n" + kBody;
  Send(OutFrame::Raw({reinterpret_cast<const uint8_t*>(kResponse.data()), kResponse.size()}));
  CloseAfterFlush(ProtocolError("an HTTP request from " + peer_ + " reached the Sluice data port"));
}

void Connection::HandleDecodeError() {
  if (closing_ || close_after_flush_) return;  // already on its way out
  if (decoder_.LooksLikeHttp()) {
    AnswerHttp();
    return;
  }
  const FrameError reason = decoder_.error();
  metrics_->protocol_errors[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
  const Status& st = decoder_.status();
  Log(LogLevel::kWarn, "closing connection to " + peer_ + ": protocol error " +
                           std::string(FrameErrorName(reason)) + ": " + st.message());
  std::optional<OutFrame> last;
  if (handler_) last = handler_->OnProtocolError(reason, st);
  const Status reason_status(st.code(), "protocol error from " + peer_ + " (" +
                                            std::string(FrameErrorName(reason)) +
                                            "): " + st.message());
  if (last) {
    Send(std::move(*last));
    CloseAfterFlush(reason_status);
  } else {
    Close(reason_status);
  }
}

void Connection::Send(OutFrame frame) {
  size_t queued = 0;
  {
    std::lock_guard lock(write_mu_);
    // Dropped: the payload Buffer is released when `frame` goes, after the lock.
    if (closing_ || close_after_flush_) return;
    pending_bytes_ += frame.total_bytes();
    pending_.push_back(std::move(frame));
    queued = pending_.size();
  }
  if (queued >= options_.max_frames_per_write) {
    Flush();
  } else {
    ScheduleFlush();
  }
}

Connection::SendPath Connection::SendFromAnyThread(OutFrame frame) {
  if (loop_->IsLoopThread()) {
    if (closing_ || close_after_flush_) return SendPath::kDropped;
    Send(std::move(frame));
    return SendPath::kQueued;
  }
  bool partly_written = false;  // a direct write took part of the frame
  {
    std::lock_guard lock(write_mu_);
    if (closing_ || close_after_flush_) return SendPath::kDropped;
    size_t written = 0;
    if (direct_enabled_ && established_ && pending_.empty() && inflight_writes_ == 0) {
      written = WriteDirectLocked(frame);
      // Complete: `frame` (and its payload Buffer) is released on return, after the lock.
      if (written == frame.total_bytes()) return SendPath::kDirect;
      if (written > 0) metrics_->direct_partial_writes.fetch_add(1, std::memory_order_relaxed);
      pending_skip_ = written;  // the loop writes the rest first
      partly_written = written > 0;
    }
    pending_bytes_ += frame.total_bytes() - written;
    pending_.push_back(std::move(frame));
  }
  PostFlush();
  return partly_written ? SendPath::kDirect : SendPath::kQueued;
}

bool Connection::DirectWritable() const {
  if (!direct_enabled_ || !established_.load(std::memory_order_acquire)) return false;
  // Only tried: a writer holding the mutex (the loop in a write of up to max_frames_per_write
  // frames, or another producer) makes the connection busy, and waiting for it would put the
  // asking producer to sleep for the length of that write.
  std::unique_lock lock(write_mu_, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  return !closing_ && !close_after_flush_ && pending_.empty() && inflight_writes_ == 0;
}

size_t Connection::ReadFramesFromAnyThread(uint8_t type, FrameTaker& taker) {
  if (!direct_reads_enabled_ || loop_->IsLoopThread()) return 0;
  if (!direct_reader_asked_.load(std::memory_order_relaxed) &&
      !direct_reader_asked_.exchange(true, std::memory_order_acq_rel)) {
    // The first ask: the loop, between two passes, says whether the stream is at a frame
    // boundary; from then on every pass does.
    std::weak_ptr<Connection> weak = weak_from_this();
    loop_->Post([weak] {
      if (auto c = weak.lock(); c && !c->in_socket_read_) c->MarkReadIdle();
    });
    return 0;
  }
  std::unique_lock lock(read_mu_, std::try_to_lock);
  // Not idle: the loop is reading, holds part of a frame, or closed the socket.
  if (!lock.owns_lock() || !read_idle_) return 0;
  std::array<uint8_t, kDirectReadBytes> peeked;
  ssize_t got = 0;
  do {
    got = ::recv(fd_, peeked.data(), peeked.size(), MSG_PEEK | MSG_DONTWAIT);
  } while (got < 0 && errno == EINTR);
  if (got <= 0) return 0;  // nothing waiting, or an error or end the loop will meet
  const auto n = static_cast<size_t>(got);
  size_t taken = 0;
  size_t offset = 0;
  while (n - offset >= kFrameHeaderSize) {
    const FrameHeader h = DecodeFrameHeader(
        std::span<const uint8_t, kFrameHeaderSize>(peeked.data() + offset, kFrameHeaderSize));
    // Only a whole frame of `type` without payload, within the limits the decoder checks; any
    // other (a data frame, a heartbeat, a refused header) stays for the loop, as do all after.
    if (h.type != type || CheckFrameHeader(h, options_.limits).has_value() ||
        h.frame_length != kFrameHeaderSize + h.metadata_length || h.frame_length > n - offset) {
      break;
    }
    const std::span<const uint8_t> meta(peeked.data() + offset + kFrameHeaderSize,
                                        h.metadata_length);
    if (!taker.Accepts(meta)) break;  // the loop reads it and refuses it as usual
    if (!ConsumePeeked(h.frame_length)) break;
    taker.Take(meta);
    offset += h.frame_length;
    ++taken;
  }
  if (taken > 0) {
    bytes_in_.fetch_add(offset, std::memory_order_relaxed);
    metrics_->bytes_in.fetch_add(offset, std::memory_order_relaxed);
    metrics_->frames_in.fetch_add(taken, std::memory_order_relaxed);
    metrics_->direct_read_frames.fetch_add(taken, std::memory_order_relaxed);
    direct_read_.store(true, std::memory_order_relaxed);
  }
  return taken;
}

bool Connection::ConsumePeeked(size_t bytes) {
  std::array<uint8_t, kDirectReadBytes> discard;
  ssize_t got = 0;
  do {
    got = ::recv(fd_, discard.data(), bytes, MSG_DONTWAIT);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(bytes)) return true;
  // Peeked bytes stay in the socket until read, and no other thread reads under read_mu_, so
  // only a failing socket gets here. Nothing read: the loop meets the error. Part of a frame
  // read: the stream lost its place, and the connection closes.
  if (got > 0) {
    read_idle_ = false;
    std::weak_ptr<Connection> weak = weak_from_this();
    loop_->Post([weak, peer = peer_] {
      if (auto c = weak.lock()) {
        c->Close(IoError("connection to " + peer +
                         " failed: a read-through read only part of a frame"));
      }
    });
  }
  return false;
}

size_t Connection::WriteDirectLocked(const OutFrame& frame) {
  iovec iov[2];
  int iovcnt = 0;
  const std::span<const uint8_t> head = frame.head();
  iov[iovcnt++] = {const_cast<uint8_t*>(head.data()), head.size()};
  if (frame.payload() && frame.payload().size() > 0) {
    iov[iovcnt++] = {frame.payload().data(), frame.payload().size()};
  }
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  ssize_t got = 0;
  do {
    // MSG_NOSIGNAL: this thread is not the loop's, which blocks SIGPIPE.
    got = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (got < 0 && errno == EINTR);
  // Would block, or failed: the loop's own write of the queued frame meets the error and
  // closes the connection as usual.
  if (got <= 0) return 0;
  const auto n = static_cast<size_t>(got);
  bytes_out_.fetch_add(n, std::memory_order_relaxed);
  metrics_->bytes_out.fetch_add(n, std::memory_order_relaxed);
  direct_wrote_.store(true, std::memory_order_relaxed);
  if (n == frame.total_bytes()) {
    metrics_->direct_writes.fetch_add(1, std::memory_order_relaxed);
    metrics_->writes.fetch_add(1, std::memory_order_relaxed);
    metrics_->frames_out.fetch_add(1, std::memory_order_relaxed);
  }
  return n;
}

void Connection::PostFlush() {
  if (flush_posted_.exchange(true)) return;
  std::weak_ptr<Connection> weak = weak_from_this();
  loop_->Post([weak] {
    auto c = weak.lock();
    if (!c) return;
    c->flush_posted_.store(false);
    c->ScheduleFlush();  // as for Send: the fault shim's delay applies
  });
}

void Connection::ScheduleFlush() {
  if (flush_scheduled_ || closing_) return;
  flush_scheduled_ = true;
  if (options_.faults.delay_ms > 0) {
    uv_timer_start(delay_timer_, &Connection::OnDelayFlush, options_.faults.delay_ms, 0);
    return;
  }
  uv_idle_start(idle_, &Connection::OnIdleFlush);
}

void Connection::OnDelayFlush(uv_timer_t* t) {
  auto* c = static_cast<Connection*>(t->data);
  c->flush_scheduled_ = false;
  c->FlushFromLoop();
}

void Connection::MaybeCorrupt(const buffer::Buffer& payload) {
  // splitmix64 step: deterministic per seed and connection.
  fault_rng_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = fault_rng_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  if (z % 1000000 >= options_.faults.corrupt_per_million) return;
  payload.data()[(z >> 20) % payload.size()] ^= 0x5A;
  metrics_->faults_corrupted.fetch_add(1, std::memory_order_relaxed);
}

void Connection::OnIdleFlush(uv_idle_t* i) {
  auto* c = static_cast<Connection*>(i->data);
  uv_idle_stop(i);
  c->flush_scheduled_ = false;
  c->FlushFromLoop();
}

Connection::WriteBatch* Connection::TakeBatch() {
  // Batches start empty and grow (geometrically, see Flush) to the largest batch written, so a
  // connection that only ever sends a few small frames (one still in its handshake) holds a few
  // hundred bytes here, not room for max_frames_per_write frames.
  if (spare_batches_.empty()) return new WriteBatch();
  WriteBatch* b = spare_batches_.back().release();
  spare_batches_.pop_back();
  return b;
}

void Connection::Flush() { (void)FlushNow(); }

void Connection::FlushFromLoop() {
  if (!FlushNow() || closing_) return;
  if (close_after_flush_) {
    Linger();
  } else if (handler_) {
    handler_->OnWritable();
  }
}

bool Connection::FlushNow() {
  if (closing_) return false;
  Status failed;
  bool idle = false;
  std::vector<OutFrame> written;
  written.swap(written_spare_);  // keeps its capacity; a nested flush finds an empty spare
  {
    std::lock_guard lock(write_mu_);
    failed = FlushLocked(written);
    idle = !written.empty() && pending_.empty() && inflight_writes_ == 0;
  }
  written.clear();  // payload Buffers released after the lock (their recyclers may call in)
  if (written.capacity() > written_spare_.capacity()) written_spare_.swap(written);
  // Closed outside the lock: Close takes it.
  if (!failed.ok()) {
    Close(std::move(failed));
    return false;
  }
  return idle;
}

void Connection::WritePendingNowLocked(std::vector<OutFrame>& written) {
  // At most IOV_MAX iovecs (two per frame); what is left goes to uv_write.
  const size_t frames = std::min<size_t>(pending_.size(), IOV_MAX / 2);
  now_iov_.clear();
  size_t skip = pending_skip_;
  auto add = [&](const uint8_t* data, size_t len) {
    const size_t s = std::min(skip, len);
    skip -= s;
    if (len > s) now_iov_.push_back({const_cast<uint8_t*>(data + s), len - s});
  };
  for (size_t i = 0; i < frames; ++i) {
    const OutFrame& f = pending_[i];
    add(f.head().data(), f.head().size());
    if (f.payload() && f.payload().size() > 0) add(f.payload().data(), f.payload().size());
  }
  msghdr msg{};
  msg.msg_iov = now_iov_.data();
  msg.msg_iovlen = now_iov_.size();
  ssize_t got = 0;
  do {
    got = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (got < 0 && errno == EINTR);
  // Would block, or failed: uv_write meets the error and the connection closes as usual.
  if (got <= 0) return;
  const auto n = static_cast<size_t>(got);
  size_t left = n + pending_skip_;  // bytes of pending_ from its first frame's start
  size_t done = 0;
  while (done < frames && pending_[done].total_bytes() <= left) {
    left -= pending_[done].total_bytes();
    ++done;
  }
  std::move(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done),
            std::back_inserter(written));
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done));
  pending_skip_ = left;
  pending_bytes_ -= n;
  bytes_out_.fetch_add(n, std::memory_order_relaxed);
  metrics_->bytes_out.fetch_add(n, std::memory_order_relaxed);
  metrics_->writes.fetch_add(1, std::memory_order_relaxed);
  metrics_->loop_direct_writes.fetch_add(1, std::memory_order_relaxed);
  metrics_->frames_out.fetch_add(done, std::memory_order_relaxed);
  last_write_ms_ = uv_now(loop_->loop());
}

Status Connection::FlushLocked(std::vector<OutFrame>& written) {
  if (direct_enabled_ && inflight_writes_ == 0 && !pending_.empty() &&
      pending_bytes_ <= options_.loop_direct_max_bytes) {
    WritePendingNowLocked(written);
  }
  // Drains pending_ completely, so it is a vector that keeps its capacity: queueing a frame
  // allocates nothing once the connection has warmed up. (uv_write never calls back from
  // inside itself, so nothing appends while this runs: direct writers wait for write_mu_.)
  size_t next = 0;
  while (next < pending_.size()) {
    WriteBatch* b = TakeBatch();
    b->conn = this;
    b->bytes = 0;
    const size_t n = std::min<size_t>(pending_.size() - next, options_.max_frames_per_write);
    if (b->frames.capacity() < n) {
      b->frames.reserve(std::max(n, 2 * b->frames.capacity()));
      b->bufs.reserve(2 * b->frames.capacity());
    }
    for (size_t i = 0; i < n; ++i) b->frames.push_back(std::move(pending_[next + i]));
    // A direct write took the first bytes of the first frame: the rest goes first.
    size_t skip = next == 0 ? pending_skip_ : 0;
    pending_skip_ = 0;
    next += n;
    // The frames no longer move: point the iovecs at their bytes.
    auto add = [&](const uint8_t* data, size_t len) {
      const size_t s = std::min(skip, len);
      skip -= s;
      if (len == s) return;
      b->bufs.push_back(uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(data + s)),
                                    static_cast<unsigned>(len - s)));
      b->bytes += len - s;
    };
    for (const OutFrame& f : b->frames) {
      std::span<const uint8_t> h = f.head();
      add(h.data(), h.size());
      if (f.payload() && f.payload().size() > 0) {
        if (options_.faults.corrupt_per_million > 0) {
          MaybeCorrupt(f.payload());
        }
        add(f.payload().data(), f.payload().size());
      }
    }
    pending_bytes_ -= b->bytes;
    b->req.data = b;
    const int rc = uv_write(&b->req, reinterpret_cast<uv_stream_t*>(tcp_), b->bufs.data(),
                            static_cast<unsigned>(b->bufs.size()), &Connection::OnWrite);
    if (rc != 0) {
      // Their payload Buffers are released by the caller after write_mu_, as written ones are.
      std::move(b->frames.begin(), b->frames.end(), std::back_inserter(written));
      b->frames.clear();
      b->bufs.clear();
      spare_batches_.emplace_back(b);
      return close_after_flush_ ? close_reason_
                                : IoError("write to " + peer_ + " failed: " + uv_strerror(rc));
    }
    inflight_bytes_ += b->bytes;
    ++inflight_writes_;
    metrics_->writes.fetch_add(1, std::memory_order_relaxed);
    metrics_->frames_out.fetch_add(n, std::memory_order_relaxed);
  }
  pending_.clear();
  return Status::Ok();
}

void Connection::OnWrite(uv_write_t* req, int status) {
  auto* b = static_cast<WriteBatch*>(req->data);
  Connection* c = b->conn;
  const size_t bytes = b->bytes;
  b->frames.clear();  // releases the payload Buffers
  b->bufs.clear();
  c->spare_batches_.emplace_back(b);
  bool idle = false;
  {
    std::lock_guard lock(c->write_mu_);
    c->inflight_bytes_ -= bytes;
    --c->inflight_writes_;
    idle = c->inflight_writes_ == 0 && c->pending_.empty();
  }
  if (status == 0) {
    c->bytes_out_.fetch_add(bytes, std::memory_order_relaxed);
    c->metrics_->bytes_out.fetch_add(bytes, std::memory_order_relaxed);
    c->last_write_ms_ = uv_now(c->loop_->loop());
  }
  if (c->closing_) {
    c->FinishClose();
    return;
  }
  if (status != 0) {
    // Closing after a protocol error, the peer may well be gone already: keep the reason that
    // started the close, it is the one that matters.
    c->Close(c->close_after_flush_
                 ? c->close_reason_
                 : IoError("write to " + c->peer_ + " failed: " + uv_strerror(status)));
    return;
  }
  if (c->close_after_flush_) {
    if (idle) c->Linger();
    return;
  }
  if (idle && c->handler_) c->handler_->OnWritable();
}

size_t Connection::queued_bytes() const {
  std::lock_guard lock(write_mu_);
  return pending_bytes_ + inflight_bytes_;
}

size_t Connection::buffer_bytes() const {
  size_t n = staging_allocated_ + decoder_.metadata_capacity();
  {
    std::lock_guard lock(write_mu_);
    n += pending_.capacity() * sizeof(OutFrame);
  }
  for (const auto& b : spare_batches_) {
    n += sizeof(WriteBatch) + b->frames.capacity() * sizeof(OutFrame) +
         b->bufs.capacity() * sizeof(uv_buf_t);
  }
  return n;
}

void Connection::MarkEstablished() {
  established_.store(true, std::memory_order_release);
  decoder_.set_max_metadata(kMaxMetadataLength);
}

void Connection::OnTick(uv_timer_t* t) { static_cast<Connection*>(t->data)->Tick(); }

void Connection::Tick() {
  if (closing_) return;
  const uint64_t now = uv_now(loop_->loop());
  if (close_after_flush_) {
    if (now >= flush_deadline_ms_) Close(close_reason_);
    return;
  }
  if (!established_ && options_.handshake_timeout.count() > 0 &&
      now - created_ms_ >= static_cast<uint64_t>(options_.handshake_timeout.count())) {
    metrics_->handshake_timeouts.fetch_add(1, std::memory_order_relaxed);
    Log(LogLevel::kWarn, "closing connection to " + peer_ + ": no handshake within " +
                             std::to_string(options_.handshake_timeout.count()) + " ms");
    Close(TimeoutError("connection to " + peer_ + " did not complete its handshake within " +
                       std::to_string(options_.handshake_timeout.count()) + " ms"));
    return;
  }
  // A frame another thread read through counts as a read (the peer is alive).
  if (direct_read_.exchange(false, std::memory_order_relaxed)) last_read_ms_ = now;
  if (options_.idle_timeout.count() > 0 &&
      now - last_read_ms_ >= static_cast<uint64_t>(options_.idle_timeout.count())) {
    metrics_->idle_timeouts.fetch_add(1, std::memory_order_relaxed);
    Log(LogLevel::kWarn, "closing connection to " + peer_ + ": nothing received for " +
                             std::to_string(now - last_read_ms_) + " ms");
    Close(TimeoutError("peer " + peer_ + " sent nothing (not even heartbeats) for " +
                       std::to_string(now - last_read_ms_) +
                       " ms; it is considered dead (idle_timeout " +
                       std::to_string(options_.idle_timeout.count()) + " ms)"));
    return;
  }
  // A producer thread's direct write counts as a write (no heartbeat needed after it).
  if (direct_wrote_.exchange(false, std::memory_order_relaxed)) last_write_ms_ = now;
  // Heartbeat only when nothing is queued: a peer that is not reading (backpressure) keeps our
  // writes pending, and that is not a failure on either side.
  if (options_.heartbeat_interval.count() > 0 && !options_.heartbeat_frame.empty() &&
      queued_bytes() == 0 &&
      now - last_write_ms_ >= static_cast<uint64_t>(options_.heartbeat_interval.count())) {
    metrics_->heartbeats_sent.fetch_add(1, std::memory_order_relaxed);
    last_write_ms_ = now;  // one heartbeat per interval even before its write completes
    Send(OutFrame::Raw(options_.heartbeat_frame));
  }
}

void Connection::CloseAfterFlush(Status reason) {
  if (closing_ || close_after_flush_) return;
  close_reason_ = std::move(reason);
  SetReadIdle(false);  // the loop stops reading, and so do other threads
  {
    std::lock_guard lock(write_mu_);
    close_after_flush_ = true;  // direct writers stop here
  }
  if (in_socket_read_) {
    stop_reading_deferred_ = true;  // see OnAlloc
  } else {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(tcp_));
  }
  flush_deadline_ms_ =
      uv_now(loop_->loop()) + static_cast<uint64_t>(options_.close_flush_timeout.count());
  // Frames queued before this call still go out (Flush ignores close_after_flush_; only Send
  // drops new frames).
  Flush();
  bool idle = false;
  {
    std::lock_guard lock(write_mu_);
    idle = inflight_writes_ == 0 && pending_.empty();
  }
  if (!closing_ && idle) Linger();
}

void Connection::Linger() {
  if (closing_ || lingering_) return;
  uv_os_fd_t fd = -1;
  if (!started_ || uv_fileno(reinterpret_cast<uv_handle_t*>(tcp_), &fd) != 0 ||
      ::shutdown(fd, SHUT_WR) != 0) {
    Close(close_reason_);  // nothing to wait for (never read, or the socket is gone)
    return;
  }
  lingering_ = true;
  if (in_socket_read_) {
    stop_reading_deferred_ = false;  // still reading: the pass's end keeps it so
  } else if (int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(tcp_), &Connection::OnAlloc,
                                    &Connection::OnRead);
             rc != 0 && rc != UV_EALREADY) {
    Close(close_reason_);
  }
}

void Connection::DrainSocket() {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp_), &fd) != 0) return;
  for (int pass = 0; pass < kReadsPerWakeup && !closing_; ++pass) {
    ssize_t got = 0;
    do {
      got = ::read(fd, staging_.get(), staging_allocated_);
    } while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (got <= 0) {
      Close(close_reason_);  // the peer's end (or its reset): the close can finish now
      return;
    }
    bytes_in_.fetch_add(static_cast<size_t>(got), std::memory_order_relaxed);
    metrics_->bytes_in.fetch_add(static_cast<size_t>(got), std::memory_order_relaxed);
  }
}

void Connection::Close(Status reason) {
  if (closing_) return;
  std::vector<OutFrame> dropped;
  {
    // Under the lock: a direct writer either finished its write already or sees closing_ and
    // stops, so the socket is closed (CloseHandles) only after the last direct write.
    std::lock_guard lock(write_mu_);
    closing_ = true;
    dropped.swap(pending_);
    pending_bytes_ = 0;
    pending_skip_ = 0;
  }
  close_reason_ = std::move(reason);
  dropped.clear();  // releases queued payload Buffers, outside the lock
  // Inside a read pass the handles are closed by OnRead, right after it (see OnAlloc).
  if (!in_socket_read_) CloseHandles();
}

void Connection::CloseHandles() {
  // A thread reading through finishes first; none starts after this (uv_close closes the fd).
  SetReadIdle(false);
  uv_read_stop(reinterpret_cast<uv_stream_t*>(tcp_));
  // In-flight writes are cancelled by uv_close and their callbacks (UV_ECANCELED) run first.
  uv_close(reinterpret_cast<uv_handle_t*>(tcp_), &Connection::OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(timer_), &Connection::OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(idle_), &Connection::OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(delay_timer_), &Connection::OnHandleClosed);
}

void Connection::OnHandleClosed(uv_handle_t* h) {
  auto* c = static_cast<Connection*>(h->data);
  if (h == reinterpret_cast<uv_handle_t*>(c->tcp_)) {
    delete c->tcp_;
  } else if (h == reinterpret_cast<uv_handle_t*>(c->timer_)) {
    delete c->timer_;
  } else if (h == reinterpret_cast<uv_handle_t*>(c->delay_timer_)) {
    delete c->delay_timer_;
  } else {
    delete c->idle_;
  }
  --c->open_handles_;
  c->FinishClose();
}

void Connection::FinishClose() {
  if (open_handles_ > 0) return;
  {
    std::lock_guard lock(write_mu_);
    if (inflight_writes_ > 0) return;
  }
  if (!self_) return;  // already finished
  metrics_->connections_closed.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Connection> keep = std::move(self_);
  // Drop a partial payload the decoder holds: fail it so its Buffer goes home now.
  (void)decoder_.Finish();
  // The owner first, so that a handler seeing OnClosed (and perhaps reconnecting) finds the
  // server's or client's books already without this connection.
  if (close_hook_) close_hook_(this);
  if (handler_) handler_->OnClosed(close_reason_);
  // `keep` may be the last reference: the connection is deleted when this returns.
}

}  // namespace sluice::transport
