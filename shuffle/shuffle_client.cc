#include "shuffle/shuffle_client.h"

#include "shuffle/auth.h"

#include <deque>
#include <future>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "shuffle/crc32c.h"
#include "shuffle/gate_listener.h"
#include "shuffle/handshake.h"
#include "shuffle/remote_input_channel.h"
#include "transport/log.h"
#include "transport/timer.h"

namespace sluice::shuffle {

using schema::MessageType;
using transport::Admission;
using transport::FrameError;
using transport::Rejection;

namespace {
Rejection Reject(FrameError reason, Status st) { return Rejection{reason, std::move(st)}; }

// How many receiver ids a connection remembers after their channel left it (failed, released,
// not found): frames still in flight for them are dropped, not taken as a protocol error.
constexpr size_t kRecentlyClosedIds = 4096;

// A bounded set of receiver ids, oldest forgotten first. Loop thread only.
class RecentIds {
 public:
  void Insert(uint64_t id) {
    if (!set_.insert(id).second) return;
    order_.push_back(id);
    if (order_.size() > kRecentlyClosedIds) {
      set_.erase(order_.front());
      order_.pop_front();
    }
  }
  bool Contains(uint64_t id) const { return set_.count(id) != 0; }

 private:
  std::deque<uint64_t> order_;
  std::unordered_set<uint64_t> set_;
};
}  // namespace

// A PartitionNotFound retry waiting for its backoff to pass.
struct ShuffleClient::Retry {
  std::unique_ptr<transport::Timer> timer;
  std::weak_ptr<RemoteInputChannel> channel;
  ShuffleClient* client = nullptr;
};

// The client's side of one connection. Loop thread only.
class ShuffleClient::Handler final : public transport::ConnectionHandler {
 public:
  Handler(ShuffleClient* client, transport::Connection* conn)
      : client_(client),
        conn_(conn),
        event_budget_(std::make_shared<EventBudget>()),
        handshake_(client->config_.auth, client->config_.options.credit.segment_size,
                   client->config_.node_name, conn->peer()) {}

  void AddChannel(const std::shared_ptr<RemoteInputChannel>& ch) {
    SendHelloOnce();
    ch->SetEventBudget(event_budget_);
    channels_[ch->receiver_id()] = ch;
    retry_[ch->receiver_id()].first_request = transport::LoopNowMs(conn_->loop());
    if (established_) {
      SendRequest(*ch);
    } else {
      pending_.push_back(ch->receiver_id());
    }
  }

  // The channel leaves this connection (released or failed): its subpartition is cancelled at
  // the server and frames still in flight for it are dropped.
  void RemoveChannel(uint64_t receiver_id) {
    if (channels_.erase(receiver_id) == 0) return;
    retry_.erase(receiver_id);
    closed_ids_.Insert(receiver_id);
    if (established_ && !conn_->closing()) {
      conn_->Send(MakeFrame(MessageType::kCancelPartitionRequest,
                            builder_.CancelPartitionRequest(receiver_id)));
    }
  }

  void SendCredit(RemoteInputChannel& ch) {
    if (!established_ || conn_->closing()) return;  // the request carries initial credit
    auto it = channels_.find(ch.receiver_id());
    if (it == channels_.end()) return;
    const int32_t credit = ch.TakeUnannouncedCredit();
    if (credit > 0) {
      conn_->Send(MakeFrame(MessageType::kAddCredit, builder_.AddCredit(ch.receiver_id(), credit)));
    }
    SendBufferSize(ch);
  }

  // Buffer debloating: a size the channel's gate asked for since the last flush (`again`:
  // the last one, after a PartitionRequest).
  void SendBufferSize(RemoteInputChannel& ch, bool again = false) {
    if (const uint32_t size = ch.TakeBufferSizeAnnouncement(again); size != 0) {
      conn_->Send(MakeFrame(MessageType::kBufferSizeAnnouncement,
                            builder_.BufferSizeAnnouncement(ch.receiver_id(), size)));
    }
  }

