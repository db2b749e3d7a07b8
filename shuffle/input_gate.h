// InputGate: what a consumer reads from. It gathers the buffers and events of its input
// channels (one per producer subpartition it consumes, local or remote) and hands them out in
// arrival order across channels, in order within each channel. The gate ends when every channel
// has delivered its end-of-partition event.
//
// Memory: remote channels own `buffers_per_channel` exclusive segments each (admission); the
// gate owns a floating LocalBufferPool (min 1, max floating_per_gate) that remote channels draw
// on when their sender announces a backlog. Local channels read the producer's buffers directly.
// A wide gate (more remote channels than credit.wide_threshold) takes no exclusive segments: its
// floating pool (min wide_gate_buffers) serves every channel, granted round robin by a
// FloatingCreditDispatcher, so its memory does not grow with its width.
//
// Thread-safety: GetNext/PollNext/Close from one consumer thread; channels notify the gate from
// any thread. Buffers handed out may be released on any thread. A gate in push mode (a
// listener, ShuffleEnvironment::CreateInputGate) is read by its listener on the IO thread
// instead; Close may then come from the listener or from any one other thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/local_buffer_pool.h"
#include "sluice/buffer/network_buffer_pool.h"
#include "sluice/buffer/status.h"
#include "sluice/shuffle/buffer_debloater.h"
#include "sluice/shuffle/shuffle_options.h"

namespace sluice::shuffle {

class InputGate;
class FloatingCreditDispatcher;
class GateListener;  // shuffle/gate_listener.h (internal): push mode

struct BufferOrEvent {
  buffer::Buffer buffer;  // buffer.type(): kData, kEndOfPartition or kEvent
  uint32_t channel = 0;   // index of the channel it came from
};

// Live credit state of one channel, for the credit-state dump.
struct ChannelState {
  uint32_t index = 0;
  std::string description;   // "remote 127.0.0.1:4000 partition p0 subpartition 3"
  bool remote = false;
  uint32_t queued = 0;       // received, not yet consumed
  uint32_t available = 0;    // empty buffers ready to receive into (remote)
  uint32_t exclusive = 0;    // exclusive segments owned (remote)
  uint32_t floating = 0;     // floating buffers held (remote)
  int32_t unannounced_credit = 0;
  uint32_t sender_backlog = 0;
  uint32_t expected_sequence = 0;
  bool finished = false;
  std::string error;
};

// One input of a gate. Implementations notify the gate (NotifyNonEmpty) from any thread when
// they go from empty to non-empty.
class InputChannel {
 public:
  virtual ~InputChannel() = default;
  struct Next {
    buffer::Buffer buffer;
    bool more_available = false;
  };
  // Starts consuming (requests the partition). Consumer thread.
  virtual Status Start() = 0;
  // The next buffer or event, nullopt when none is queued, an error when the channel failed.
  virtual Result<std::optional<Next>> GetNext() = 0;
  // Gives back everything the channel holds; idempotent. Any thread.
  virtual void Release() = 0;
  virtual ChannelState State() const = 0;
  // Buffer debloating: ask the sender for data buffers of about `bytes` (remote channels send
  // a BufferSizeAnnouncement; the default does nothing). Consumer thread.
  virtual void AnnounceBufferSize(uint32_t bytes) { (void)bytes; }
  // Buffer debloating: the data buffers of this channel in flight as the consumer knows them
  // (received and not consumed, plus the sender's last reported backlog), or nullopt for a
  // channel debloating does not size (a local one). Any thread.
  virtual std::optional<uint32_t> InFlightBuffers() const { return std::nullopt; }

  uint32_t index() const { return index_; }

 protected:
  InputChannel(InputGate* gate, uint32_t index) : gate_(gate), index_(index) {}
  void NotifyNonEmpty();
  InputGate* const gate_;
  const uint32_t index_;
};

struct InputGateStats {
  uint64_t buffers_in = 0;
  uint64_t bytes_in = 0;
  uint64_t events_in = 0;
  uint32_t channels = 0;
  uint32_t finished_channels = 0;
  buffer::LocalBufferPoolStats floating_pool;
  // Buffer debloating (ShuffleOptions::debloat): the size last asked of the senders (0: off)
  // and the consumer's smoothed throughput it came from, and how many times it was asked.
  uint32_t debloat_buffer_size = 0;
  double debloat_throughput = 0;
  uint64_t debloat_announcements = 0;
  // The buffers in flight per channel the size was split over (BufferDebloater).
  double debloat_in_flight_buffers = 0;
};

class InputGate {
 public:
  // Creates the gate and, when it has remote channels, its floating pool (admission errors
  // name the numbers). Channels are added with AddChannel before Start.
  static Result<std::unique_ptr<InputGate>> Create(
      std::string name, std::shared_ptr<buffer::NetworkBufferPool> global,
      const ShuffleOptions& options, uint32_t remote_channels);
  ~InputGate();
  InputGate(const InputGate&) = delete;
  InputGate& operator=(const InputGate&) = delete;

  // Push mode: `listener` is asked to run whenever a channel queues something (see
  // shuffle/gate_listener.h); no consumer thread is woken. Set by ShuffleEnvironment before
  // Start; at most once.
  void SetListener(std::shared_ptr<GateListener> listener);
  // Takes ownership of a channel whose index() == number of channels added so far.
  void AddChannel(std::shared_ptr<InputChannel> channel);
  // Starts every channel; the first error is returned (the gate should then be closed).
  Status Start();

