// Test helpers for transport_test.cc (not API): a recording ConnectionHandler that takes payload
// Buffers from a NetworkBufferPool, a deterministic frame generator, a blocking raw socket for
// misbehaving peers, and small waiting utilities.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/network_buffer_pool.h"
#include "frame_bytes.h"
#include "raw_socket.h"
#include "testutil/loopback.h"
#include "testutil/wait.h"
#include "transport/connection.h"
#include "transport/frame_codec.h"
#include "transport/transport_options.h"

namespace sluice::transport::testutil {

using Clock = std::chrono::steady_clock;

inline constexpr uint32_t kSegmentSize = 32 * 1024;
inline constexpr uint8_t kControlType = 1;    // no payload
inline constexpr uint8_t kDataType = 2;       // carries a payload
inline constexpr uint8_t kHeartbeatType = 3;  // no payload, no metadata

inline FrameLimits TestLimits() {
  FrameLimits limits;
  limits.max_payload = kSegmentSize;
  limits.known_types.set(kControlType);
  limits.known_types.set(kDataType);
  limits.known_types.set(kHeartbeatType);
  limits.payload_types.set(kDataType);
  return limits;
}


inline Bytes HeartbeatFrame() { return EncodeFrame(kHeartbeatType, {}); }


// ---------------------------------------------------------------------------------------------
// Deterministic frames: frame `index` of stream `stream` is fully defined by the pair, so the
// receiver checks every byte without the sender keeping copies.

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct FrameSpec {
  uint8_t type = kControlType;
  uint32_t metadata_size = 0;
  uint32_t payload_size = 0;
};

inline FrameSpec SpecFor(uint32_t stream, uint32_t index) {
  const uint64_t r = Mix((uint64_t{stream} << 32) | index);
  FrameSpec s;
  // Metadata: at least 8 bytes (stream and index), mostly short, some beyond OutFrame's inline
  // bytes, a few long ones.
  const uint32_t m = static_cast<uint32_t>(r % 1000);
  if (m < 5) {
    s.metadata_size = 8 + static_cast<uint32_t>((r >> 20) % 60000);
  } else if (m < 100) {
    s.metadata_size = 8 + static_cast<uint32_t>((r >> 20) % 2000);
  } else {
    s.metadata_size = 8 + static_cast<uint32_t>((r >> 20) % 300);
  }
  const uint32_t k = static_cast<uint32_t>((r >> 40) % 100);
  if (k < 25) {
    s.type = kControlType;
  } else {
    s.type = kDataType;
    if (k < 50) {
      s.payload_size = kSegmentSize;  // full segment
    } else if (k < 55) {
      s.payload_size = 0;  // payload type with an empty payload
    } else {
      s.payload_size = 1 + static_cast<uint32_t>((r >> 8) % kSegmentSize);
    }
  }
  return s;
}

// Fills out[0, n) with the pattern of (stream, index, salt), eight bytes at a time (cheap enough
// to check gigabytes under the sanitizers).
inline void FillPattern(uint32_t stream, uint32_t index, uint8_t salt, uint8_t* out, size_t n) {
  const uint64_t base = Mix((uint64_t{stream} << 40) ^ (uint64_t{index} << 8) ^ salt);
  size_t i = 0;
  for (uint64_t w = 0; i + 8 <= n; ++w, i += 8) {
    const uint64_t word = base ^ (w * 0x9E3779B97F4A7C15ull);
    std::memcpy(out + i, &word, 8);
  }
  if (i < n) {
    const uint64_t word = base ^ ((n / 8) * 0x9E3779B97F4A7C15ull);
    std::memcpy(out + i, &word, n - i);
  }
}

// The offset of the first byte of `got` that differs from the pattern, or -1.
inline long FindPatternMismatch(uint32_t stream, uint32_t index, uint8_t salt, const uint8_t* got,
                                size_t n) {
  thread_local Bytes expect;
  expect.resize(n);
  FillPattern(stream, index, salt, expect.data(), n);
  if (std::memcmp(expect.data(), got, n) == 0) return -1;
  for (size_t i = 0; i < n; ++i) {
    if (expect[i] != got[i]) return static_cast<long>(i);
  }
  return -1;
}

inline Bytes MetadataFor(uint32_t stream, uint32_t index, uint32_t size) {
  Bytes m(size);
  FillPattern(stream, index, 0x5A, m.data(), size);
  std::memcpy(m.data(), &stream, 4);
  std::memcpy(m.data() + 4, &index, 4);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Shared state between the loop thread (handler) and the test thread.

struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu:
  std::vector<std::weak_ptr<Connection>> connections;
  uint64_t frames = 0;          // every frame accepted (OnFrame)
  uint64_t control_frames = 0;  // type 1
  uint64_t data_frames = 0;     // type 2, payload delivered
  uint64_t heartbeats = 0;      // type 3
  uint64_t payload_bytes = 0;
  uint64_t read_passes = 0;          // OnReadPassEnd calls
  uint64_t frames_at_pass_end = 0;   // `frames` at the last OnReadPassEnd
  uint64_t mismatches = 0;  // byte-level or order errors (first is described)
  std::string first_mismatch;
  std::vector<Status> closed;  // OnClosed reasons, in order
  std::vector<FrameError> protocol_errors;
  std::vector<std::pair<uint32_t, uint32_t>> received;  // (stream, index) in arrival order
  bool record_order = false;
  uint32_t sent = 0;  // frames a sending handler queued
  bool send_done = false;

  template <typename Pred>
  bool WaitFor(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, pred);
  }
  void Notify() { cv.notify_all(); }
  size_t closed_count() {
    std::lock_guard lock(mu);
    return closed.size();
  }
  std::shared_ptr<Connection> connection(size_t i = 0) {
    std::lock_guard lock(mu);
    return i < connections.size() ? connections[i].lock() : nullptr;
  }
};