  void SendRequest(RemoteInputChannel& ch) {
    // Credit gained before the request went out is included in it.
    const int32_t credit = ch.initial_credit() + ch.TakeUnannouncedCredit();
    conn_->Send(MakeFrame(MessageType::kPartitionRequest,
                          builder_.PartitionRequest(ch.partition_id(), ch.subpartition(),
                                                    ch.receiver_id(), credit,
                                                    ch.access_proof())));
    SendBufferSize(ch, /*again=*/true);
  }

  // PartitionNotFound: retry with backoff until the request timeout, then fail.
  void OnPartitionNotFound(uint64_t receiver_id, const std::string& message) {
    auto it = channels_.find(receiver_id);
    if (it == channels_.end()) return;
    std::shared_ptr<RemoteInputChannel> ch = it->second;
    RetryState& r = retry_[receiver_id];
    const ShuffleOptions& o = client_->config_.options;
    if (r.backoff.count() == 0) r.backoff = o.request_backoff_initial;
    const uint64_t now = transport::LoopNowMs(conn_->loop());
    const uint64_t elapsed = now - r.first_request;
    if (elapsed + static_cast<uint64_t>(r.backoff.count()) >
        static_cast<uint64_t>(o.request_timeout.count())) {
      const uint32_t requests = r.attempts + 1;
      channels_.erase(it);
      retry_.erase(receiver_id);  // `r` dangles from here on
      closed_ids_.Insert(receiver_id);  // the server holds no reader for it
      ch->OnError(NotFound("partition not found at " + conn_->peer() + " after " +
                           std::to_string(requests) + " requests over " +
                           std::to_string(elapsed) + " ms (" + message +
                           "); is the producer running and registered?"));
      return;
    }
    ++r.attempts;
    auto* retry = new Retry;
    retry->channel = ch;
    retry->client = client_;
    retry->timer = std::make_unique<transport::Timer>(conn_->loop());
    client_->retries_.insert(retry);
    retry->timer->Start(r.backoff, [retry] {
      if (auto c = retry->channel.lock(); c && !c->released()) {
        if (Handler* h = retry->client->HandlerFor(c->receiver_id())) h->SendRequest(*c);
      }
      retry->client->retries_.erase(retry);
      delete retry;  // and its timer: allowed from the timer's own callback
    });
    r.backoff = std::min(r.backoff * 2, o.request_backoff_max);
  }