  // Waits up to `timeout` for the next buffer or event. nullopt: nothing arrived in time, or the
  // gate is finished (see IsFinished). An error: a channel failed (the message names it; each
  // failed channel's error is returned once, and later calls go on with the other channels);
  // Cancelled after Cancel(); Closed after Close(). One consumer thread at a time.
  Result<std::optional<BufferOrEvent>> GetNext(std::chrono::milliseconds timeout);
  Result<std::optional<BufferOrEvent>> PollNext() { return GetNext(std::chrono::milliseconds(0)); }
  // Every channel delivered its end of partition.
  bool IsFinished() const;
  // Releases every channel and the floating pool; idempotent (also the destructor).
  // Consumer thread (it releases channels the consumer reads from).
  void Close();
  // Any thread: wakes a GetNext blocked now and makes every later one return Cancelled (what
  // is queued stays queued; Close still releases it). Idempotent. For stopping a consumer
  // without polling a flag; in push mode a listener call follows that reads Cancelled.
  // REQUIRES: the gate outlives the call (Close does not end it).
  void Cancel();
  bool IsCancelled() const;

  const std::string& name() const { return name_; }
  size_t num_channels() const { return channels_.size(); }
  InputChannel* channel(uint32_t i) const { return channels_[i].get(); }
  const ShuffleOptions& options() const { return options_; }
  const std::shared_ptr<buffer::NetworkBufferPool>& global_pool() const { return global_; }
  // The floating pool; nullptr for a gate without remote channels.
  const std::shared_ptr<buffer::LocalBufferPool>& floating_pool() const { return floating_; }
  // More remote channels than options().credit.wide_threshold: no exclusive buffers.
  bool wide() const { return wide_; }
  // Exclusive segments each remote channel takes: buffers_per_channel, 0 in a wide gate.
  uint32_t exclusive_per_channel() const;
  // A wide gate's round-robin grant of floating buffers (made by Start), else nullptr.
  std::shared_ptr<FloatingCreditDispatcher> floating_credit() const { return floating_credit_; }
  InputGateStats Stats() const;
  // The longest record a RecordReader over this gate accepts (a longer length prefix fails
  // that channel instead of reserving memory for it): kDefaultMaxRecordSize unless set, e.g.
  // to a job's declared record_size_max. Set before the reader is made. Consumer thread.
  static constexpr uint32_t kDefaultMaxRecordSize = 64u << 20;
  void SetMaxRecordSize(uint32_t bytes) { max_record_size_ = bytes; }
  uint32_t max_record_size() const { return max_record_size_; }
  // Every channel's live credit state.
  std::vector<ChannelState> ChannelStates() const;
  // Called by channels, any thread.
  void QueueChannel(uint32_t index);
  // Called by remote channels, any thread (under the channel's lock, so the gate is alive):
  // the floating buffers the channels' backlogs want and do not hold changed by `delta`. The
  // sum goes to the floating pool as its reported backlog (LocalBufferPool::SetBacklog), part
  // of the demand usage-driven redistribution sizes the pool by.
  void AddFloatingDemand(int64_t delta);
  // The sum, for tests and metrics.
  int64_t floating_demand() const { return floating_demand_.load(std::memory_order_relaxed); }

 private:
  InputGate(std::string name, std::shared_ptr<buffer::NetworkBufferPool> global,
            const ShuffleOptions& options, std::shared_ptr<buffer::LocalBufferPool> floating,
            bool wide);
  // Closed after Close(), Cancelled after Cancel(), else OK. REQUIRES: mu_ held.
  Status StoppedLocked() const;
  // Waits until a channel is ready, the gate stops or `deadline` passes; true when one is
  // ready. The wait counts as the consumer's idle time for debloating. A poll (timeout 0) never
  // calls it: a wait whose deadline has passed still costs a futex call and a contended relock
  // (two system calls on the IO thread per push-mode pass). REQUIRES: mu_ held via `lock`.
  bool WaitLocked(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point deadline);
  // Debloating: ends the debloater's window when debloat_period has passed (after counting
  // the buffers in flight per channel), and announces a new size to every channel. Consumer
  // thread.
  void MaybeEndDebloatWindow(std::chrono::steady_clock::time_point now);
  void CountInFlightBuffers();

  const std::string name_;
  const std::shared_ptr<buffer::NetworkBufferPool> global_;
  const ShuffleOptions options_;
  std::shared_ptr<buffer::LocalBufferPool> floating_;
  const bool wide_;
  std::shared_ptr<FloatingCreditDispatcher> floating_credit_;  // wide: set by Start
  std::shared_ptr<GateListener> listener_;                     // push mode: set before Start
  std::vector<std::shared_ptr<InputChannel>> channels_;
  uint32_t max_record_size_ = kDefaultMaxRecordSize;
  std::atomic<int64_t> floating_demand_{0};  // AddFloatingDemand's sum
  // Buffer debloating (options_.debloat, made at Start): consumer thread only.
  std::unique_ptr<BufferDebloater> debloater_;
  std::chrono::steady_clock::time_point debloat_window_start_;
  // Push mode: when a call last found nothing (zero: busy); the gap to the next call is idle.
  std::chrono::steady_clock::time_point push_idle_since_{};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<uint32_t> ready_;          // GUARDED_BY(mu_): channels with something queued
  std::vector<uint8_t> queued_;         // GUARDED_BY(mu_): channel is in ready_
  std::vector<uint8_t> finished_;       // consumer thread
  std::vector<uint8_t> failed_;         // consumer thread: its error was returned once
  uint32_t finished_count_ = 0;         // consumer thread (read under mu_ for stats)
  InputGateStats stats_;                // consumer thread
  uint32_t waiting_ = 0;                // GUARDED_BY(mu_): consumers blocked in GetNext
  bool closed_ = false;                 // GUARDED_BY(mu_)
  bool cancelled_ = false;              // GUARDED_BY(mu_)
};

}  // namespace sluice::shuffle
