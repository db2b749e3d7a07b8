#include "shuffle/buffer_debloater.h"

#include <algorithm>
#include <cmath>

namespace sluice::shuffle {

BufferDebloater::BufferDebloater(const BufferDebloaterOptions& options) : options_(options) {
  options_.segment_size = std::max<uint32_t>(options_.segment_size, 1);
  options_.min_buffer_size = std::clamp<uint32_t>(options_.min_buffer_size, 1,
                                                  options_.segment_size);
  options_.channels = std::max<uint32_t>(options_.channels, 1);
  options_.buffers_per_channel = std::max<uint32_t>(options_.buffers_per_channel, 1);
  buffer_size_ = options_.segment_size;
}

void BufferDebloater::OnInFlightBuffers(double per_channel) {
  if (!(per_channel >= 0)) return;  // also NaN
  in_flight_ = counted_ ? kSmoothing * per_channel + (1 - kSmoothing) * in_flight_ : per_channel;
  counted_ = true;
}

double BufferDebloater::in_flight_buffers() const {
  if (!counted_) return options_.buffers_per_channel;
  return std::max(1.0, in_flight_ + kProducerPartialBuffers);
}

uint32_t BufferDebloater::BufferSizeFor(double bytes_per_second) const {
  const double seconds = std::chrono::duration<double>(options_.target).count();
  const double in_flight = std::max(0.0, bytes_per_second) * std::max(0.0, seconds) * boost_;
  const double per_buffer =
      in_flight / (static_cast<double>(options_.channels) * in_flight_buffers());
  if (!(per_buffer < options_.segment_size)) return options_.segment_size;  // also NaN, inf
  return std::max(options_.min_buffer_size, static_cast<uint32_t>(std::ceil(per_buffer)));
}

std::optional<uint32_t> BufferDebloater::EndWindow(std::chrono::nanoseconds elapsed) {
  const std::chrono::nanoseconds busy = elapsed - idle_;
  const uint64_t bytes = bytes_;
  bytes_ = 0;
  idle_ = std::chrono::nanoseconds(0);
  if (busy.count() <= 0) return std::nullopt;
  const double idle_share = 1.0 - static_cast<double>(busy.count()) / elapsed.count();
  boost_ = idle_share > kStarvedIdleShare ? std::min(kMaxStarvationBoost, boost_ * kStarvationStep)
                                          : std::max(1.0, boost_ * kStarvationDecay);
  const double rate = static_cast<double>(bytes) / std::chrono::duration<double>(busy).count();
  throughput_ = measured_ ? kSmoothing * rate + (1 - kSmoothing) * throughput_ : rate;
  measured_ = true;
  const uint32_t size = BufferSizeFor(throughput_);
  if (size == buffer_size_) return std::nullopt;
  const bool at_bound = size == options_.min_buffer_size || size == options_.segment_size;
  const double change = std::abs(static_cast<double>(size) - buffer_size_) / buffer_size_;
  if (!at_bound && change * 100 <= options_.threshold_percent) return std::nullopt;
  buffer_size_ = size;
  return size;
}

}  // namespace sluice::shuffle
