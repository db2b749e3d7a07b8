// Connection: one TCP connection on one EventLoop, multiplexing any number of logical channels.
//
// Reads: the FrameDecoder checks each frame header, the ConnectionHandler (the upper layer, a
// FrameSink) verifies the message and names the Buffer its payload goes into, and the socket
// reads the payload straight into that segment. One readv fills the rest of a payload and a
// short staging tail that catches the next header and metadata: one system call per frame.
// Writes: Send() queues frames; at the end of the loop iteration (or on Flush()) queued frames
// go out gathered, several frames per uv_write (header bytes + segment iovecs, no copy). A
// payload Buffer stays owned by its write request until the write callback.
//
// Bad input closes only this connection: the reason is counted, one log line names the peer and
// the reason, and the handler may supply a last frame (an ErrorResponse) that is flushed before
// the close. Liveness: a heartbeat frame on idle connections, a deadline for a peer that sends
// nothing at all (a backpressured peer still sends heartbeats, so it is never declared dead),
// and a handshake deadline until the upper layer calls MarkEstablished().
//
// Direct writes (write-through): SendFromAnyThread() lets a producer thread write a frame to
// the socket itself when the connection is idle (established, nothing queued or in flight, no
// fault shim), so a flushed buffer does not wait for a wake-up of the loop. The write state
// (queued frames, writes in flight, the closing flags) is shared with the loop under one
// mutex, a leaf lock held only around the queue, uv_write and the direct writev; the socket
// is closed only after `closing` was set under it, so a direct write never meets a closed or
// reused descriptor. When the socket would block (EAGAIN, or a partial write), the rest of the
// frame is queued first and the loop writes it (a flush is posted), so frames keep their order.
//
// Direct reads (read-through): ReadFramesFromAnyThread() lets a producer thread that waits for
// a small control frame (an AddCredit) take it off the socket itself instead of waiting for the
// loop to wake up and read it. It reads only between the loop's read passes, when the decoder
// holds no part of a frame, under a mutex (read_mu_) the loop takes around each pass; it peeks
// first and takes only whole frames of one type without payload that its caller accepts, so
// everything else, refusals included, is still read and handled by the loop in stream order.
// The socket is closed only after read_mu_ said no more reads (CloseHandles).
//
// Loop-thread only, except SendFromAnyThread, DirectWritable, ReadFramesFromAnyThread,
// closing(), queued_bytes(), bytes_sent(), bytes_received() and the thread-safe counters in
// TransportMetrics. Held by shared_ptr; it keeps
// itself alive until its handles are closed, then calls OnClosed exactly once.
#pragma once

#include <sys/uio.h>
#include <uv.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/status.h"
#include "transport/event_loop.h"
#include "transport/frame_codec.h"
#include "transport/transport_options.h"

namespace sluice::transport {

class Connection;

// One frame to send: header + metadata bytes (inline when short) and an optional payload.
class OutFrame {
 public:
  static constexpr size_t kInlineBytes = 192;

  OutFrame() = default;
  OutFrame(OutFrame&&) noexcept;
  OutFrame& operator=(OutFrame&&) noexcept;

  // A frame of `type` with `metadata` (copied) and `payload` (owned until written).
  // InvalidArgument when the metadata is longer than kMaxMetadataLength (65,535 bytes) or the
  // frame would not fit a u32 length: the frame cannot be sent (never an abort).
  static Result<OutFrame> TryMake(uint8_t type, std::span<const uint8_t> metadata,
                                  buffer::Buffer payload = {});
  // TryMake for frames whose size the caller bounds by construction (fixed-size messages).
  // REQUIRES: metadata.size() <= kMaxMetadataLength (checked in every build: a violation is a
  // bug, not input). Frames built from what a peer controls use TryMake.
  static OutFrame Make(uint8_t type, std::span<const uint8_t> metadata,
                       buffer::Buffer payload = {});
  // A complete pre-encoded frame without payload (copied), e.g. a heartbeat.
  static OutFrame Raw(std::span<const uint8_t> bytes);

  std::span<const uint8_t> head() const { return {big_ ? big_.get() : inline_.data(), head_len_}; }
  const buffer::Buffer& payload() const { return payload_; }
  size_t total_bytes() const { return head_len_ + (payload_ ? payload_.size() : 0); }

