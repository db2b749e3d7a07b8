// Floating credit of a wide input gate: the gate's bounded pool of floating buffers serves every
// remote channel (none has exclusive buffers), one buffer per turn, round robin over the
// channels that want one.
//
//   channel: backlog b, holds h empty buffers --SetWanted(i, b - h)--> FloatingCreditScheduler
//   gate's floating pool --buffer--> FloatingCreditDispatcher --Grant()--> channel i (1 buffer)
//   channel i still wants more --> back to the tail of the round
//
// Fairness: a channel that wants a buffer is granted one within as many grants as there are
// channels waiting when it joined (every channel ahead of it is served at most once first).
//
// FloatingCreditScheduler is the policy alone (no buffers, no threads): thread-compatible.
// FloatingCreditDispatcher moves real buffers: thread-safe; it calls the pool and the channels'
// OfferFloating outside its own lock (lock order: channel, then dispatcher).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/local_buffer_pool.h"

namespace sluice::shuffle {

class FloatingCreditScheduler {
 public:
  explicit FloatingCreditScheduler(uint32_t channels);

  // Channel `channel` wants `wanted` more buffers than it holds (0: none). A channel that goes
  // from 0 to wanting joins the tail of the round; one already waiting keeps its place.
  // REQUIRES: channel < channels.
  void SetWanted(uint32_t channel, uint32_t wanted);
  // The channel the next buffer goes to: the head of the round. Its want drops by one; it goes
  // to the tail if it still wants more. nullopt when no channel wants a buffer.
  std::optional<uint32_t> Grant();

  uint32_t wanted(uint32_t channel) const { return wanted_[channel]; }
  // Channels that want at least one buffer.
  uint32_t waiting() const { return count_; }
  uint64_t total_wanted() const { return total_wanted_; }
  uint64_t grants() const { return grants_; }

 private:
  void PushBack(uint32_t channel);
  uint32_t PopFront();

  std::vector<uint32_t> wanted_;  // per channel
  std::vector<uint8_t> in_ring_;  // per channel: it has a place in the round
  std::vector<uint32_t> ring_;    // the round: each channel at most once (capacity: channels)
  uint32_t head_ = 0;
  uint32_t count_ = 0;
  uint64_t total_wanted_ = 0;
  uint64_t grants_ = 0;
};

// What the dispatcher hands buffers to (RemoteInputChannel). Thread-safe.
class FloatingCreditReceiver {
 public:
  virtual ~FloatingCreditReceiver() = default;
  // Offers one floating buffer. Return true after taking it (moving it out of `buffer`); false
  // to decline (released, or it no longer needs one). Either way the receiver tells the
  // dispatcher its new want (SetWanted). Called outside the dispatcher's lock.
  virtual bool OfferFloating(buffer::Buffer& buffer) = 0;
};

class FloatingCreditDispatcher final : public buffer::BufferListener {
 public:
  // `pool`: the gate's floating pool. `channels`: the gate's channel count.
  FloatingCreditDispatcher(std::shared_ptr<buffer::LocalBufferPool> pool, uint32_t channels);
  ~FloatingCreditDispatcher() override;
  FloatingCreditDispatcher(const FloatingCreditDispatcher&) = delete;
  FloatingCreditDispatcher& operator=(const FloatingCreditDispatcher&) = delete;

  // Registers channel `index` (before any SetWanted for it). Not owned; it must stay valid
  // until Close().
  void Register(uint32_t index, FloatingCreditReceiver* receiver);
  // Records a channel's want; cheap, may be called under the channel's lock. Call Pump() after
  // (outside the channel's lock) when the want grew.
  void SetWanted(uint32_t index, uint32_t wanted);
  // Hands out buffers the pool has while any channel wants one; registers as the pool's
  // listener when it has none. Never call with a channel's lock held.
  void Pump();
  // No more grants (the gate closes); unregisters from the pool. Idempotent.
  void Close();

  uint32_t waiting() const;
  uint64_t grants() const;

  // buffer::BufferListener: a buffer came back to the empty pool. Outside pool locks.
  bool NotifyBufferAvailable(buffer::Buffer& buffer) override;
  void NotifyBufferDestroyed() override;

 private:
  // Counts a running Pump or callback; false once closed.
  bool Enter();
  void Leave();
  // Gives `buffer` to the channels in round-robin order until one takes it; false when none
  // wants it (the buffer is left in place).
  bool Place(buffer::Buffer& buffer);

  const std::shared_ptr<buffer::LocalBufferPool> pool_;
  std::vector<FloatingCreditReceiver*> receivers_;  // set before Start, then read only

  mutable std::mutex mu_;
  FloatingCreditScheduler scheduler_;  // GUARDED_BY(mu_)
  std::condition_variable idle_;      // Close waits for running Pumps and callbacks
  uint32_t active_ = 0;                // GUARDED_BY(mu_): Pumps and callbacks running
  bool listening_ = false;             // GUARDED_BY(mu_)
  bool closed_ = false;                // GUARDED_BY(mu_)
};

}  // namespace sluice::shuffle
