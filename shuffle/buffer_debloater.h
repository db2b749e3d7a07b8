// BufferDebloater: the arithmetic of buffer debloating (Flink's BufferDebloater, sized so that
// memory is really returned: see docs/protocol.md "Buffer debloating"). An input gate feeds it
// the bytes its consumer took and the time the consumer sat idle waiting for data; at the end
// of every window it turns the consumer's throughput into the buffer size each sender should
// cut, so that the data in flight on a channel lasts about `target`:
//
//   throughput  = bytes / (window - idle)                  (the consumer's busy rate, bytes/s)
//   smoothed    = EWMA of throughput over windows (weight kSmoothing for the newest)
//   in_flight   = EWMA of the data buffers in flight per channel, as the gate counts them
//                 (OnInFlightBuffers: received and not consumed + the sender's backlog),
//                 plus kProducerPartialBuffers (the buffer the writer is filling, which no
//                 consumer can see); buffers_per_channel until the first count
//   starvation  = a factor in [1, kMaxStarvationBoost]: x kStarvationStep after a window in
//                 which the consumer waited for data more than kStarvedIdleShare of the time
//                 (while it also took some), else x kStarvationDecay towards 1
//   buffer_size = clamp(smoothed x target x starvation / (channels x in_flight),
//                       min_buffer_size, segment_size)
//
// Dividing by the buffers that really hold the channel's data (not by the credit alone) makes
// the bytes in flight per channel about throughput x target / channels whatever the producer
// queues: under backpressure a channel holds its exclusive buffers full, and the producer a
// queue of at least two finished buffers plus the one it fills, so a credit-only divisor (2)
// left more than the target in flight (about 3.9 buffers per channel are measured at 64
// channels). The starvation factor keeps a small target from costing throughput: when the
// data in flight does not cover the pipeline's stalls (a producer descheduled for longer than
// the target), the consumer runs dry and the buffers grow until it does not; at most
// kMaxStarvationBoost times the target is then in flight.
//
// A new size is reported only when it differs from the last reported one by more than
// threshold_percent, or when it reaches a bound that the last one was not at. A window with
// no busy time (the consumer only waited) leaves the size as it is: there is nothing to learn.
//
// A plain value type with no clock and no I/O: callers pass the elapsed times. Thread-
// compatible (the gate's consumer thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace sluice::shuffle {

struct BufferDebloaterOptions {
  std::chrono::nanoseconds target{std::chrono::seconds(1)};
  uint32_t min_buffer_size = 1024;
  uint32_t segment_size = 32 * 1024;  // the largest buffer, and the starting size
  uint32_t channels = 1;              // channels of the gate that share its throughput
  // Buffers in flight per channel the size is split over until the gate counts them.
  uint32_t buffers_per_channel = 2;
  uint32_t threshold_percent = 25;
};

class BufferDebloater {
 public:
  // Weight of the newest window in the smoothed throughput.
  static constexpr double kSmoothing = 0.5;
  // The buffer a producer's writer fills for the channel, counted on top of what the gate
  // sees.
  static constexpr double kProducerPartialBuffers = 1.0;
  // The starvation factor (see above).
  static constexpr double kStarvedIdleShare = 0.10;
  static constexpr double kStarvationStep = 1.5;
  static constexpr double kStarvationDecay = 0.95;
  static constexpr double kMaxStarvationBoost = 2.0;

  // Bounds are normalised: min_buffer_size in [1, segment_size], channels and
  // buffers_per_channel at least 1.
  explicit BufferDebloater(const BufferDebloaterOptions& options);

  // The pure formula: the buffer size for a throughput of `bytes_per_second`.
  uint32_t BufferSizeFor(double bytes_per_second) const;

  // The consumer took `bytes` of data.
  void OnConsumed(uint64_t bytes) { bytes_ += bytes; }
  // The consumer waited `idle` for data (not busy).
  void OnIdle(std::chrono::nanoseconds idle) { idle_ += idle; }
  // The gate counted `per_channel` data buffers in flight per channel on average (received
  // and not consumed, plus the senders' backlogs). Smoothed as the throughput; used from the
  // next EndWindow on. Negative or NaN counts are ignored.
  void OnInFlightBuffers(double per_channel);
  // Ends a window of `elapsed` (since the previous call): the new buffer size when it should be
  // announced, else nullopt. Resets the window's counters.
  std::optional<uint32_t> EndWindow(std::chrono::nanoseconds elapsed);

  // The size last reported (segment_size before any), and the smoothed throughput (bytes/s;
  // 0 before the first busy window).
  uint32_t buffer_size() const { return buffer_size_; }
  double throughput() const { return throughput_; }
  // The divisor in use: buffers in flight per channel (at least 1).
  double in_flight_buffers() const;
  // The starvation factor in use (1: the consumer has not run dry lately).
  double starvation_boost() const { return boost_; }
  const BufferDebloaterOptions& options() const { return options_; }

 private:
  BufferDebloaterOptions options_;
  uint64_t bytes_ = 0;
  std::chrono::nanoseconds idle_{0};
  double throughput_ = 0;
  bool measured_ = false;
  double in_flight_ = 0;  // smoothed count from OnInFlightBuffers, without the partial buffer
  bool counted_ = false;
  double boost_ = 1;
  uint32_t buffer_size_;
};

}  // namespace sluice::shuffle