 private:
  std::array<uint8_t, kInlineBytes> inline_;
  std::unique_ptr<uint8_t[]> big_;
  uint32_t head_len_ = 0;
  buffer::Buffer payload_;
  uint8_t* Reserve(size_t n);
};

// The upper layer's view of a connection: a FrameSink for incoming frames plus events.
// Loop-thread only.
class ConnectionHandler : public FrameSink {
 public:
  // Called once, after the connection is closed and every buffer it held was released, and
  // after its server or client stopped counting it (connection_count(), GetOrConnect).
  virtual void OnClosed(const Status& reason) = 0;
  // Every queued write completed: a good moment to send more.
  virtual void OnWritable() {}
  // The end of one pass over the socket, after every frame it read was delivered: the place to
  // publish what the pass gathered (one wake-up of a consumer for many frames). Not called for
  // a pass that closed the connection (OnClosed follows).
  virtual void OnReadPassEnd() {}
  // A frame was refused; the connection will close. Return a last frame to flush before the
  // close (an ErrorResponse), or nothing.
  virtual std::optional<OutFrame> OnProtocolError(FrameError reason, const Status& status) {
    (void)reason;
    (void)status;
    return std::nullopt;
  }
};

// What ReadFramesFromAnyThread asks of its caller, on the caller's thread, frame by frame.
class FrameTaker {
 public:
  virtual ~FrameTaker() = default;
  // Whether to take the frame with this metadata (valid during the call). False leaves it, and
  // every frame after it, to the loop, which handles (or refuses) it as it would have anyway.
  virtual bool Accepts(std::span<const uint8_t> metadata) = 0;
  // The frame Accepts said yes to was read off the socket: act on it.
  virtual void Take(std::span<const uint8_t> metadata) = 0;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // The most bytes of frames one ReadFramesFromAnyThread looks at.
  static constexpr size_t kDirectReadBytes = 512;

  using CloseHook = std::function<void(Connection*)>;

  // Adopts an initialized, connected uv_tcp_t (heap-allocated; ownership passes; freed after
  // its close callback). Starts reading. Loop thread only.
  static std::shared_ptr<Connection> Adopt(EventLoop* loop, uv_tcp_t* tcp,
                                           const TransportOptions& options,
                                           std::shared_ptr<TransportMetrics> metrics,
                                           std::string peer, bool client_side);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Installs the handler; frames arriving before this are held in the kernel. Also starts
  // reading. REQUIRES: called once, right after Adopt.
  void Start(std::unique_ptr<ConnectionHandler> handler);
  ConnectionHandler* handler() const { return handler_.get(); }

  // Queues a frame; it is written at the end of this loop iteration or at Flush(). Frames to a
  // closing connection are dropped (their payload Buffers released at once).
  void Send(OutFrame frame);
  // Any thread. On the loop thread: Send() (kQueued). On another thread: written at once on
  // the calling thread when DirectWritable() (kDirect; when the socket takes only part of it,
  // the rest is queued ahead of everything else and the loop writes it, also kDirect), else
  // queued with a flush posted to the loop (kQueued, also when the socket would block); dropped
  // when closing (kDropped). After a complete direct write the payload Buffer is released on
  // the calling thread.
  enum class SendPath { kDirect, kQueued, kDropped };
  SendPath SendFromAnyThread(OutFrame frame);
  // Any thread: whether a frame sent now from a thread other than the loop's would be written
  // at once (a hint: it may change before the send). False on a connection whose direct
  // writes are off (TransportOptions::direct_writes, the fault shim), and while another thread
  // is writing to it (never waits for that write).
  bool DirectWritable() const;
  bool direct_writes_enabled() const { return direct_enabled_; }
  // Any thread but the loop's: reads the whole frames of `type` without payload waiting at the
  // front of the socket (at most kDirectReadBytes of them), offering each to `taker`, and
  // returns how many it took. Reads only while the loop is between read passes with no partial
  // frame, the connection established and open, and direct reads on
  // (TransportOptions::direct_reads); otherwise, or when the loop holds read_mu_, returns 0 at
  // once. Never blocks on the loop. A taken frame counts in frames_in, bytes_in,
  // direct_read_frames and as a read for the idle timeout.
  size_t ReadFramesFromAnyThread(uint8_t type, FrameTaker& taker);
  bool direct_reads_enabled() const { return direct_reads_enabled_; }
  // Loop thread: writes what is queued now. When nothing is in flight, direct writes are on and
  // the frames come to at most TransportOptions::loop_direct_max_bytes, they go out in one
  // sendmsg on this thread (what the socket does not take goes to uv_write): a small frame such
  // as an AddCredit then costs no extra loop iteration and no epoll_ctl, which a uv_write's
  // completion does.
  void Flush();
  // Closes now: pending and in-flight writes are cancelled and their Buffers released.
  void Close(Status reason);
  // Stops reading, flushes what is queued, then lingers: ends its side of the stream (a FIN
  // after the last frame) and reads and drops what the peer still sends until the peer closes,
  // and only then closes. Closing with unread data would make the kernel send a reset, which
  // can destroy the last frames before the peer reads them. The whole close is bounded by
  // TransportOptions::close_flush_timeout.
  void CloseAfterFlush(Status reason);
  // The handshake finished; the handshake deadline and the handshake's small metadata limit
  // (TransportOptions::handshake_max_metadata) no longer apply.
  void MarkEstablished();

