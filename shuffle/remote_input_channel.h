// RemoteInputChannel: consumes one subpartition of a producer in another process, over the
// connection ShuffleClient shares among every channel to that host.
//
// Credit: the channel owns `buffers_per_channel` exclusive segments (admission at Start) and
// announces one credit per empty buffer it holds for the sender. When the sender reports a
// backlog b, the channel tries to hold b + exclusive buffers, taking floating buffers from the
// gate's pool or waiting as a BufferListener; each buffer gained is unannounced credit, which
// coalesces into one AddCredit when the client writes it. A consumed exclusive buffer comes
// back here (new credit, or it replaces a surplus floating buffer, which returns to the gate);
// a consumed floating buffer goes back to the gate's pool. Zero exclusive buffers work: the
// sender announces its backlog (BacklogAnnouncement) and credit comes from floating buffers.
// In a wide gate (buffer::IsWideGate) every channel has zero exclusive buffers and its
// initial credit is 0: it tells the gate's FloatingCreditDispatcher how many buffers its backlog
// wants, and the dispatcher grants the gate's floating buffers one at a time, round robin over
// the channels that want one (shuffle/floating_credit.h). Such a channel holds at most
// max_buffers_per_channel of them (what a producer's subpartition may hold with the same
// options), so a producer that announces a huge backlog and sends nothing cannot take the
// whole budget; a larger backlog is served in turns.
//
// Every BufferResponse carries a sequence number; a gap or repeat fails the channel with both
// numbers named. Release() gives every buffer back, including the ones in flight.
//
// Receiver ids are random 64-bit values (never 0, unique among the live channels of the
// process), so a peer cannot guess another channel's id. A channel made with a job's access
// token proves it in every PartitionRequest (auth::MakePartitionProof).
//
// Thread-safe: the consumer thread (GetNext), the client's loop thread (network side) and
// buffer recycling on any thread meet under one mutex; listener callbacks and notifications
// run outside it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/local_buffer_pool.h"
#include "shuffle/auth.h"
#include "shuffle/buffer_ring.h"
#include "shuffle/floating_credit.h"
#include "shuffle/input_gate.h"
#include "transport/tcp.h"

namespace sluice::shuffle {

class RemoteInputChannel;

// What a RemoteInputChannel needs from the network (Flink's PartitionRequestClient):
// ShuffleClient in production, a fake in unit tests. Thread-safe: called from any thread.
class PartitionRequestClient {
 public:
  virtual ~PartitionRequestClient() = default;
  // Connects to the channel's producer (or reuses the connection) and requests its partition.
  virtual void RequestPartition(std::shared_ptr<RemoteInputChannel> channel) = 0;
  // The channel's unannounced credit went from 0 to positive: announce it (coalesced).
  virtual void NotifyCreditAvailable(std::shared_ptr<RemoteInputChannel> channel) = 0;
  // The channel was released: stop its subpartition on the server.
  virtual void Cancel(std::shared_ptr<RemoteInputChannel> channel) = 0;
};

// Bytes of event payloads (which need no credit and live outside the network memory) that one
// connection has received and its consumers have not taken yet. The connection charges an
// event before reading it and refuses the frame over its limit (a fixed budget plus a small
// allowance per channel it serves, so every channel's end of partition fits); the channel
// refunds it when the consumer takes the event or the channel drops it. Thread-safe (atomic).
class EventBudget {
 public:
  // What one event costs: its payload plus its heap block's bookkeeping, so that a flood of
  // empty events is bounded too.
  static constexpr size_t kPerEventOverhead = 128;
  static size_t ChargeFor(size_t payload_bytes) { return payload_bytes + kPerEventOverhead; }
  // What a connection's limit grows by for each channel it serves: a small event each.
  static constexpr size_t kPerChannelAllowance = 2 * kPerEventOverhead;

  EventBudget() = default;
  // Charges an event of `payload_bytes`; false (nothing charged) when that would take the
  // bytes held over `limit`.
  bool TryCharge(size_t payload_bytes, size_t limit);
  void Refund(size_t payload_bytes) {
    used_.fetch_sub(ChargeFor(payload_bytes), std::memory_order_acq_rel);
  }
  size_t used() const { return used_.load(std::memory_order_acquire); }