struct HandlerOptions {
  // Payload Buffers come from here; nullptr or no free segment: no buffer (the frame is then
  // refused with NoBufferForPayload by the decoder).
  buffer::NetworkBufferPool* receive_pool = nullptr;
  // Verify incoming frames against SpecFor(stream, next index of that stream).
  bool verify = false;
  // Call MarkEstablished() at once.
  bool establish = true;
  // Send `send_count` frames of stream `send_stream`, keeping about `send_window` bytes queued,
  // with payload Buffers from `send_pool`; refilled in OnWritable.
  buffer::NetworkBufferPool* send_pool = nullptr;
  uint32_t send_count = 0;
  uint32_t send_stream = 0;
  size_t send_window = 4u << 20;
  // Last frame returned from OnProtocolError (a control frame whose metadata names the reason).
  bool reply_on_protocol_error = true;
  // After this many frames, close the connection from inside the handler (0: never): in OnFrame,
  // or in OnPayload when `close_in_payload`; with CloseAfterFlush when `close_after_flush`.
  uint64_t close_after_frames = 0;
  bool close_in_payload = false;
  bool close_after_flush = false;
};

// Records what arrives and optionally streams deterministic frames back. Loop thread only.
class TestHandler : public ConnectionHandler {
 public:
  TestHandler(Connection& c, std::shared_ptr<Recorder> rec, HandlerOptions opts)
      : conn_(c.shared_from_this()), rec_(std::move(rec)), opts_(opts) {
    {
      std::lock_guard lock(rec_->mu);
      rec_->connections.push_back(conn_);
    }
    if (opts_.establish) c.MarkEstablished();
    if (opts_.send_count > 0) {
      // The connection is not started yet (Start follows the factory): send on the next turn.
      c.loop()->Post([w = conn_] {
        if (auto conn = w.lock(); conn && !conn->closing()) conn->handler()->OnWritable();
      });
    }
  }

  Admission OnFrame(const FrameHeader& h, std::span<const uint8_t> metadata) override {
    if (h.type == kHeartbeatType) {
      std::lock_guard lock(rec_->mu);
      ++rec_->frames;
      ++rec_->heartbeats;
      return {};
    }
    uint32_t stream = 0;
    uint32_t index = 0;
    if (metadata.size() >= 8) {
      std::memcpy(&stream, metadata.data(), 4);
      std::memcpy(&index, metadata.data() + 4, 4);
    }
    if (opts_.verify) {
      if (index != next_index_)
        Mismatch("frame index " + std::to_string(index) + " arrived, expected " +
                 std::to_string(next_index_));
      const FrameSpec spec = SpecFor(stream, index);
      if (spec.type != h.type || spec.metadata_size != metadata.size() ||
          spec.payload_size != h.payload_length()) {
        Mismatch("frame " + std::to_string(index) + ": header differs (type " +
                 std::to_string(h.type) + ", metadata " + std::to_string(metadata.size()) +
                 ", payload " + std::to_string(h.payload_length()) + ")");
      } else {
        const Bytes expect = MetadataFor(stream, index, spec.metadata_size);
        if (!std::equal(expect.begin(), expect.end(), metadata.begin())) {
          Mismatch("frame " + std::to_string(index) + ": metadata bytes differ");
        }
      }
      ++next_index_;
    }
    {
      std::lock_guard lock(rec_->mu);
      ++rec_->frames;
      if (h.type == kControlType) ++rec_->control_frames;
      if (rec_->record_order) rec_->received.emplace_back(stream, index);
    }
    if (opts_.close_after_frames > 0 && !opts_.close_in_payload &&
        ++handled_ == opts_.close_after_frames) {
      CloseFromHandler();
    }
    if (h.type == kControlType) {
      rec_->Notify();
      return {};
    }
    current_stream_ = stream;
    current_index_ = index;
    buffer::MemorySegment* seg =
        opts_.receive_pool != nullptr ? opts_.receive_pool->TryRequestSegment() : nullptr;
    if (seg == nullptr) return {};  // no buffer: the decoder refuses the frame
    return buffer::Buffer::Wrap(seg, opts_.receive_pool->direct_recycler());
  }

