// BufferDebloater: the arithmetic of buffer debloating (Flink's BufferDebloater, sized so that
// memory is really returned: see docs/protocol.md "Buffer debloating"). An input gate feeds it
// the bytes its consumer took and the time the consumer sat idle waiting for data; at the end
// of every window it turns the consumer's throughput into the buffer size each sender should
// cut, so that the data in flight on a channel lasts about `target`:
//
//   throughput  = bytes / (window - idle)                  (the consumer's busy rate, bytes/s)
//   smoothed    = EWMA of throughput over windows (weight kSmoothing for the newest)
//   buffer_size = clamp(smoothed x target / (channels x buffers_per_channel),
//                       min_buffer_size, segment_size)
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
  uint32_t buffers_per_channel = 2;   // buffers in flight per channel the size is split over
  uint32_t threshold_percent = 25;
};

class BufferDebloater {
 public:
  // Weight of the newest window in the smoothed throughput.
  static constexpr double kSmoothing = 0.5;

  // Bounds are normalised: min_buffer_size in [1, segment_size], channels and
  // buffers_per_channel at least 1.
  explicit BufferDebloater(const BufferDebloaterOptions& options);

  // The pure formula: the buffer size for a throughput of `bytes_per_second`.
  uint32_t BufferSizeFor(double bytes_per_second) const;

  // The consumer took `bytes` of data.
  void OnConsumed(uint64_t bytes) { bytes_ += bytes; }
  // The consumer waited `idle` for data (not busy).
  void OnIdle(std::chrono::nanoseconds idle) { idle_ += idle; }
  // Ends a window of `elapsed` (since the previous call): the new buffer size when it should be
  // announced, else nullopt. Resets the window's counters.
  std::optional<uint32_t> EndWindow(std::chrono::nanoseconds elapsed);

  // The size last reported (segment_size before any), and the smoothed throughput (bytes/s;
  // 0 before the first busy window).
  uint32_t buffer_size() const { return buffer_size_; }
  double throughput() const { return throughput_; }
  const BufferDebloaterOptions& options() const { return options_; }

 private:
  BufferDebloaterOptions options_;
  uint64_t bytes_ = 0;
  std::chrono::nanoseconds idle_{0};
  double throughput_ = 0;
  bool measured_ = false;
  uint32_t buffer_size_;
};

}  // namespace sluice::shuffle
