#include "shuffle/remote_input_channel.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>
#include <utility>

namespace sluice::shuffle {

namespace {
// The receiver ids of live channels in this process. A sequential counter would let a peer
// guess another channel's id (and inject data into it), so ids are random; this set only
// keeps them unique.
struct LiveIds {
  std::mutex mu;
  std::unordered_set<uint64_t> ids;  // GUARDED_BY(mu)
};
LiveIds& Live() {
  static auto* live = new LiveIds();  // never destroyed: channels may outlive static teardown
  return *live;
}

uint64_t NewReceiverId() {
  while (true) {
    const auth::Nonce random = auth::MakeNonce();  // OpenSSL's CSPRNG
    uint64_t id;
    std::memcpy(&id, random.data(), sizeof(id));
    if (id == 0) continue;
    std::lock_guard lock(Live().mu);
    if (Live().ids.insert(id).second) return id;
  }
}

void ForgetReceiverId(uint64_t id) {
  std::lock_guard lock(Live().mu);
  Live().ids.erase(id);
}
}  // namespace

bool EventBudget::TryCharge(size_t payload_bytes, size_t limit) {
  const size_t bytes = ChargeFor(payload_bytes);
  size_t used = used_.load(std::memory_order_acquire);
  do {
    if (bytes > limit || used > limit - bytes) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_acq_rel));
  return true;
}

RemoteInputChannel::RemoteInputChannel(InputGate* gate, uint32_t index,
                                       PartitionRequestClient* client,
                                       transport::Endpoint producer, std::string partition_id,
                                       uint32_t subpartition, const std::string& access_token)
    : InputChannel(gate, index),
      client_(client),
      producer_(std::move(producer)),
      partition_id_(std::move(partition_id)),
      subpartition_(subpartition),
      receiver_id_(NewReceiverId()),
      num_exclusive_(gate->exclusive_per_channel()),
      wide_hold_cap_(std::max<uint32_t>(1, gate->options().credit.max_buffers_per_channel)),
      global_(gate->global_pool()),
      floating_pool_(gate->floating_pool()) {
  if (!access_token.empty()) {
    has_proof_ = true;
    proof_ = auth::MakePartitionProof(access_token, partition_id_, subpartition_);
  }
}

RemoteInputChannel::~RemoteInputChannel() { ForgetReceiverId(receiver_id_); }

void RemoteInputChannel::SetEventBudget(std::shared_ptr<EventBudget> budget) {
  std::lock_guard lock(mu_);
  event_budget_ = std::move(budget);
}

void RemoteInputChannel::RefundEventLocked(const buffer::Buffer& b) {
  if (event_budget_ && b && buffer::IsEvent(b.type())) event_budget_->Refund(b.size());
}

uint32_t RemoteInputChannel::AvailableBuffers() const {
  std::lock_guard lock(mu_);
  return AvailableLocked();
}

RemoteInputChannel::CreditState RemoteInputChannel::Credit() const {
  std::lock_guard lock(mu_);
  CreditState s;
  s.exclusive_held = static_cast<uint32_t>(exclusive_free_.size());
  s.floating_held = static_cast<uint32_t>(floating_free_.size());
  s.unannounced_credit = unannounced_credit_;
  s.backlog = sender_backlog_;
  s.queued = static_cast<uint32_t>(received_.size());
  return s;
}

std::string RemoteInputChannel::Describe() const {
  return "remote channel " + std::to_string(index_) + " of gate '" + gate_->name() +
         "' (partition '" + partition_id_ + "' subpartition " + std::to_string(subpartition_) +
         " at " + producer_.ToString() + ", receiver " + std::to_string(receiver_id_) + ")";
}