 private:
  std::atomic<size_t> used_{0};
};

class RemoteInputChannel final : public InputChannel,
                                 public buffer::BufferRecycler,
                                 public buffer::BufferListener,
                                 public FloatingCreditReceiver,
                                 public std::enable_shared_from_this<RemoteInputChannel> {
 public:
  // `access_token`: the producer's job token (empty: the partition needs no proof).
  RemoteInputChannel(InputGate* gate, uint32_t index, PartitionRequestClient* client,
                     transport::Endpoint producer, std::string partition_id,
                     uint32_t subpartition, const std::string& access_token = "");
  ~RemoteInputChannel() override;

  // Takes the exclusive segments (admission; timeout) and sends the partition request.
  Status Start() override;
  Result<std::optional<Next>> GetNext() override;
  void Release() override;
  ChannelState State() const override;

  // --- Network side (the client's loop thread) ---
  uint64_t receiver_id() const { return receiver_id_; }
  const transport::Endpoint& producer() const { return producer_; }
  const std::string& partition_id() const { return partition_id_; }
  uint32_t subpartition() const { return subpartition_; }
  // Credit to announce in the PartitionRequest: the exclusive buffers (0 in a wide gate).
  int32_t initial_credit() const { return static_cast<int32_t>(num_exclusive_); }
  // The PartitionRequest's access_proof: empty without an access token.
  std::span<const uint8_t> access_proof() const {
    return has_proof_ ? std::span<const uint8_t>(proof_) : std::span<const uint8_t>();
  }
  // Events this channel receives are charged to `budget` (its connection's); the channel
  // refunds them when they are taken or dropped. Loop thread, before the first OnBuffer.
  void SetEventBudget(std::shared_ptr<EventBudget> budget);
  // An empty buffer for the payload of the next data BufferResponse (one credit is used), or
  // an empty handle when the sender sent without credit.
  buffer::Buffer TakeBufferForPayload();
  // A data buffer or an event arrived. Checks the sequence number; updates the backlog. The
  // gate is not told of the buffer yet: *notify_later is set when the caller must call
  // NotifyDeferred() (the client does so at the end of its read pass, so a pass of many frames
  // wakes the consumer once). A sequence error is told at once.
  Status OnBuffer(buffer::Buffer buffer, int32_t sequence_number, int32_t backlog,
                  bool* notify_later);
  // Tells the gate about buffers OnBuffer held back (nothing after Release). Loop thread.
  void NotifyDeferred();
  // The sender's backlog (BacklogAnnouncement, or the one in a BufferResponse).
  void OnSenderBacklog(int32_t backlog);
  // Credit gained since the last AddCredit; resets it. Loop thread.
  int32_t TakeUnannouncedCredit();
  // Empty buffers held for the sender (exclusive and floating): an upper bound of the credit
  // the sender may hold. For tests and the credit-state dump.
  uint32_t AvailableBuffers() const;
  // The channel's half of the credit state, for the credit-state dump (sluicectl dump).
  struct CreditState {
    uint32_t exclusive_held = 0;    // empty exclusive buffers held for the sender
    uint32_t floating_held = 0;     // empty floating buffers held for the sender
    int32_t unannounced_credit = 0; // gained, not yet sent in an AddCredit
    uint32_t backlog = 0;           // the sender's last known backlog
    uint32_t queued = 0;            // received buffers the consumer has not taken yet
  };
  CreditState Credit() const;
  // Buffer debloating: remembers `bytes` and asks the client to send it (with the next credit
  // flush, as a BufferSizeAnnouncement). Any thread.
  void AnnounceBufferSize(uint32_t bytes) override;
  // Received and not consumed, plus the sender's last reported backlog.
  std::optional<uint32_t> InFlightBuffers() const override;
  // The size to announce, 0 when none is pending; resets it. With `again`, the last size asked
  // for even when it was announced already (a PartitionRequest, also a retried one, is
  // followed by it: an announcement for a request the server had not found was ignored).
  // Loop thread.
  uint32_t TakeBufferSizeAnnouncement(bool again = false);
  // Fails the channel: the consumer's next GetNext returns this error.
  void OnError(Status error);
  bool released() const;
  // "remote 127.0.0.1:4000 partition p subpartition 3 (channel 5 of gate g)"
  std::string Describe() const;

  // BufferRecycler: a consumed exclusive buffer comes home. Any thread.
  void Recycle(buffer::MemorySegment* segment) override;
  // BufferListener: a floating buffer from the gate's pool. Outside pool locks.
  bool NotifyBufferAvailable(buffer::Buffer& buffer) override;
  void NotifyBufferDestroyed() override;
  // FloatingCreditReceiver: one floating buffer from a wide gate's dispatcher. Any thread.
  bool OfferFloating(buffer::Buffer& buffer) override;

 private:
  // Wide gate: how many more floating buffers the backlog wants (at most wide_hold_cap_ held),
  // and telling the dispatcher so. REQUIRES: mu_ held.
  uint32_t WantLocked() const;
  void UpdateWantLocked();
  // Redistribution: tells the gate how WantLocked() changed since the last report, so the
  // floating pool's demand includes the backlog it cannot cover yet. REQUIRES: mu_ held.
  void ReportBacklogDemandLocked();
  void ReportBacklogDemand();
  // Gains floating buffers from the gate's pool until the channel holds the required count,
  // registering as a listener when the pool is empty. Never called with mu_ held: the pool may
  // call listeners (this one included) from inside its methods.
  void RefillFloating();
  uint32_t AvailableLocked() const {
    return static_cast<uint32_t>(exclusive_free_.size() + floating_free_.size());
  }

  // Refunds the event budget for an event buffer leaving the channel. REQUIRES: mu_ held.
  void RefundEventLocked(const buffer::Buffer& b);

  PartitionRequestClient* const client_;
  const transport::Endpoint producer_;
  const std::string partition_id_;
  const uint32_t subpartition_;
  const uint64_t receiver_id_;
  const uint32_t num_exclusive_;
  const uint32_t wide_hold_cap_;  // wide gate: max_buffers_per_channel
  bool has_proof_ = false;
  auth::Proof proof_{};
  // Held here, not through the gate: exclusive segments may come home after the gate is gone.
  const std::shared_ptr<buffer::NetworkBufferPool> global_;
  const std::shared_ptr<buffer::LocalBufferPool> floating_pool_;
  // A wide gate's dispatcher (set at Start), else null: then RefillFloating uses the pool.
  std::shared_ptr<FloatingCreditDispatcher> floating_credit_;

  mutable std::mutex mu_;
  std::vector<buffer::MemorySegment*> exclusive_;       // all exclusive segments (Start)
  std::vector<buffer::MemorySegment*> exclusive_home_;  // returned after Release
  BufferRing exclusive_free_;                  // GUARDED_BY(mu_): credited, empty
  BufferRing floating_free_;                   // GUARDED_BY(mu_): credited, empty
  BufferRing received_;                        // GUARDED_BY(mu_): in order, not consumed
  int32_t unannounced_credit_ = 0;             // GUARDED_BY(mu_)
  uint32_t sender_backlog_ = 0;                // GUARDED_BY(mu_)
  uint32_t required_ = 0;                      // GUARDED_BY(mu_): backlog + exclusive
  uint32_t reported_demand_ = 0;               // GUARDED_BY(mu_): last ReportBacklogDemand
  int32_t expected_sequence_ = 0;              // GUARDED_BY(mu_)
  bool listening_ = false;                     // GUARDED_BY(mu_): registered as listener
  bool released_ = false;                      // GUARDED_BY(mu_)
  bool notify_pending_ = false;                // GUARDED_BY(mu_): OnBuffer held a notify back
  bool finished_ = false;                      // GUARDED_BY(mu_)
  uint32_t buffer_size_ = 0;                   // GUARDED_BY(mu_): debloating, 0 = never asked
  bool buffer_size_pending_ = false;           // GUARDED_BY(mu_): not announced yet
  Status error_;                               // GUARDED_BY(mu_)
  std::shared_ptr<EventBudget> event_budget_;  // GUARDED_BY(mu_)
  // Keeps the channel alive after Release until its last exclusive segment came home.
  std::shared_ptr<RemoteInputChannel> keep_alive_;  // GUARDED_BY(mu_)
};

}  // namespace sluice::shuffle
