// Options of the shuffle layer: credit sizing (shared with buffer::EstimateNetworkMemory so the
// pools created here match the estimate), buffer timeout, checksums, request retries.
// A plain value type.
#pragma once

#include <chrono>
#include <cstdint>

#include "sluice/buffer/memory_estimate.h"
#include "sluice/transport/transport_options.h"

namespace sluice::shuffle {

// Deadlines of every shuffle connection (docs/protocol.md): a heartbeat after this long without
// writing, the peer closed after idle_timeout of silence, the handshake done within
// handshake_timeout.
struct ConnectionTimeouts {
  std::chrono::milliseconds heartbeat_interval{5000};
  std::chrono::milliseconds idle_timeout{30000};
  std::chrono::milliseconds handshake_timeout{5000};
};

struct ShuffleOptions {
  // segment_size, buffers_per_channel (exclusive per remote channel, default 2),
  // floating_per_gate (8), max_buffers_per_channel (output cap per subpartition, 10),
  // overdraft (5), wide_threshold (1024: a gate of more remote channels is wide, no exclusive
  // buffers) and wide_gate_buffers (512: the floating budget such a gate shares).
  buffer::CreditOptions credit;
  // How long a partly filled buffer may wait before it is made readable:
  // > 0: the output flusher flushes every buffer_timeout; 0: flush after every record;
  // kBufferTimeoutOff (-1): only full buffers (and Flush/Finish) are sent.
  std::chrono::milliseconds buffer_timeout{100};
  // CRC32C per data buffer, computed by the sender and checked by the receiver.
  bool checksums = false;
  // A blocked emit (no buffer: backpressure) gives up with Timeout after this long.
  std::chrono::milliseconds emit_timeout{std::chrono::hours(24)};
  // Remote partition requests: PartitionNotFound is retried with this backoff, doubling.
  std::chrono::milliseconds request_backoff_initial{100};
  std::chrono::milliseconds request_backoff_max{10000};
  // Total time a channel keeps retrying a partition that is not registered.
  std::chrono::milliseconds request_timeout{30000};
  // How long the server parks a request for a partition that is not registered yet.
  std::chrono::milliseconds server_park_timeout{200};
  // The transport's seeded fault shim on every connection (corruption, delay); tests and
  // sluice-harness only.
  transport::FaultShim faults;

  // --- Buffer debloating (issue 14; docs/protocol.md "Buffer debloating") ---
  // On: each input gate measures how fast its consumer takes data and asks every remote
  // channel's sender (BufferSizeAnnouncement) to cut buffers so that the data in flight lasts
  // about debloat_target: buffer size = throughput x target x starvation / (channels x buffers
  // in flight per channel, counted by the gate), within [debloat_min_buffer_size,
  // segment_size] (docs/protocol.md has the whole rule). Producers always honour an
  // announcement, whatever this flag says on their side.
  bool debloat = false;
  // Flink's buffer-debloat.target; microseconds, as fast consumers want sub-millisecond ones.
  std::chrono::microseconds debloat_target{std::chrono::seconds(1)};
  std::chrono::milliseconds debloat_period{100};   // how often the gate recomputes
  uint32_t debloat_min_buffer_size = 1024;         // never below schema::kMinDebloatBufferSize
  // A new size is announced only when it differs from the last by more than this share (or
  // reaches a bound), so the size does not flap on noise (Flink's threshold-percentages).
  uint32_t debloat_threshold_percent = 25;
};

inline constexpr std::chrono::milliseconds kBufferTimeoutOff{-1};

}  // namespace sluice::shuffle