Status RemoteInputChannel::Start() {
  std::vector<buffer::MemorySegment*> exclusive;
  if (num_exclusive_ > 0) {
    auto segments = global_->RequestExclusiveSegments(num_exclusive_);
    if (!segments.ok()) {
      return Status(segments.status().code(),
                    Describe() + ": exclusive buffers: " + segments.status().message());
    }
    exclusive = std::move(*segments);
  }
  {
    std::lock_guard lock(mu_);
    floating_credit_ = gate_->floating_credit();
    exclusive_ = std::move(exclusive);
    for (buffer::MemorySegment* s : exclusive_) {
      exclusive_free_.push_back(buffer::Buffer::Wrap(s, this));
    }
    required_ = num_exclusive_;
  }
  client_->RequestPartition(shared_from_this());
  return Status::Ok();
}

Result<std::optional<InputChannel::Next>> RemoteInputChannel::GetNext() {
  std::lock_guard lock(mu_);
  if (!error_.ok()) return error_;
  if (received_.empty()) return std::optional<Next>();
  Next n;
  n.buffer = std::move(received_.front());
  received_.pop_front();
  n.more_available = !received_.empty();
  RefundEventLocked(n.buffer);  // taken by the consumer: no longer the connection's to hold
  if (n.buffer.type() == buffer::DataType::kEndOfPartition) finished_ = true;
  return std::optional<Next>(std::move(n));
}

buffer::Buffer RemoteInputChannel::TakeBufferForPayload() {
  std::lock_guard lock(mu_);
  if (released_) return {};
  // Floating first: they go back to the gate sooner, where other channels may need them.
  BufferRing& from = floating_free_.empty() ? exclusive_free_ : floating_free_;
  if (from.empty()) return {};
  buffer::Buffer b = std::move(from.front());
  from.pop_front();
  return b;
}

Status RemoteInputChannel::OnBuffer(buffer::Buffer buffer, int32_t sequence_number,
                                    int32_t backlog, bool* notify_later) {
  {
    std::unique_lock lock(mu_);
    if (released_) {
      RefundEventLocked(buffer);  // dropped here, not queued
      lock.unlock();
      return Status::Ok();  // `buffer` goes home when it leaves scope, outside the lock
    }
    if (sequence_number != expected_sequence_) {
      RefundEventLocked(buffer);
      Status err = ProtocolError(Describe() + ": expected buffer sequence number " +
                                 std::to_string(expected_sequence_) + " but got " +
                                 std::to_string(sequence_number) +
                                 (sequence_number < expected_sequence_ ? " (a repeat)"
                                                                       : " (a gap)"));
      if (error_.ok()) error_ = err;
      NotifyNonEmpty();  // under mu_: see NotifyDeferred
      return err;
    }
    ++expected_sequence_;
    const bool was_empty = received_.empty();
    received_.push_back(std::move(buffer));
    sender_backlog_ = static_cast<uint32_t>(backlog);
    required_ = sender_backlog_ + num_exclusive_;
    if (was_empty) {
      *notify_later = !notify_pending_;  // once per pass
      notify_pending_ = true;
    }
  }
  RefillFloating();
  ReportBacklogDemand();
  return Status::Ok();
}

void RemoteInputChannel::NotifyDeferred() {
  // Under mu_ through the call: the consumer may be closing the gate right now, and Release()
  // (which the gate's Close runs on every channel before the gate can go away) takes mu_ and
  // sets released_, so holding it keeps the gate alive. Lock order: channel, then gate.
  std::lock_guard lock(mu_);
  if (!notify_pending_) return;
  notify_pending_ = false;
  if (!released_) NotifyNonEmpty();
}

void RemoteInputChannel::OnSenderBacklog(int32_t backlog) {
  {
    std::lock_guard lock(mu_);
    if (released_) return;
    sender_backlog_ = static_cast<uint32_t>(backlog);
    required_ = sender_backlog_ + num_exclusive_;
  }
  RefillFloating();
  ReportBacklogDemand();
}

void RemoteInputChannel::ReportBacklogDemandLocked() {
  const uint32_t now = WantLocked();  // 0 once released
  if (now == reported_demand_) return;
  gate_->AddFloatingDemand(static_cast<int64_t>(now) - static_cast<int64_t>(reported_demand_));
  reported_demand_ = now;
}