  Admission OnFrame(const transport::FrameHeader& h, std::span<const uint8_t> meta) override {
    const auto type = static_cast<MessageType>(h.type);
    if (!handshake_.server_proved()) {
      if (auto gated = GateBeforeProof(type, meta)) return std::move(*gated);
    }
    switch (type) {
      case MessageType::kBufferResponse: return OnBufferResponse(h, meta);
      case MessageType::kHelloAck: return OnHelloAck(meta);
      case MessageType::kBacklogAnnouncement: {
        auto m = schema::ParseBacklogAnnouncement(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        client_->BeginReadPass();  // floating buffers gained here are announced at its end
        const uint64_t id = (*m)->receiver_id();
        auto it = channels_.find(id);
        if (it != channels_.end()) {
          it->second->OnSenderBacklog((*m)->backlog());
        } else if (!closed_ids_.Contains(id)) {
          return UnknownReceiver("BacklogAnnouncement", id);
        }
        return Admission();
      }
      case MessageType::kErrorResponse: {
        auto m = schema::ParseErrorResponse(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        const std::string text = (*m)->message() ? (*m)->message()->str() : "";
        if ((*m)->receiver_id().has_value()) {
          const uint64_t id = *(*m)->receiver_id();
          if ((*m)->code() == fb::ErrorCode::PartitionNotFound) {
            OnPartitionNotFound(id, text);
          } else if (auto it = channels_.find(id); it != channels_.end()) {
            std::shared_ptr<RemoteInputChannel> ch = it->second;
            channels_.erase(it);
            retry_.erase(id);
            closed_ids_.Insert(id);  // the server dropped its reader already
            ch->OnError(Status(StatusCode::kIoError, "producer " + conn_->peer() + " reported " +
                                                         fb::EnumNameErrorCode((*m)->code()) +
                                                         ": " + text));
          }
          return Admission();
        }
        fatal_ = Status(StatusCode::kIoError, "producer " + conn_->peer() + " closed the connection with " +
                                                  fb::EnumNameErrorCode((*m)->code()) + ": " + text);
        conn_->Close(fatal_);
        return Admission();
      }
      case MessageType::kHeartbeat: {
        auto m = schema::ParseHeartbeat(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        return Admission();
      }
      default:
        return Reject(FrameError::kInvalidMessage,
                      ProtocolError("unexpected " + std::string(schema::MessageTypeName(type)) +
                                    " from server " + conn_->peer()));
    }
  }

  Status OnPayload(buffer::Buffer payload) override {
    payload.SetType(frame_type_);
    auto it = channels_.find(frame_receiver_);
    if (it == channels_.end()) {  // failed or released meanwhile: the buffer goes home
      if (buffer::IsEvent(frame_type_)) event_budget_->Refund(payload.size());
      return Status::Ok();
    }
    std::shared_ptr<RemoteInputChannel> ch = it->second;
    if (frame_checksummed_) {
      const uint32_t crc = Crc32c(payload.data(), payload.size());
      if (crc != frame_checksum_) {
        if (buffer::IsEvent(frame_type_)) event_budget_->Refund(payload.size());
        payload.Release();
        RemoveChannel(frame_receiver_);  // only this channel: its siblings go on
        ch->OnError(ProtocolError("checksum mismatch on buffer " +
                                  std::to_string(frame_sequence_) + " from " + conn_->peer() +
                                  ": CRC32C " + std::to_string(crc) + ", sender said " +
                                  std::to_string(frame_checksum_) +
                                  "; the request was cancelled"));
        return Status::Ok();
      }
    }
    bool notify_later = false;
    Status st = ch->OnBuffer(std::move(payload), frame_sequence_, frame_backlog_, &notify_later);
    if (notify_later) notify_later_.push_back(ch);
    if (!st.ok()) RemoveChannel(frame_receiver_);  // the channel failed: cancel it alone
    return Status::Ok();
  }

  // The consumers hear of this pass's buffers now: one wake-up for all of them, after the
  // reads rather than between them.
  // Push-mode gates consume them right here, on this thread, before the pass's credit goes out.
  void OnReadPassEnd() override {
    NotifyDeferred();
    client_->EndReadPass();  // one AddCredit per channel for the whole pass
  }

  void OnClosed(const Status& reason) override {
    NotifyDeferred();
    client_->EndReadPass();  // a pass that closed the connection had no OnReadPassEnd
    const Status& why = fatal_.ok() ? reason : fatal_;
    auto channels = std::move(channels_);
    channels_.clear();
    for (auto& [id, ch] : channels) {
      ch->OnError(Status(why.code() == StatusCode::kOk ? StatusCode::kIoError : why.code(),
                         "connection to producer " + conn_->peer() + " lost: " + why.message()));
    }
  }

  std::optional<transport::OutFrame> OnProtocolError(FrameError reason,
                                                     const Status& status) override {
    const fb::ErrorCode code = reason == FrameError::kNoBufferForPayload
                                   ? fb::ErrorCode::CreditViolation
                                   : fb::ErrorCode::ProtocolViolation;
    return MakeFrame(MessageType::kErrorResponse,
                     builder_.ErrorResponse(code, status.message(), std::nullopt));
  }

 private:
  struct RetryState {
    uint64_t first_request = 0;
    uint32_t attempts = 0;
    std::chrono::milliseconds backoff{0};
  };

  Admission UnknownReceiver(const char* what, uint64_t id) {
    return Reject(FrameError::kInvalidField,
                  ProtocolError(std::string(what) + " from producer " + conn_->peer() +
                                " for receiver id " + std::to_string(id) +
                                ", which this connection never requested"));
  }

  // An event needs no credit and is read outside the network memory: it is charged to the
  // connection's event budget instead, and refused over it.
  Admission AdmitEvent(const transport::FrameHeader& h) {
    const size_t limit =
        client_->EventBudgetBytes() + channels_.size() * EventBudget::kPerChannelAllowance;
    if (!event_budget_->TryCharge(h.payload_length(), limit)) {
      return Reject(FrameError::kNoBufferForPayload,
                    ProtocolError("producer " + conn_->peer() + " sent an event of " +
                                  std::to_string(h.payload_length()) + " bytes to receiver " +
                                  std::to_string(frame_receiver_) + " while " +
                                  std::to_string(event_budget_->used()) + " of the " +
                                  std::to_string(limit) +
                                  " bytes of events this connection may hold were not consumed "
                                  "yet (event budget exceeded)"));
    }
    return Admission(buffer::AllocateUnpooled(h.payload_length(), frame_type_));
  }

  Admission OnBufferResponse(const transport::FrameHeader& h, std::span<const uint8_t> meta) {
    client_->BeginReadPass();  // credit gained in this pass is announced at its end
    const uint32_t max_payload = client_->config_.options.credit.segment_size;
    auto m = schema::ParseBufferResponse(meta, max_payload);
    if (!m.ok()) return RejectMessage(MessageType::kBufferResponse, meta, m.status());
    const fb::BufferResponse* r = *m;
    if (r->payload_size() != h.payload_length()) {
      return Reject(FrameError::kInvalidField,
                    ProtocolError("BufferResponse for receiver " +
                                  std::to_string(r->receiver_id()) + " says payload_size " +
                                  std::to_string(r->payload_size()) + " but the frame carries " +
                                  std::to_string(h.payload_length()) + " bytes"));
    }
    auto it = channels_.find(r->receiver_id());
    if (it == channels_.end()) {
      // In flight for a channel that failed or was released: dropped, no buffer taken.
      if (closed_ids_.Contains(r->receiver_id())) return Admission::Discard();
      return UnknownReceiver("BufferResponse", r->receiver_id());
    }
    frame_receiver_ = r->receiver_id();
    frame_sequence_ = r->sequence_number();
    frame_backlog_ = r->backlog();
    frame_type_ = schema::FromWire(r->data_type());
    frame_checksummed_ = (r->flags() & schema::kFlagChecksummed) != 0;
    frame_checksum_ = r->checksum();
    if (buffer::IsEvent(frame_type_)) return AdmitEvent(h);
    if (it->second->released()) return Admission::Discard();  // cancel still in flight
    buffer::Buffer target = it->second->TakeBufferForPayload();
    if (!target) {
      // Released by its consumer since the check above: its credit is void, not violated.
      if (it->second->released()) return Admission::Discard();
      return Reject(FrameError::kNoBufferForPayload,
                    ProtocolError("producer " + conn_->peer() + " sent buffer " +
                                  std::to_string(frame_sequence_) + " to receiver " +
                                  std::to_string(frame_receiver_) +
                                  " without credit (credit-based flow control violated)"));
    }
    return Admission(std::move(target));
  }

  void SendHelloOnce() {
    if (hello_sent_) return;
    hello_sent_ = true;
    conn_->Send(MakeFrame(MessageType::kHello, builder_.Hello(handshake_.Hello())));
  }

  // Pre-auth gate (shuffle/handshake.h): until the server has proved the secret nothing but
  // HelloAck, Heartbeat and ErrorResponse is handled, and an ErrorResponse closes the whole
  // connection (a receiver id in it is not trusted). nullopt: handle the frame as usual.
  std::optional<Admission> GateBeforeProof(MessageType type, std::span<const uint8_t> meta) {
    if (auto refused = handshake_.Admit(type)) {
      // Refused before any payload is read: no data reaches a channel.
      return Admission(Reject(FrameError::kInvalidMessage, HandshakeStatus(*refused)));
    }
    if (type != MessageType::kErrorResponse) return std::nullopt;
    auto m = schema::ParseErrorResponse(meta);
    if (!m.ok()) return RejectMessage(type, meta, m.status());
    const std::string text = (*m)->message() ? (*m)->message()->str() : "";
    const StatusCode code = (*m)->code() == fb::ErrorCode::AuthenticationFailed
                                ? StatusCode::kPermissionDenied
                                : StatusCode::kIoError;
    fatal_ = Status(code, "producer " + conn_->peer() + " refused the handshake with " +
                              fb::EnumNameErrorCode((*m)->code()) + ": " + text);
    conn_->Close(fatal_);
    return Admission();
  }

  // Checks the server's HelloAck and proof, answers its challenge (shuffle/auth.h), then sends
  // the requests that waited for the handshake.
  Admission OnHelloAck(std::span<const uint8_t> meta) {
    auto m = schema::ParseHelloAck(meta);
    if (!m.ok()) return RejectMessage(MessageType::kHelloAck, meta, m.status());
    std::optional<auth::Proof> response;
    if (auto refused = handshake_.OnHelloAck(**m, &response)) {
      if (refused->code != fb::ErrorCode::AuthenticationFailed) {
        return Reject(FrameError::kInvalidField, HandshakeStatus(*refused));
      }
      fatal_ = HandshakeStatus(*refused);
      conn_->Close(fatal_);
      return Admission();
    }
    if (response) {
      conn_->Send(MakeFrame(MessageType::kAuthResponse, builder_.AuthResponse(*response)));
    }
    established_ = true;
    conn_->MarkEstablished();
    for (uint64_t id : pending_) {
      auto it = channels_.find(id);
      if (it != channels_.end()) SendRequest(*it->second);
    }
    pending_.clear();
    return Admission();
  }

 public:
  void AppendChannelStates(std::vector<std::string>* out) const {
    for (const auto& [id, ch] : channels_) {
      const RemoteInputChannel::CreditState c = ch->Credit();
      out->push_back("channel peer=" + conn_->peer() + " receiver=" + std::to_string(id) +
                     " partition=" + ch->partition_id() + "/" +
                     std::to_string(ch->subpartition()) +
                     " exclusive=" + std::to_string(c.exclusive_held) +
                     " floating=" + std::to_string(c.floating_held) +
                     " unannounced=" + std::to_string(c.unannounced_credit) +
                     " backlog=" + std::to_string(c.backlog) +
                     " queued=" + std::to_string(c.queued));
    }
  }

 private:

  ShuffleClient* const client_;
  transport::Connection* const conn_;
  schema::MessageBuilder builder_;
  void NotifyDeferred() {
    for (auto& ch : notify_later_) ch->NotifyDeferred();
    notify_later_.clear();
  }

  std::unordered_map<uint64_t, std::shared_ptr<RemoteInputChannel>> channels_;
  // Channels that got a buffer this read pass and have not told their gate yet.
  std::vector<std::shared_ptr<RemoteInputChannel>> notify_later_;
  std::unordered_map<uint64_t, RetryState> retry_;
  // Receiver ids whose channel left this connection; frames still in flight are dropped.
  RecentIds closed_ids_;
  const std::shared_ptr<EventBudget> event_budget_;
  std::vector<uint64_t> pending_;
  bool hello_sent_ = false;
  bool established_ = false;
  ClientHandshake handshake_;
  Status fatal_;
  // The BufferResponse whose payload is being read.
  uint64_t frame_receiver_ = 0;
  int32_t frame_sequence_ = 0;
  int32_t frame_backlog_ = 0;
  buffer::DataType frame_type_ = buffer::DataType::kData;
  bool frame_checksummed_ = false;
  uint32_t frame_checksum_ = 0;
};

ShuffleClient::ShuffleClient(transport::EventLoop* loop, const ShuffleClientConfig& config)
    : loop_(loop),
      config_(config),
      tcp_(loop, MakeTransportOptions(config.options.credit.segment_size, config.timeouts,
                                config.options.faults),
           [this](transport::Connection& c) -> std::unique_ptr<transport::ConnectionHandler> {
             return std::make_unique<Handler>(this, &c);
           },
           config.connect_retry) {}

ShuffleClient::~ShuffleClient() { Stop(); }

uint32_t ShuffleClient::CutConnections(const std::string& reason) {
  uint32_t n = 0;
  tcp_.ForEachConnection([&](transport::Connection& c) {
    if (c.closing()) return;
    c.Close(Status(StatusCode::kIoError, reason));
    ++n;
  });
  return n;
}

std::vector<std::string> ShuffleClient::ChannelStates() {
  std::vector<std::string> out;
  tcp_.ForEachConnection([&](transport::Connection& c) {
    if (auto* h = dynamic_cast<Handler*>(c.handler())) h->AppendChannelStates(&out);
  });
  return out;
}

void ShuffleClient::Stop() {
  // Pending retries hold timer handles: close them on the loop before the connections go.
  auto closed = std::make_shared<std::promise<void>>();
  auto done = closed->get_future();
  auto close_retries = [this, closed] {
    for (Retry* r : retries_) delete r;  // the Timer closes its handle
    retries_.clear();
    closed->set_value();
  };
  if (loop_->RunOrPost(close_retries)) done.wait();
  tcp_.Stop();
}

ShuffleClient::Handler* ShuffleClient::HandlerFor(uint64_t receiver_id) {
  auto it = routes_.find(receiver_id);
  if (it == routes_.end()) return nullptr;
  auto conn = it->second.lock();
  if (!conn || conn->closing()) return nullptr;
  return static_cast<Handler*>(conn->handler());
}

void ShuffleClient::RequestPartition(std::shared_ptr<RemoteInputChannel> channel) {
  const transport::Endpoint ep = channel->producer();
  tcp_.GetOrConnect(ep, [this, channel](Result<std::shared_ptr<transport::Connection>> conn) {
    if (!conn.ok()) {
      channel->OnError(conn.status());
      return;
    }
    if (channel->released()) return;
    routes_[channel->receiver_id()] = *conn;
    static_cast<Handler*>((*conn)->handler())->AddChannel(channel);
  });
}

void ShuffleClient::NotifyCreditAvailable(std::shared_ptr<RemoteInputChannel> channel) {
  // A channel is queued once until the flush takes its credit (it notifies only when its
  // unannounced credit goes from 0 to positive), so a flush sends one AddCredit per channel.
  bool post = false;
  {
    std::lock_guard lock(credit_mu_);
    credit_pending_.push_back(std::move(channel));
    if (credit_flush_scheduled_) return;
    credit_flush_scheduled_ = true;
    // On the IO thread inside a read pass the pass's end flushes; anywhere else one task does.
    post = !(loop_->IsLoopThread() && in_read_pass_);
  }
  if (post) loop_->Post([this] { FlushCredit(); });
}

void ShuffleClient::FlushCredit() {
  in_read_pass_ = false;
  {
    std::lock_guard lock(credit_mu_);
    credit_batch_.swap(credit_pending_);  // both keep their capacity: no allocation per flush
    credit_flush_scheduled_ = false;
  }
  for (const auto& ch : credit_batch_) {
    if (Handler* h = HandlerFor(ch->receiver_id())) h->SendCredit(*ch);
  }
  credit_batch_.clear();
}

void ShuffleClient::EndReadPass() {
  RunListeners();  // consumers that return buffers here add to this pass's credit
  FlushCredit();
}

void ShuffleClient::ScheduleListener(std::shared_ptr<GateListener> listener) {
  bool post = false;
  {
    std::lock_guard lock(listener_mu_);
    listeners_pending_.push_back(std::move(listener));
    if (listeners_scheduled_) return;
    listeners_scheduled_ = true;
    // As for credit: inside a read pass on the IO thread, the pass's end runs it.
    post = !(loop_->IsLoopThread() && in_read_pass_);
  }
  if (post) {
    loop_->Post([this] {
      BeginReadPass();  // buffers the consumers return now: one credit flush after them
      EndReadPass();
    });
  }
}

void ShuffleClient::RunListeners() {
  // Until none is left: one scheduled on this thread during a run (in_read_pass_ is still set,
  // so nothing was posted for it) runs in the next round.
  while (true) {
    {
      std::lock_guard lock(listener_mu_);
      if (!listeners_scheduled_) return;
      listener_batch_.swap(listeners_pending_);
      listeners_scheduled_ = false;
    }
    for (const auto& l : listener_batch_) l->Run();
    listener_batch_.clear();
  }
}

size_t ShuffleClient::EventBudgetBytes() const {
  const size_t two_events =
      2 * EventBudget::ChargeFor(config_.options.credit.segment_size);
  return std::max(config_.event_budget_bytes, two_events);
}

void ShuffleClient::Cancel(std::shared_ptr<RemoteInputChannel> channel) {
  loop_->RunOrPost([this, channel] {
    if (Handler* h = HandlerFor(channel->receiver_id())) h->RemoveChannel(channel->receiver_id());
    routes_.erase(channel->receiver_id());
  });
}

}  // namespace sluice::shuffle