  Status OnPayload(buffer::Buffer payload) override {
    if (opts_.verify) {
      const long at = FindPatternMismatch(current_stream_, current_index_, 0xC3, payload.data(),
                                          payload.size());
      if (at >= 0) {
        Mismatch("frame " + std::to_string(current_index_) + ": payload byte " +
                 std::to_string(at) + " differs");
      }
    }
    {
      std::lock_guard lock(rec_->mu);
      ++rec_->data_frames;
      rec_->payload_bytes += payload.size();
    }
    if (opts_.close_after_frames > 0 && opts_.close_in_payload &&
        ++handled_ == opts_.close_after_frames) {
      CloseFromHandler();
    }
    rec_->Notify();
    return {};  // `payload` goes back to the pool here
  }

  void OnReadPassEnd() override {
    {
      std::lock_guard lock(rec_->mu);
      ++rec_->read_passes;
      rec_->frames_at_pass_end = rec_->frames;
    }
    rec_->Notify();
  }

  void OnWritable() override {
    auto conn = conn_.lock();
    if (!conn || conn->closing()) return;
    while (sent_ < opts_.send_count && conn->queued_bytes() < opts_.send_window) {
      const FrameSpec spec = SpecFor(opts_.send_stream, sent_);
      const Bytes meta = MetadataFor(opts_.send_stream, sent_, spec.metadata_size);
      buffer::Buffer payload;
      if (spec.type == kDataType) {
        buffer::MemorySegment* seg = opts_.send_pool->TryRequestSegment();
        if (seg == nullptr) break;  // every segment is in flight: OnWritable comes again
        payload = buffer::Buffer::Wrap(seg, opts_.send_pool->direct_recycler());
        FillPattern(opts_.send_stream, sent_, 0xC3, payload.data(), spec.payload_size);
        payload.SetSize(spec.payload_size);
      }
      conn->Send(OutFrame::Make(spec.type, meta, std::move(payload)));
      ++sent_;
    }
    {
      std::lock_guard lock(rec_->mu);
      rec_->sent = sent_;
      rec_->send_done = sent_ == opts_.send_count;
    }
    rec_->Notify();
  }

  std::optional<OutFrame> OnProtocolError(FrameError reason, const Status& status) override {
    (void)status;
    {
      std::lock_guard lock(rec_->mu);
      rec_->protocol_errors.push_back(reason);
    }
    if (!opts_.reply_on_protocol_error) return std::nullopt;
    const std::string text = "error:" + std::string(FrameErrorName(reason));
    return OutFrame::Make(kControlType,
                          {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  }

  void OnClosed(const Status& reason) override {
    {
      std::lock_guard lock(rec_->mu);
      rec_->closed.push_back(reason);
    }
    rec_->Notify();
  }

 private:
  void CloseFromHandler() {
    auto conn = conn_.lock();
    if (!conn) return;
    if (opts_.close_after_flush) {
      conn->Send(OutFrame::Make(kControlType, MetadataFor(99, 0, 8)));  // a goodbye frame
      conn->CloseAfterFlush(ClosedError("handler closes after flush"));
    } else {
      conn->Close(ClosedError("handler closes"));
    }
  }
  void Mismatch(const std::string& what) {
    std::lock_guard lock(rec_->mu);
    if (rec_->mismatches++ == 0) rec_->first_mismatch = what;
  }

  std::weak_ptr<Connection> conn_;
  std::shared_ptr<Recorder> rec_;
  const HandlerOptions opts_;
  uint32_t next_index_ = 0;
  uint32_t current_stream_ = 0;
  uint32_t current_index_ = 0;
  uint32_t sent_ = 0;
  uint64_t handled_ = 0;
};

// A loopback port nothing listens on (bound once, then released).
inline uint16_t UnusedPort() { return ::sluice::testutil::UnusedLoopbackPort(); }

inline int CountOpenFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n - 1;  // the directory stream itself
}

// Polls `pred` until it holds or the timeout passes (testutil::PollUntil, 30 s by default).
inline bool Eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  return ::sluice::testutil::PollUntil(pred, timeout);
}

}  // namespace sluice::transport::testutil