void RemoteInputChannel::ReportBacklogDemand() {
  std::lock_guard lock(mu_);
  ReportBacklogDemandLocked();
}

uint32_t RemoteInputChannel::WantLocked() const {
  // A sender's backlog beyond its subpartition cap is not believed: one channel (a producer
  // that announces much and sends nothing) holds at most that many of the shared buffers.
  const uint32_t target = std::min(required_, wide_hold_cap_);
  const uint32_t available = AvailableLocked();
  return released_ || available >= target ? 0 : target - available;
}

void RemoteInputChannel::UpdateWantLocked() {
  if (floating_credit_) floating_credit_->SetWanted(index_, WantLocked());
}

bool RemoteInputChannel::OfferFloating(buffer::Buffer& buffer) {
  bool notify = false;
  {
    std::lock_guard lock(mu_);
    if (WantLocked() == 0) {
      UpdateWantLocked();
      return false;  // declined: the dispatcher offers it to the next channel
    }
    floating_free_.push_back(std::move(buffer));
    notify = unannounced_credit_++ == 0;
    UpdateWantLocked();
    ReportBacklogDemandLocked();
  }
  if (notify) client_->NotifyCreditAvailable(shared_from_this());
  return true;
}

void RemoteInputChannel::RefillFloating() {
  if (floating_credit_) {  // wide gate: the dispatcher grants, round robin
    {
      std::lock_guard lock(mu_);
      UpdateWantLocked();
    }
    floating_credit_->Pump();
    return;
  }
  const auto& pool = floating_pool_;
  if (!pool) return;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (released_ || AvailableLocked() >= required_ || listening_) return;
    }
    buffer::Buffer b = pool->RequestBuffer();
    if (!b) {
      {
        std::lock_guard lock(mu_);
        if (released_ || listening_) return;
        listening_ = true;
      }
      if (pool->AddBufferListener(this)) return;  // a buffer comes through the listener
      std::lock_guard lock(mu_);
      listening_ = false;  // one became available meanwhile: try again
      continue;
    }
    bool notify = false;
    buffer::Buffer surplus;  // released after the lock (it may call listeners)
    {
      std::lock_guard lock(mu_);
      if (released_ || AvailableLocked() >= required_) {
        surplus = std::move(b);
      } else {
        floating_free_.push_back(std::move(b));
        notify = unannounced_credit_++ == 0;
      }
    }
    if (notify) client_->NotifyCreditAvailable(shared_from_this());
    if (surplus) return;
  }
}

bool RemoteInputChannel::NotifyBufferAvailable(buffer::Buffer& buffer) {
  bool notify = false;
  bool want_more = false;
  {
    std::lock_guard lock(mu_);
    listening_ = false;
    if (released_ || AvailableLocked() >= required_) return false;  // decline
    floating_free_.push_back(std::move(buffer));
    notify = unannounced_credit_++ == 0;
    want_more = AvailableLocked() < required_;
    ReportBacklogDemandLocked();
  }
  if (notify) client_->NotifyCreditAvailable(shared_from_this());
  if (want_more) RefillFloating();
  return true;
}

void RemoteInputChannel::NotifyBufferDestroyed() {
  std::lock_guard lock(mu_);
  listening_ = false;
}

void RemoteInputChannel::Recycle(buffer::MemorySegment* segment) {
  std::vector<buffer::MemorySegment*> home;
  std::shared_ptr<RemoteInputChannel> last_ref;  // destroyed last: may delete this
  buffer::Buffer surplus;                          // released after the lock
  bool notify = false;
  {
    std::lock_guard lock(mu_);
    if (released_) {
      exclusive_home_.push_back(segment);
      if (exclusive_home_.size() == exclusive_.size()) {
        home.swap(exclusive_home_);
        last_ref = std::move(keep_alive_);
      }
    } else {
      buffer::Buffer b = buffer::Buffer::Wrap(segment, this);
      if (AvailableLocked() >= required_ && !floating_free_.empty()) {
        // The exclusive buffer takes the place of a surplus floating one: same credit.
        surplus = std::move(floating_free_.back());
        floating_free_.pop_back();
      } else {
        notify = unannounced_credit_++ == 0;
      }
      exclusive_free_.push_back(std::move(b));
    }
  }
  if (!home.empty()) {
    global_->RecycleExclusiveSegments(home);
  }
  if (notify) client_->NotifyCreditAvailable(shared_from_this());
}