  bool established() const { return established_.load(std::memory_order_acquire); }
  bool closing() const { return closing_.load(std::memory_order_acquire); }
  // "127.0.0.1:40000" (the remote address).
  const std::string& peer() const { return peer_; }
  uint64_t id() const { return id_; }
  bool client_side() const { return client_side_; }
  EventLoop* loop() const { return loop_; }
  // Bytes queued or in flight.
  size_t queued_bytes() const;
  uint64_t bytes_received() const { return bytes_in_.load(std::memory_order_relaxed); }
  uint64_t bytes_sent() const { return bytes_out_.load(std::memory_order_relaxed); }
  const FrameDecoder& decoder() const { return decoder_; }
  // Bytes of buffers this connection holds beyond the frames themselves: read staging, the
  // decoder's metadata buffer and spare write batches. A few KiB until MarkEstablished(), up
  // to about 128 KiB plus the batches of a busy connection after.
  size_t buffer_bytes() const;

  // The owner (server or client) learns here that the connection is gone. One hook.
  void SetCloseHook(CloseHook hook) { close_hook_ = std::move(hook); }

 private:
  struct WriteBatch;
  class DecoderSink;

  Connection(EventLoop* loop, uv_tcp_t* tcp, const TransportOptions& options,
             std::shared_ptr<TransportMetrics> metrics, std::string peer, bool client_side);

  static void OnAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void OnWrite(uv_write_t* req, int status);
  static void OnTick(uv_timer_t* t);
  static void OnIdleFlush(uv_idle_t* i);
  static void OnDelayFlush(uv_timer_t* t);
  void MaybeCorrupt(const buffer::Buffer& payload);
  static void OnHandleClosed(uv_handle_t* h);

  // One read pass (ReadPasses) with read_idle_ off during it and set after it, once a direct
  // reader has asked (before, no read_mu_ at all: a client's connection never reads through).
  void ReadSocket();
  void ReadPasses();
  void SetReadIdle(bool idle);
  // After a pass, or between passes: read_idle_ when a direct read may start.
  void MarkReadIdle();
  // Reads `bytes` already peeked. REQUIRES: read_mu_ held.
  bool ConsumePeeked(size_t bytes);
  void EndOfStream();
  // CloseAfterFlush's last frames have left: shut down the write side and drain (above).
  void Linger();
  // One read pass while lingering: reads and drops; closes at the peer's end or an error.
  void DrainSocket();
  void CloseHandles();
  // Answers an HTTP request on the data port with a 400 that names the metrics port; closes.
  void AnswerHttp();
  void HandleDecodeError();
  void Tick();
  void ScheduleFlush();
  // Flush() from the loop's own flush callbacks: when the socket took everything at once, does
  // what OnWrite does for a completed write (the handler's OnWritable, or the close that
  // waited for the flush).
  void FlushFromLoop();
  // Flush(); true when the socket took everything at once and the connection is idle.
  bool FlushNow();
  // Writes pending_ (a direct write first when idle, see Flush), then hands the rest to
  // uv_write; the error to close with when a write cannot start. Frames written at once (and
  // those of a uv_write that could not start) move to `written`, released by the caller after
  // the lock. REQUIRES: write_mu_ held.
  Status FlushLocked(std::vector<OutFrame>& written);
  // One gathered sendmsg of pending_ on the loop thread. Fully written frames move to
  // `written`; a partly written one stays first with pending_skip_ set. REQUIRES: write_mu_
  // held, nothing in flight.
  void WritePendingNowLocked(std::vector<OutFrame>& written);
  WriteBatch* TakeBatch();
  void FinishClose();
  // Writes `frame` on the calling thread. REQUIRES: write_mu_ held, the connection idle.
  // Returns the bytes written (a partial write leaves the rest for the loop).
  size_t WriteDirectLocked(const OutFrame& frame);
  void PostFlush();

