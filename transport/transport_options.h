// Options and counters shared by the transport's servers, clients and connections.
// TransportOptions is a plain value; TransportMetrics is thread-safe (relaxed atomics), shared
// by every connection of a server or client and read from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "sluice/transport/frame_codec.h"

namespace sluice::transport {

// A seeded fault shim on the sending side of every connection, for tests and sluice-harness
// (the kernel here has no netem). Off by default; never on in production.
struct FaultShim {
  uint64_t seed = 1;
  // Each outgoing payload has one byte flipped with this probability, in parts per million:
  // corruption TCP's checksum would have missed. Receivers catch it with buffer checksums or
  // record checksums.
  uint32_t corrupt_per_million = 0;
  // Writes scheduled by Send() wait this long before they go out (frames queued meanwhile go
  // with them): a delay line without a bandwidth limit. An explicit Flush() is not delayed.
  uint32_t delay_ms = 0;
  bool active() const { return corrupt_per_million > 0 || delay_ms > 0; }
};

struct TransportOptions {
  // Which frame types may arrive, which carry payloads, the largest payload (segment size).
  FrameLimits limits;
  // Staging read size for headers and metadata; payloads are read straight into Buffers.
  uint32_t staging_read_bytes = 4096;
  // Socket buffer sizes (0: the kernel's default and autotuning).
  int send_buffer_bytes = 0;
  int recv_buffer_bytes = 0;
  // At most this many frames per uv_write (each frame is one or two iovecs).
  uint32_t max_frames_per_write = 256;
  // A heartbeat frame (complete, pre-encoded by the upper layer) is sent after this long
  // without writing anything. 0 disables heartbeats.
  std::chrono::milliseconds heartbeat_interval{5000};
  std::vector<uint8_t> heartbeat_frame;
  // A peer that sends nothing at all (not even heartbeats) for this long is closed. Must be
  // well above heartbeat_interval. 0 disables the deadline.
  std::chrono::milliseconds idle_timeout{30000};
  // A connection whose upper layer has not called MarkEstablished() by then is closed.
  std::chrono::milliseconds handshake_timeout{5000};
  // Until MarkEstablished(), frames carry at most this much metadata (a larger one is refused
  // with kFrameTooLong) and reads are staged through staging_read_bytes: an unauthenticated
  // connection holds a few KiB, not the 128 KiB an established one may grow to. Enough for
  // handshake messages and an ErrorResponse (4 KiB of text).
  uint32_t handshake_max_metadata = 8192;
  // CloseAfterFlush waits at most this long for the last frames to leave and the peer to end
  // its stream (see Connection::CloseAfterFlush).
  std::chrono::milliseconds close_flush_timeout{1000};
  FaultShim faults;
  // Write-through: a frame sent from a thread other than the loop's (a producer's flush) is
  // written on that thread when the connection is idle, saving the loop's wake-up (see
  // Connection::SendFromAnyThread). Off here, with an active fault shim, or with the
  // environment variable SLUICE_DIRECT_WRITES=off (for side-by-side measurements): every frame
  // goes through the loop.
  bool direct_writes = true;
  // Read-through: a producer thread that finds no credit reads the AddCredit frames waiting
  // on the socket itself (Connection::ReadFramesFromAnyThread) instead of leaving its buffer to
  // the loop. Off here, with an active fault shim, or with SLUICE_DIRECT_READS=off.
  bool direct_reads = true;
  // With direct writes on, the loop writes an idle connection's queued frames with one sendmsg
  // of its own when they come to at most this many bytes (an AddCredit, a flushed record);
  // larger flushes, which the socket often takes only in part, go through uv_write as before.
  size_t loop_direct_max_bytes = 64 * 1024;
};

struct TransportMetrics {
  std::atomic<uint64_t> connections_opened{0};
  std::atomic<uint64_t> connections_closed{0};
  std::atomic<uint64_t> connections_refused{0};  // over the server's connection limit
  std::atomic<uint64_t> connections_refused_per_peer{0};  // over max_connections_per_peer
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
  std::atomic<uint64_t> frames_in{0};
  std::atomic<uint64_t> frames_out{0};
  std::atomic<uint64_t> writes{0};           // uv_write calls (frames_out / writes = gathering)
  std::atomic<uint64_t> payload_direct_bytes{0};  // read straight into Buffers
  std::atomic<uint64_t> heartbeats_sent{0};
  std::atomic<uint64_t> idle_timeouts{0};
  std::atomic<uint64_t> handshake_timeouts{0};
  std::array<std::atomic<uint64_t>, kFrameErrorCount> protocol_errors{};
  // Connections whose first bytes were an HTTP request (answered 400, closed); not counted in
  // protocol_errors.
  std::atomic<uint64_t> http_requests{0};
  std::atomic<uint64_t> faults_corrupted{0};  // payloads the fault shim corrupted
  // Frames a producer thread wrote to the socket itself (write-through), and those of them the
  // socket took only in part (the loop wrote the rest).
  std::atomic<uint64_t> direct_writes{0};
  std::atomic<uint64_t> direct_partial_writes{0};
  // Writes the loop thread made with one sendmsg of its own (an idle connection's queued
  // frames; Connection::Flush) instead of through uv_write.
  std::atomic<uint64_t> loop_direct_writes{0};
  // Frames a thread other than the loop's read off the socket itself (read-through).
  std::atomic<uint64_t> direct_read_frames{0};

  uint64_t protocol_errors_total() const {
    uint64_t n = 0;
    for (const auto& e : protocol_errors) n += e.load(std::memory_order_relaxed);
    return n;
  }
  uint64_t protocol_errors_of(FrameError e) const {
    return protocol_errors[static_cast<size_t>(e)].load(std::memory_order_relaxed);
  }
};

}  // namespace sluice::transport