int32_t RemoteInputChannel::TakeUnannouncedCredit() {
  std::lock_guard lock(mu_);
  const int32_t c = unannounced_credit_;
  unannounced_credit_ = 0;
  return released_ ? 0 : c;
}

void RemoteInputChannel::AnnounceBufferSize(uint32_t bytes) {
  {
    std::lock_guard lock(mu_);
    if (released_ || finished_ || bytes == 0) return;
    buffer_size_ = bytes;
    buffer_size_pending_ = true;
  }
  // Sent with the next credit flush (SendCredit sends a pending size too); outside mu_.
  client_->NotifyCreditAvailable(shared_from_this());
}

std::optional<uint32_t> RemoteInputChannel::InFlightBuffers() const {
  std::lock_guard lock(mu_);
  if (released_ || finished_) return std::nullopt;
  return static_cast<uint32_t>(received_.size()) + sender_backlog_;
}

uint32_t RemoteInputChannel::TakeBufferSizeAnnouncement(bool again) {
  std::lock_guard lock(mu_);
  if (!std::exchange(buffer_size_pending_, false) && !again) return 0;
  return buffer_size_;
}

void RemoteInputChannel::OnError(Status error) {
  {
    std::lock_guard lock(mu_);
    if (!error_.ok() || released_) return;
    error_ = Status(error.code(), Describe() + ": " + error.message());
    NotifyNonEmpty();  // under mu_, as in NotifyDeferred
  }
}

bool RemoteInputChannel::released() const {
  std::lock_guard lock(mu_);
  return released_;
}

void RemoteInputChannel::Release() {
  BufferRing drop_exclusive, drop_floating, drop_received;
  bool was_listening;
  std::vector<buffer::MemorySegment*> home;
  {
    std::lock_guard lock(mu_);
    if (released_) return;
    released_ = true;
    drop_exclusive.swap(exclusive_free_);
    drop_floating.swap(floating_free_);
    drop_received.swap(received_);
    for (size_t i = 0; i < drop_received.size(); ++i) RefundEventLocked(drop_received[i]);
    UpdateWantLocked();  // 0: released
    ReportBacklogDemandLocked();  // takes this channel's share back (the gate is alive)
    was_listening = listening_;
    listening_ = false;
    // Exclusive buffers still out (with the consumer or in flight) come home through Recycle;
    // stay alive until then.
    keep_alive_ = shared_from_this();
    if (exclusive_.empty()) keep_alive_.reset();
  }
  if (was_listening && floating_pool_) floating_pool_->RemoveBufferListener(this);
  client_->Cancel(shared_from_this());
  // Dropping the exclusive buffers recycles them into exclusive_home_ (released_ is set).
  drop_exclusive.clear();
  drop_floating.clear();
  drop_received.clear();
}

ChannelState RemoteInputChannel::State() const {
  std::lock_guard lock(mu_);
  ChannelState s;
  s.index = index_;
  s.description = Describe();
  s.remote = true;
  s.queued = static_cast<uint32_t>(received_.size());
  s.available = AvailableLocked();
  s.exclusive = static_cast<uint32_t>(exclusive_.size());
  s.floating = static_cast<uint32_t>(floating_free_.size());
  s.unannounced_credit = unannounced_credit_;
  s.sender_backlog = sender_backlog_;
  s.expected_sequence = static_cast<uint32_t>(expected_sequence_);
  s.finished = finished_;
  s.error = error_.ok() ? "" : error_.message();
  return s;
}

}  // namespace sluice::shuffle
