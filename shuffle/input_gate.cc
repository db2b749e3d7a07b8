#include "shuffle/input_gate.h"

#include <algorithm>
#include <cstdint>

#include "shuffle/floating_credit.h"
#include "shuffle/gate_listener.h"

namespace sluice::shuffle {

void InputChannel::NotifyNonEmpty() { gate_->QueueChannel(index_); }

Result<std::unique_ptr<InputGate>> InputGate::Create(
    std::string name, std::shared_ptr<buffer::NetworkBufferPool> global,
    const ShuffleOptions& options, uint32_t remote_channels) {
  std::shared_ptr<buffer::LocalBufferPool> floating;
  buffer::GateSpec spec{name, remote_channels, 0};
  const buffer::PoolBounds b = buffer::GatePoolBounds(spec, options.credit);
  if (b.max > 0) {
    buffer::LocalBufferPoolOptions o;
    o.name = "gate " + name + " floating";
    o.min_segments = b.min;
    o.max_segments = b.max;
    auto pool = global->CreateLocalBufferPool(o);
    if (!pool.ok()) return pool.status();
    floating = std::move(*pool);
  }
  const bool wide = buffer::IsWideGate(remote_channels, options.credit);
  return std::unique_ptr<InputGate>(new InputGate(std::move(name), std::move(global), options,
                                                  std::move(floating), wide));
}

InputGate::InputGate(std::string name, std::shared_ptr<buffer::NetworkBufferPool> global,
                     const ShuffleOptions& options,
                     std::shared_ptr<buffer::LocalBufferPool> floating, bool wide)
    : name_(std::move(name)),
      global_(std::move(global)),
      options_(options),
      floating_(std::move(floating)),
      wide_(wide) {}

uint32_t InputGate::exclusive_per_channel() const {
  return wide_ ? 0 : options_.credit.buffers_per_channel;
}

InputGate::~InputGate() { Close(); }

void InputGate::AddChannel(std::shared_ptr<InputChannel> channel) {
  SLUICE_CHECK(channel->index() == channels_.size(), "InputGate::AddChannel out of order");
  channels_.push_back(std::move(channel));
  std::lock_guard lock(mu_);
  queued_.push_back(0);
  finished_.push_back(0);
  failed_.push_back(0);
  stats_.channels = static_cast<uint32_t>(channels_.size());
}

Status InputGate::Start() {
  if (wide_ && floating_ && !floating_credit_) {
    floating_credit_ = std::make_shared<FloatingCreditDispatcher>(
        floating_, static_cast<uint32_t>(channels_.size()));
    for (auto& c : channels_) {
      if (auto* r = dynamic_cast<FloatingCreditReceiver*>(c.get())) {
        floating_credit_->Register(c->index(), r);
      }
    }
  }
  if (options_.debloat && !channels_.empty()) {
    BufferDebloaterOptions o;
    o.target = options_.debloat_target;
    o.min_buffer_size = options_.debloat_min_buffer_size;
    o.segment_size = options_.credit.segment_size;
    o.channels = static_cast<uint32_t>(channels_.size());
    o.buffers_per_channel = std::max<uint32_t>(options_.credit.buffers_per_channel, 1);
    o.threshold_percent = options_.debloat_threshold_percent;
    debloater_ = std::make_unique<BufferDebloater>(o);
    debloat_window_start_ = std::chrono::steady_clock::now();
    stats_.debloat_buffer_size = debloater_->buffer_size();
  }
  for (auto& c : channels_) {
    if (Status st = c->Start(); !st.ok()) return st;
  }
  return Status::Ok();
}

void InputGate::SetListener(std::shared_ptr<GateListener> listener) {
  SLUICE_CHECK(!listener_, "InputGate::SetListener called twice");
  listener_ = std::move(listener);
}

void InputGate::QueueChannel(uint32_t index) {
  // The gate is alive through this call because every caller holds its channel's lock
  // (remote) or is a view notification (local), and Close() releases each channel, which
  // waits for both.
  {
    std::lock_guard lock(mu_);
    if (closed_ || queued_[index]) return;
    queued_[index] = 1;
    ready_.push_back(index);
    // Skipped when nobody waits, the usual case while the consumer keeps up.
    if (!listener_) {
      if (waiting_ > 0) cv_.notify_one();
      return;
    }
  }
  listener_->Request();  // outside mu_: it may post to the IO thread
}

void InputGate::AddFloatingDemand(int64_t delta) {
  const int64_t total = floating_demand_.fetch_add(delta, std::memory_order_relaxed) + delta;
  // Two channels reporting at once may store their sums out of order; the next report (every
  // buffer received carries one) sets it right.
  if (floating_) {
    floating_->SetBacklog(static_cast<uint32_t>(std::clamp<int64_t>(total, 0, UINT32_MAX)));
  }
}

Result<std::optional<BufferOrEvent>> InputGate::GetNext(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (debloater_) {
    const auto now = std::chrono::steady_clock::now();
    // Push mode: the time since a call found nothing is the consumer's idle time (its calls
    // never wait), counted before the window it fell in ends.
    if (push_idle_since_ != std::chrono::steady_clock::time_point{}) {
      debloater_->OnIdle(now - push_idle_since_);
      push_idle_since_ = {};
    }
    MaybeEndDebloatWindow(now);
  }
  while (true) {
    uint32_t index;
    {
      std::unique_lock lock(mu_);
      if (Status s = StoppedLocked(); !s.ok()) return s;
      if (finished_count_ == channels_.size()) return std::optional<BufferOrEvent>();
      const bool ready = !ready_.empty() || (timeout.count() > 0 && WaitLocked(lock, deadline));
      if (Status s = StoppedLocked(); !s.ok()) return s;
      if (!ready) {
        if (debloater_ && listener_) push_idle_since_ = std::chrono::steady_clock::now();
        return std::optional<BufferOrEvent>();
      }
      index = ready_.front();
      ready_.pop_front();
      queued_[index] = 0;
    }
    auto next = channels_[index]->GetNext();
    if (!next.ok()) {
      // A failed channel may be queued more than once (its error and the buffers it held back
      // both notify): report its error once; the other channels go on.
      if (failed_[index]) continue;
      failed_[index] = 1;
      return next.status();
    }
    if (!next->has_value()) continue;  // spurious: the channel was drained already
    InputChannel::Next& n = **next;
    if (n.more_available) QueueChannel(index);
    if (n.buffer.type() == buffer::DataType::kData) {
      ++stats_.buffers_in;
      stats_.bytes_in += n.buffer.size();
      if (debloater_) debloater_->OnConsumed(n.buffer.size());
    } else {
      ++stats_.events_in;
      if (n.buffer.type() == buffer::DataType::kEndOfPartition && !finished_[index]) {
        finished_[index] = 1;
        std::lock_guard lock(mu_);
        ++finished_count_;
      }
    }
    return std::optional<BufferOrEvent>(BufferOrEvent{std::move(n.buffer), index});
  }
}

bool InputGate::WaitLocked(std::unique_lock<std::mutex>& lock,
                           std::chrono::steady_clock::time_point deadline) {
  ++waiting_;
  const auto wait_start = debloater_ ? std::chrono::steady_clock::now()
                                     : std::chrono::steady_clock::time_point{};
  const bool ready =
      cv_.wait_until(lock, deadline, [&] { return !ready_.empty() || cancelled_ || closed_; });
  if (debloater_) debloater_->OnIdle(std::chrono::steady_clock::now() - wait_start);
  --waiting_;
  return ready;
}

void InputGate::MaybeEndDebloatWindow(std::chrono::steady_clock::time_point now) {
  const auto elapsed = now - debloat_window_start_;
  if (elapsed < options_.debloat_period) return;
  debloat_window_start_ = now;
  CountInFlightBuffers();
  const std::optional<uint32_t> size = debloater_->EndWindow(elapsed);
  stats_.debloat_throughput = debloater_->throughput();
  if (!size) return;
  stats_.debloat_buffer_size = *size;
  ++stats_.debloat_announcements;
  for (auto& c : channels_) c->AnnounceBufferSize(*size);
}

void InputGate::CountInFlightBuffers() {
  uint64_t buffers = 0;
  uint32_t counted = 0;
  for (const auto& c : channels_) {
    if (const std::optional<uint32_t> n = c->InFlightBuffers()) {
      buffers += *n;
      ++counted;
    }
  }
  if (counted == 0) return;
  const double per_channel = static_cast<double>(buffers) / counted;
  debloater_->OnInFlightBuffers(per_channel);
  stats_.debloat_in_flight_buffers = debloater_->in_flight_buffers();
}

Status InputGate::StoppedLocked() const {
  if (closed_) return ClosedError("input gate '" + name_ + "' is closed");
  if (cancelled_) return Cancelled("input gate '" + name_ + "' was cancelled");
  return Status::Ok();
}

bool InputGate::IsFinished() const {
  std::lock_guard lock(mu_);
  return finished_count_ == channels_.size();
}

void InputGate::Cancel() {
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    cv_.notify_all();  // under the lock, as in QueueChannel
  }
  if (listener_) listener_->Request();  // push mode: a call follows that reads Cancelled
}

bool InputGate::IsCancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

void InputGate::Close() {
  // Push mode: a run in progress on the IO thread ends first, and none starts after this.
  if (listener_) listener_->Close();
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    ready_.clear();
    cv_.notify_all();
  }
  // No grant after this (one running now finishes first), so no buffer is offered to a
  // channel being released.
  if (floating_credit_) floating_credit_->Close();
  for (auto& c : channels_) c->Release();
  if (floating_) floating_->Destroy();
}

InputGateStats InputGate::Stats() const {
  InputGateStats s = stats_;
  {
    std::lock_guard lock(mu_);
    s.finished_channels = finished_count_;
  }
  if (floating_) s.floating_pool = floating_->Stats();
  return s;
}

std::vector<ChannelState> InputGate::ChannelStates() const {
  std::vector<ChannelState> out;
  out.reserve(channels_.size());
  for (const auto& c : channels_) out.push_back(c->State());
  return out;
}

}  // namespace sluice::shuffle
