#include "shuffle/floating_credit.h"

#include "buffer/status.h"

namespace sluice::shuffle {

FloatingCreditScheduler::FloatingCreditScheduler(uint32_t channels)
    : wanted_(channels, 0), in_ring_(channels, 0), ring_(channels, 0) {}

void FloatingCreditScheduler::PushBack(uint32_t channel) {
  SLUICE_CHECK(count_ < ring_.size(), "FloatingCreditScheduler: round overflow");
  size_t at = static_cast<size_t>(head_) + count_;
  if (at >= ring_.size()) at -= ring_.size();
  ring_[at] = channel;
  in_ring_[channel] = 1;
  ++count_;
}

uint32_t FloatingCreditScheduler::PopFront() {
  const uint32_t channel = ring_[head_];
  head_ = head_ + 1 == ring_.size() ? 0 : head_ + 1;
  --count_;
  in_ring_[channel] = 0;
  return channel;
}

void FloatingCreditScheduler::SetWanted(uint32_t channel, uint32_t wanted) {
  SLUICE_CHECK(channel < wanted_.size(), "FloatingCreditScheduler: channel out of range");
  total_wanted_ = total_wanted_ - wanted_[channel] + wanted;
  wanted_[channel] = wanted;
  // A channel whose want dropped to 0 keeps its place (Grant skips it); one that wants again
  // while it still has a place keeps that place instead of going to the tail.
  if (wanted > 0 && !in_ring_[channel]) PushBack(channel);
}

std::optional<uint32_t> FloatingCreditScheduler::Grant() {
  while (count_ > 0) {
    const uint32_t channel = PopFront();
    if (wanted_[channel] == 0) continue;  // its want vanished while it waited
    --wanted_[channel];
    --total_wanted_;
    ++grants_;
    if (wanted_[channel] > 0) PushBack(channel);
    return channel;
  }
  return std::nullopt;
}

FloatingCreditDispatcher::FloatingCreditDispatcher(std::shared_ptr<buffer::LocalBufferPool> pool,
                                                   uint32_t channels)
    : pool_(std::move(pool)), receivers_(channels, nullptr), scheduler_(channels) {}

FloatingCreditDispatcher::~FloatingCreditDispatcher() { Close(); }

void FloatingCreditDispatcher::Register(uint32_t index, FloatingCreditReceiver* receiver) {
  SLUICE_CHECK(index < receivers_.size(), "FloatingCreditDispatcher::Register out of range");
  receivers_[index] = receiver;
}

void FloatingCreditDispatcher::SetWanted(uint32_t index, uint32_t wanted) {
  std::lock_guard lock(mu_);
  if (closed_) return;
  scheduler_.SetWanted(index, wanted);
}

bool FloatingCreditDispatcher::Enter() {
  std::lock_guard lock(mu_);
  if (closed_) return false;
  ++active_;
  return true;
}

void FloatingCreditDispatcher::Leave() {
  std::lock_guard lock(mu_);
  if (--active_ == 0 && closed_) idle_.notify_all();
}

void FloatingCreditDispatcher::Pump() {
  if (!Enter()) return;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (closed_ || listening_ || scheduler_.waiting() == 0) break;
    }
    buffer::Buffer b = pool_->RequestBuffer();
    if (!b) {
      {
        std::lock_guard lock(mu_);
        if (closed_ || listening_ || scheduler_.waiting() == 0) break;
        listening_ = true;
      }
      if (pool_->AddBufferListener(this)) break;  // the next buffer back comes to us
      std::lock_guard lock(mu_);
      listening_ = false;
      if (pool_->IsDestroyed()) break;
      continue;  // one became available meanwhile
    }
    if (!Place(b)) break;  // nobody wants it: `b` goes back to the pool
  }
  Leave();
}

bool FloatingCreditDispatcher::Place(buffer::Buffer& buffer) {
  while (true) {
    uint32_t channel;
    {
      std::lock_guard lock(mu_);
      if (closed_) return false;
      const std::optional<uint32_t> next = scheduler_.Grant();
      if (!next) return false;
      channel = *next;
    }
    FloatingCreditReceiver* r = receivers_[channel];
    if (r != nullptr && r->OfferFloating(buffer)) return true;
  }
}

bool FloatingCreditDispatcher::NotifyBufferAvailable(buffer::Buffer& buffer) {
  {
    std::lock_guard lock(mu_);
    listening_ = false;
    if (closed_) return false;
    ++active_;
  }
  const bool placed = Place(buffer);
  // One-shot listener: after taking a buffer, look for more (or register again). A declined
  // buffer must not make us re-register from here.
  if (placed) Pump();
  Leave();
  return placed;
}

void FloatingCreditDispatcher::NotifyBufferDestroyed() {
  std::lock_guard lock(mu_);
  listening_ = false;
}

void FloatingCreditDispatcher::Close() {
  bool was_listening;
  {
    std::lock_guard lock(mu_);
    if (closed_ && active_ == 0 && !listening_) return;
    closed_ = true;
    was_listening = listening_;
    listening_ = false;
  }
  if (was_listening) pool_->RemoveBufferListener(this);
  std::unique_lock lock(mu_);
  idle_.wait(lock, [&] { return active_ == 0; });
}

uint32_t FloatingCreditDispatcher::waiting() const {
  std::lock_guard lock(mu_);
  return scheduler_.waiting();
}

uint64_t FloatingCreditDispatcher::grants() const {
  std::lock_guard lock(mu_);
  return scheduler_.grants();
}

}  // namespace sluice::shuffle