  EventLoop* const loop_;
  uv_tcp_t* const tcp_;
  uv_timer_t* const timer_;
  uv_idle_t* const idle_;
  uv_timer_t* const delay_timer_;  // the fault shim's delay (FaultShim::delay_ms)
  uint64_t fault_rng_ = 0;         // the fault shim's random state (seed ^ connection id)
  const TransportOptions options_;
  const std::shared_ptr<TransportMetrics> metrics_;
  const std::string peer_;
  const uint64_t id_;
  const bool client_side_;
  const bool direct_enabled_;  // direct writes allowed (options, no fault shim)
  const bool direct_reads_enabled_;  // direct reads allowed (options, no fault shim)
  int fd_ = -1;                // the socket, for direct writes and reads

  // The read state shared with direct readers (see ReadFramesFromAnyThread).
  std::mutex read_mu_;
  bool read_idle_ = false;                 // GUARDED_BY(read_mu_): a direct read may start
  std::atomic<bool> direct_reader_asked_{false};  // set once; the loop then keeps read_idle_
  std::atomic<bool> direct_read_{false};   // a direct read since the last Tick (idle timeout)

  // The write state shared with direct writers. Declared before handler_: a handler's readers
  // may still write while it is destroyed.
  mutable std::mutex write_mu_;
  std::vector<OutFrame> pending_;  // GUARDED_BY(write_mu_): not yet handed to uv_write
  size_t pending_skip_ = 0;        // GUARDED_BY(write_mu_): bytes of pending_[0] already written
  size_t pending_bytes_ = 0;       // GUARDED_BY(write_mu_)
  size_t inflight_bytes_ = 0;      // GUARDED_BY(write_mu_)
  uint32_t inflight_writes_ = 0;   // GUARDED_BY(write_mu_)
  std::atomic<bool> closing_{false};            // written under write_mu_
  std::atomic<bool> close_after_flush_{false};  // written under write_mu_
  std::atomic<bool> established_{false};
  std::atomic<bool> flush_posted_{false};  // a direct writer posted a Flush to the loop
  std::atomic<bool> direct_wrote_{false};  // a direct write since the last Tick (heartbeats)
  std::atomic<uint64_t> bytes_out_{0};

  std::unique_ptr<ConnectionHandler> handler_;
  std::unique_ptr<DecoderSink> sink_;
  FrameDecoder decoder_;
  std::unique_ptr<uint8_t[]> staging_;
  size_t staging_capacity_ = 0;         // bytes a staging read asks for (staging_read_bytes)
  size_t staging_allocated_ = 0;        // bytes staging_ holds: staging_capacity_, or kMaxStaging
  bool in_socket_read_ = false;         // between OnAlloc and its OnRead (see OnAlloc)
  bool stop_reading_deferred_ = false;  // CloseAfterFlush during a read pass
  bool lingering_ = false;              // after CloseAfterFlush's frames left (Linger)
  bool drain_pass_ = false;             // this read pass only drops (DrainSocket)

  std::vector<std::unique_ptr<WriteBatch>> spare_batches_;
  std::vector<iovec> now_iov_;         // WritePendingNowLocked's gather list (its capacity kept)
  std::vector<OutFrame> written_spare_;  // FlushNow's list of written frames (capacity kept)
  bool flush_scheduled_ = false;

  bool started_ = false;
  int open_handles_ = 0;
  Status close_reason_;
  uint64_t created_ms_ = 0;
  uint64_t last_read_ms_ = 0;
  uint64_t last_write_ms_ = 0;
  uint64_t flush_deadline_ms_ = 0;
  std::atomic<uint64_t> bytes_in_{0};
  CloseHook close_hook_;
  std::shared_ptr<Connection> self_;  // alive until every handle is closed
};

}  // namespace sluice::transport
