#include "shuffle/shuffle_server.h"

#include <chrono>
#include <deque>
#include <unordered_map>

#include "schema/control.h"
#include "shuffle/auth.h"
#include "shuffle/handshake.h"
#include "shuffle/partition_request_queue.h"
#include "shuffle/result_partition.h"
#include "transport/log.h"
#include "transport/timer.h"

namespace sluice::shuffle {

using schema::MessageType;
using transport::Admission;
using transport::FrameError;
using transport::Rejection;

namespace {
Rejection Reject(FrameError reason, Status st) { return Rejection{reason, std::move(st)}; }

// AddCredit frames a producer thread reads off the connection (read-through), parsed as the
// loop parses them (OnAddCredit). One that does not parse, or credit the queue would refuse,
// stays on the socket: the loop reads it and closes the connection as before.
class CreditFrames final : public transport::FrameTaker {
 public:
  explicit CreditFrames(CreditSink& sink) : sink_(sink) {}
  bool Accepts(std::span<const uint8_t> meta) override {
    auto m = schema::ParseAddCredit(meta);
    if (!m.ok()) return false;
    receiver_id_ = (*m)->receiver_id();
    credit_ = (*m)->credit();
    return sink_.Accepts(receiver_id_, credit_);
  }
  void Take(std::span<const uint8_t>) override { sink_.Apply(receiver_id_, credit_); }

 private:
  CreditSink& sink_;
  uint64_t receiver_id_ = 0;  // of the frame Accepts said yes to last
  int32_t credit_ = 0;
};
}  // namespace

// The server's side of one connection. Loop thread only.
class ShuffleServer::Handler final : public transport::ConnectionHandler, public QueueOutput {
 public:
  Handler(ShuffleServer* server, transport::Connection* conn)
      : server_(server),
        conn_(conn),
        alive_(std::make_shared<bool>(true)),
        handshake_(server->config_.auth, server->config_.options.credit.segment_size,
                   server->config_.node_name, conn->peer()),
        queue_(
            this,
            [loop = conn->loop(), stats = server->stats_.get()](std::function<void()> task) {
              stats->notifications_posted.fetch_add(1, std::memory_order_relaxed);
              return loop->Post(std::move(task));
            },
            server->stats_.get(), server->config_.options.checksums) {}
  ~Handler() override { ReleaseAll(); }

  Admission OnFrame(const transport::FrameHeader& h, std::span<const uint8_t> meta) override {
    const auto type = static_cast<MessageType>(h.type);
    // Pre-auth gate (shuffle/handshake.h): nothing but the handshake before authentication.
    if (auto refused = handshake_.Admit(type)) return RefuseHandshake(*refused);
    if (schema::IsControlMessageType(h.type)) return OnControl(type, meta);
    switch (type) {
      case MessageType::kHello: return OnHello(meta);
      case MessageType::kAuthResponse: return OnAuthResponse(meta);
      case MessageType::kPartitionRequest: return OnPartitionRequest(meta);
      case MessageType::kAddCredit: return OnAddCredit(meta);
      case MessageType::kBufferSizeAnnouncement: {
        // Debloating: 0 is refused by the parser (ProtocolViolation, closed); other sizes are
        // clamped by the partition; an unknown receiver is ignored.
        auto m = schema::ParseBufferSizeAnnouncement(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        queue_.AnnounceBufferSize((*m)->receiver_id(), (*m)->buffer_size());
        return Admission();
      }
      case MessageType::kCancelPartitionRequest: {
        auto m = schema::ParseCancelPartitionRequest(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        queue_.CancelReader((*m)->receiver_id());
        CancelParked((*m)->receiver_id());
        return Admission();
      }
      case MessageType::kCloseRequest: {
        auto m = schema::ParseCloseRequest(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        conn_->CloseAfterFlush(ClosedError("client " + conn_->peer() + " closed the connection"));
        return Admission();
      }
      case MessageType::kHeartbeat: {
        auto m = schema::ParseHeartbeat(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        return Admission();
      }
      case MessageType::kErrorResponse: {
        // The client refused something we sent; it closes the connection after this.
        auto m = schema::ParseErrorResponse(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        const std::string text = (*m)->message() ? (*m)->message()->str() : "";
        Log(LogLevel::kWarn, "client " + conn_->peer() + " reported " +
                                 fb::EnumNameErrorCode((*m)->code()) + ": " + text);
        conn_->Close(Status(StatusCode::kIoError, "client " + conn_->peer() + " reported " +
                                                      fb::EnumNameErrorCode((*m)->code()) +
                                                      ": " + text));
        return Admission();
      }
      default:
        return Reject(FrameError::kInvalidMessage,
                      ProtocolError("unexpected " + std::string(schema::MessageTypeName(type)) +
                                    " from client " + conn_->peer()));
    }
  }

  Status OnPayload(buffer::Buffer) override { return Status::Ok(); }

  void OnWritable() override { queue_.WriteMore(); }

  void OnClosed(const Status& reason) override {
    if (!queue_.empty()) {
      Log(LogLevel::kInfo, "connection from " + conn_->peer() + " closed with " +
                               std::to_string(queue_.reader_count()) +
                               " partition requests active: " + reason.message());
    }
    ReleaseAll();
  }

  std::optional<transport::OutFrame> OnProtocolError(FrameError reason,
                                                     const Status& status) override {
    fb::ErrorCode code = fb::ErrorCode::ProtocolViolation;
    if (reason == FrameError::kUnsupportedVersion) code = fb::ErrorCode::UnsupportedVersion;
    if (error_code_) code = *error_code_;
    return MakeFrame(MessageType::kErrorResponse,
                     builder_.ErrorResponse(code, status.message(), std::nullopt));
  }

  // QueueOutput: called under the queue's mutex, on the loop thread or (write-through) on a
  // producer thread; queue_builder_ is theirs alone.
  bool CanSend() const override {
    return !conn_->closing() && conn_->queued_bytes() < server_->config_.write_high_water_bytes;
  }
  void SendBuffer(const schema::BufferResponseFields& f, buffer::Buffer payload) override {
    conn_->SendFromAnyThread(MakeFrame(MessageType::kBufferResponse,
                                       queue_builder_.BufferResponse(f), std::move(payload)));
  }
  void SendBacklogAnnouncement(uint64_t receiver_id, int32_t backlog) override {
    conn_->SendFromAnyThread(MakeFrame(MessageType::kBacklogAnnouncement,
                                       queue_builder_.BacklogAnnouncement(receiver_id, backlog)));
  }
  void SendChannelError(uint64_t receiver_id, fb::ErrorCode code,
                        const std::string& message) override {
    conn_->SendFromAnyThread(MakeFrame(MessageType::kErrorResponse,
                                       queue_builder_.ErrorResponse(code, message, receiver_id)));
  }
  bool DirectWritable() const override { return conn_->DirectWritable(); }
  bool OnLoopThread() const override { return conn_->loop()->IsLoopThread(); }
  size_t ReadCredits(CreditSink& sink) override {
    CreditFrames frames(sink);
    return conn_->ReadFramesFromAnyThread(static_cast<uint8_t>(MessageType::kAddCredit), frames);
  }

 private:
  struct Request {
    std::string partition_id;
    uint32_t subpartition = 0;
    int32_t credit = 0;
    std::vector<uint8_t> proof;  // PartitionRequest.access_proof
  };
  struct Parked {
    Request request;
    uint64_t token = 0;
    std::unique_ptr<transport::Timer> timer;
  };

  Admission OnHello(std::span<const uint8_t> meta) {
    auto m = schema::ParseHello(meta);
    if (!m.ok()) return RejectMessage(MessageType::kHello, meta, m.status());
    schema::HandshakeFields ack;
    if (auto refused = handshake_.OnHello(**m, &ack)) return RefuseHandshake(*refused);
    conn_->Send(MakeFrame(MessageType::kHelloAck, builder_.HelloAck(ack)));
    if (handshake_.authenticated()) conn_->MarkEstablished();  // auth off
    return Admission();
  }

  Admission OnAuthResponse(std::span<const uint8_t> meta) {
    auto m = schema::ParseAuthResponse(meta);
    if (!m.ok()) return RejectMessage(MessageType::kAuthResponse, meta, m.status());
    if (auto refused = handshake_.OnAuthResponse(**m)) return RefuseHandshake(*refused);
    conn_->MarkEstablished();
    return Admission();
  }

  // A handshake step refused the frame: a protocol violation goes through the transport's
  // rejection (counted there); anything else is answered with its code and the connection
  // closes after the answer is flushed. The frame's payload, if any, is skipped.
  Admission RefuseHandshake(const HandshakeError& refused) {
    if (refused.code == fb::ErrorCode::ProtocolViolation) {
      return Reject(FrameError::kInvalidMessage, ProtocolError(refused.message));
    }
    if (refused.code == fb::ErrorCode::AuthenticationFailed) {
      server_->stats_->auth_failures.fetch_add(1, std::memory_order_relaxed);
    }
    SendFatal(refused.code, refused.message);
    return Admission::Discard();
  }

  Admission OnControl(MessageType type, std::span<const uint8_t> meta) {
    ControlService* control = server_->config_.control;
    if (control == nullptr) {
      return Reject(FrameError::kInvalidMessage,
                    ProtocolError("unexpected " + std::string(schema::MessageTypeName(type)) +
                                  " from " + conn_->peer() +
                                  ": this server takes no control messages"));
    }
    Status st = schema::VerifyControlMessage(type, meta);
    if (!st.ok()) return RejectMessage(type, meta, st);
    server_->stats_->control_requests.fetch_add(1, std::memory_order_relaxed);
    const uint32_t max_outstanding = server_->config_.max_outstanding_control_requests;
    if (control_outstanding_ >= max_outstanding) {
      server_->stats_->control_peers_closed.fetch_add(1, std::memory_order_relaxed);
      SendFatal(fb::ErrorCode::ProtocolViolation,
                "client " + conn_->peer() + " has " + std::to_string(control_outstanding_) +
                    " control requests outstanding, the most a connection may have "
                    "(max_outstanding_control_requests); wait for the replies before sending more");
      return Admission::Discard();
    }
    ++control_outstanding_;
    std::weak_ptr<bool> alive = alive_;
    transport::EventLoop* loop = conn_->loop();
    control->OnControlRequest(
        type, meta, conn_->peer(),
        [this, alive, loop](MessageType reply_type, std::vector<uint8_t> message) {
          loop->Post([this, alive, reply_type, message = std::move(message)] {
            if (!alive.lock()) return;
            OnControlReply(reply_type, message);
          });
        });
    return Admission();
  }

  // A reply is queued only while the peer reads what it was sent before: a peer whose unread
  // control replies pass max_unread_control_bytes is closed (its queued bytes are freed).
  void OnControlReply(MessageType type, std::span<const uint8_t> message) {
    if (control_outstanding_ > 0) --control_outstanding_;
    if (conn_->closing()) return;
    auto frame = TryMakeFrame(type, message);
    if (!frame.ok()) {
      // A reply the wire cannot carry: the request fails, the connection goes on.
      Log(LogLevel::kError, "control reply to " + conn_->peer() + " dropped: " +
                                frame.status().message());
      SendReply(MakeFrame(MessageType::kErrorResponse,
                          builder_.ErrorResponse(fb::ErrorCode::Internal,
                                                 "the reply to this control request is too "
                                                 "large to send: " + frame.status().message(),
                                                 std::nullopt)));
      return;
    }
    SendReply(std::move(*frame));
  }

  // Queues a reply the peer asked for (a control reply, an error for one of its requests). A
  // peer that does not read them is closed once its queued bytes would pass
  // write_high_water_bytes + max_unread_control_bytes (its queued bytes are freed): requests
  // that are answered at once cannot grow the daemon's memory.
  void SendReply(transport::OutFrame frame) {
    if (conn_->closing()) return;
    const size_t bound =
        server_->config_.write_high_water_bytes + server_->config_.max_unread_control_bytes;
    if (conn_->queued_bytes() + frame.total_bytes() > bound) {
      server_->stats_->control_peers_closed.fetch_add(1, std::memory_order_relaxed);
      const std::string why = "client " + conn_->peer() + " does not read its replies: " +
                              std::to_string(conn_->queued_bytes()) +
                              " bytes are queued (max_unread_control_bytes " +
                              std::to_string(server_->config_.max_unread_control_bytes) + ")";
      Log(LogLevel::kWarn, "closing connection: " + why);
      conn_->Close(Status(StatusCode::kResourceExhausted, why));
      return;
    }
    conn_->Send(std::move(frame));
  }

 public:
  bool serves_data() const { return !queue_.empty() || !parked_.empty(); }
  transport::Connection* connection() const { return conn_; }

  void AppendReaderStates(std::vector<std::string>* out) const {
    queue_.AppendReaderStates(conn_->peer(), out);
    for (const auto& [id, p] : parked_) {
      out->push_back("parked peer=" + conn_->peer() + " receiver=" + std::to_string(id) +
                     " partition=" + p.request.partition_id + "/" +
                     std::to_string(p.request.subpartition));
    }
  }

 private:
  // A channel error from the handler itself (loop thread, outside the queue).
  void ChannelError(uint64_t receiver_id, fb::ErrorCode code, const std::string& message) {
    SendReply(MakeFrame(MessageType::kErrorResponse,
                        builder_.ErrorResponse(code, message, receiver_id)));
  }

  void SendFatal(fb::ErrorCode code, const std::string& message) {
    Log(LogLevel::kWarn, "refusing client " + conn_->peer() + ": " + message);
    conn_->Send(MakeFrame(MessageType::kErrorResponse,
                          builder_.ErrorResponse(code, message, std::nullopt)));
    conn_->CloseAfterFlush(ProtocolError(message));
  }

  // Credit <= 0 (refused by the parser) or over the queue's bound: CreditViolation, closed.
  Admission OnAddCredit(std::span<const uint8_t> meta) {
    auto m = schema::ParseAddCredit(meta);
    if (!m.ok()) {
      return RejectWithCode(MessageType::kAddCredit, meta, m.status(),
                            fb::ErrorCode::CreditViolation);
    }
    Status st = queue_.AddCredit((*m)->receiver_id(), (*m)->credit());
    if (!st.ok()) {
      error_code_ = fb::ErrorCode::CreditViolation;
      return Reject(FrameError::kInvalidField, std::move(st));
    }
    return Admission();
  }

  // A parse failure answered with `code` instead of ProtocolViolation.
  Admission RejectWithCode(MessageType type, std::span<const uint8_t> meta, Status st,
                           fb::ErrorCode code) {
    transport::Rejection r = RejectMessage(type, meta, std::move(st));
    if (r.reason == FrameError::kInvalidField) error_code_ = code;
    return r;
  }

  Admission OnPartitionRequest(std::span<const uint8_t> meta) {
    if (auto refused = handshake_.AdmitPartitionRequest()) return RefuseHandshake(*refused);
    auto m = schema::ParsePartitionRequest(meta);
    if (!m.ok()) {
      transport::Rejection r = RejectMessage(MessageType::kPartitionRequest, meta, m.status());
      if (r.reason == FrameError::kInvalidField &&
          flatbuffers::GetRoot<fb::PartitionRequest>(meta.data())->initial_credit() < 0) {
        error_code_ = fb::ErrorCode::CreditViolation;
      }
      return r;
    }
    const uint64_t id = (*m)->receiver_id();
    if ((*m)->initial_credit() > PartitionRequestQueue::kMaxCredit) {
      error_code_ = fb::ErrorCode::CreditViolation;
      return Reject(FrameError::kInvalidField,
                    ProtocolError("PartitionRequest for receiver " + std::to_string(id) +
                                  ": initial_credit " +
                                  std::to_string((*m)->initial_credit()) +
                                  " is above the bound of " +
                                  std::to_string(PartitionRequestQueue::kMaxCredit)));
    }
    if (queue_.HasReader(id) || parked_.count(id) != 0) {
      return Reject(FrameError::kInvalidField,
                    ProtocolError("PartitionRequest reuses active receiver id " +
                                  std::to_string(id)));
    }
    server_->stats_->requests.fetch_add(1, std::memory_order_relaxed);
    Request req;
    req.partition_id = (*m)->partition_id()->str();
    req.subpartition = (*m)->subpartition();
    req.credit = (*m)->initial_credit();
    if (const auto* proof = (*m)->access_proof()) req.proof.assign(proof->begin(), proof->end());
    if (auto* provider = server_->registry_->FindViewProvider(req.partition_id)) {
      ServeProvided(id, provider, req);
    } else if (auto partition = server_->registry_->Lookup(req.partition_id)) {
      Serve(id, partition, req);
    } else if (parked_.size() >= server_->config_.max_parked_requests) {
      // Each parked request holds a timer and a registry callback: bounded per connection.
      server_->stats_->requests_not_found.fetch_add(1, std::memory_order_relaxed);
      ChannelError(id, fb::ErrorCode::PartitionNotFound,
                   "partition '" + req.partition_id + "' is not registered on " +
                       server_->config_.node_name + ", and this connection already waits for " +
                       std::to_string(parked_.size()) +
                       " partitions (max_parked_requests); retry later");
    } else {
      Park(id, std::move(req));
    }
    return Admission();
  }

  // Job-scoped access: a partition registered with a job token is read only by a request that
  // proves the token for this very partition and subpartition.
  bool MayRead(uint64_t id, const Request& req) {
    const std::string token = server_->registry_->AccessToken(req.partition_id);
    if (token.empty()) return true;
    if (auth::ProofMatches(auth::MakePartitionProof(token, req.partition_id, req.subpartition),
                           req.proof)) {
      return true;
    }
    server_->stats_->auth_failures.fetch_add(1, std::memory_order_relaxed);
    const std::string what =
        "partition '" + req.partition_id + "' subpartition " + std::to_string(req.subpartition);
    if (++access_denials_ <= kLoggedDenials) {  // counted always, logged a few times
      Log(LogLevel::kWarn, "refusing PartitionRequest from " + conn_->peer() + " for " + what +
                               ": " + (req.proof.empty() ? "no" : "a wrong") + " access proof" +
                               (access_denials_ == kLoggedDenials
                                    ? " (further refusals on this connection are not logged)"
                                    : ""));
    }
    ChannelError(id, fb::ErrorCode::AuthenticationFailed,
                 "access to " + what + " on " + server_->config_.node_name +
                     " denied: the request carries " + (req.proof.empty() ? "no" : "a wrong") +
                     " access proof for the job that owns it (the consumer needs the job's "
                     "token)");
    return false;
  }

  void Serve(uint64_t id, const std::shared_ptr<ResultPartition>& partition, const Request& req) {
    if (!MayRead(id, req)) return;
    const uint32_t sp = req.subpartition;
    if (sp >= partition->num_subpartitions()) {
      // Permanent (the count is fixed at registration): ProducerFailed fails the channel now,
      // where PartitionNotFound would have the client retry until its request timeout.
      ChannelError(id, fb::ErrorCode::ProducerFailed,
                   "partition '" + partition->id() + "' has " +
                       std::to_string(partition->num_subpartitions()) + " subpartitions, not " +
                       std::to_string(uint64_t{sp} + 1) + " or more");
      return;
    }
    // CreateView refuses a subpartition that has (or had) a consumer, so a second request can
    // never take over the first reader.
    Status st = queue_.AddReader(
        id, req.credit, partition->id() + "/" + std::to_string(sp),
        [&](SubpartitionListener* listener) { return partition->CreateView(sp, listener); });
    if (!st.ok()) {
      // A subpartition that has or had a consumer is a misuse by this peer; anything else is
      // the partition's failure.
      const bool taken =
          st.code() == StatusCode::kInvalidArgument || st.code() == StatusCode::kClosed;
      ChannelError(id, taken ? fb::ErrorCode::ProtocolViolation : fb::ErrorCode::ProducerFailed,
                   st.message());
    }
  }

  // A partition of a SubpartitionViewProvider (the external store): it checks the proof.
  void ServeProvided(uint64_t id, SubpartitionViewProvider* provider, const Request& req) {
    Status st = queue_.AddReader(
        id, req.credit, req.partition_id + "/" + std::to_string(req.subpartition),
        [&](SubpartitionListener* l) {
          return provider->CreateView(req.partition_id, req.subpartition, req.proof, l);
        });
    if (st.ok()) return;
    fb::ErrorCode code = fb::ErrorCode::ProducerFailed;
    if (st.code() == StatusCode::kPermissionDenied) {
      server_->stats_->auth_failures.fetch_add(1, std::memory_order_relaxed);
      code = fb::ErrorCode::AuthenticationFailed;
    }
    if (st.code() == StatusCode::kNotFound) code = fb::ErrorCode::PartitionNotFound;
    if (st.code() == StatusCode::kInvalidArgument) code = fb::ErrorCode::ProtocolViolation;
    // The handler's own builder: queue_builder_ belongs to the queue's mutex, and a producer
    // thread writing through may be building a BufferResponse in it now.
    ChannelError(id, code, st.message());
  }

  void Park(uint64_t id, Request req) {
    Parked& p = parked_[id];
    p.request = std::move(req);
    const std::string partition_id = p.request.partition_id;
    std::weak_ptr<bool> alive = alive_;
    transport::EventLoop* loop = conn_->loop();
    p.token = server_->registry_->OnRegistered(
        partition_id, [this, alive, loop, id](std::shared_ptr<ResultPartition> partition) {
          loop->Post([this, alive, id, partition] {
            if (!alive.lock()) return;
            auto it = parked_.find(id);
            if (it == parked_.end()) return;
            Request parked = std::move(it->second.request);
            CloseParkTimer(it->second);
            parked_.erase(it);
            Serve(id, partition, parked);  // checks the access proof now
          });
        });
    p.timer = std::make_unique<transport::Timer>(loop);
    p.timer->Start(server_->config_.options.server_park_timeout, [this, id] { OnParkTimeout(id); });
  }

  void CloseParkTimer(Parked& p) {
    server_->registry_->CancelCallback(p.token);
    p.timer.reset();  // also from the timer's own callback (OnParkTimeout)
  }

  void OnParkTimeout(uint64_t id) {
    auto it = parked_.find(id);
    if (it == parked_.end()) return;
    const std::string pid = it->second.request.partition_id;
    const uint32_t sp = it->second.request.subpartition;
    CloseParkTimer(it->second);
    parked_.erase(it);
    server_->stats_->requests_not_found.fetch_add(1, std::memory_order_relaxed);
    ChannelError(id, fb::ErrorCode::PartitionNotFound,
                 "partition '" + pid + "' subpartition " + std::to_string(sp) +
                     " is not registered on " + server_->config_.node_name);
  }

  void CancelParked(uint64_t id) {
    auto it = parked_.find(id);
    if (it == parked_.end()) return;
    CloseParkTimer(it->second);
    parked_.erase(it);
  }

  void ReleaseAll() {
    queue_.ReleaseAll();
    while (!parked_.empty()) {
      CloseParkTimer(parked_.begin()->second);
      parked_.erase(parked_.begin());
    }
  }

  ShuffleServer* const server_;
  transport::Connection* const conn_;
  std::shared_ptr<bool> alive_;
  schema::MessageBuilder builder_;        // loop thread
  schema::MessageBuilder queue_builder_;  // the QueueOutput methods (under the queue's mutex)
  ServerHandshake handshake_;
  std::unordered_map<uint64_t, Parked> parked_;
  PartitionRequestQueue queue_;
  // The ErrorCode for the rejection being returned (OnProtocolError), when not the default.
  std::optional<fb::ErrorCode> error_code_;
  uint32_t control_outstanding_ = 0;  // control requests not answered yet
  static constexpr uint32_t kLoggedDenials = 3;
  uint32_t access_denials_ = 0;  // PartitionRequests refused for their access proof
};

ShuffleServer::ShuffleServer(transport::EventLoop* loop, PartitionRegistry* registry,
                             const ShuffleServerConfig& config)
    : loop_(loop),
      registry_(registry),
      config_(config),
      stats_(std::make_shared<ShuffleServerStats>()) {}

Result<std::unique_ptr<ShuffleServer>> ShuffleServer::Start(transport::EventLoop* loop,
                                                            PartitionRegistry* registry,
                                                            const ShuffleServerConfig& config) {
  if (Status st = auth::ValidateAuthConfig(config.auth, "ShuffleServer '" + config.node_name + "'");
      !st.ok()) {
    return st;
  }
  std::unique_ptr<ShuffleServer> server(new ShuffleServer(loop, registry, config));
  transport::ServerOptions o;
  o.bind_host = config.bind_host;
  o.port = config.port;
  o.max_connections = config.max_connections;
  o.max_connections_per_peer = config.max_connections_per_peer;
  o.transport = MakeTransportOptions(config.options.credit.segment_size, config.timeouts,
                                     config.options.faults);
  ShuffleServer* s = server.get();
  auto tcp = transport::TcpServer::Start(
      loop, o, [s](transport::Connection& c) -> std::unique_ptr<transport::ConnectionHandler> {
        return std::make_unique<Handler>(s, &c);
      });
  if (!tcp.ok()) return tcp.status();
  server->tcp_ = std::move(*tcp);
  return server;
}

ShuffleServer::~ShuffleServer() { Stop(); }

void ShuffleServer::Stop() {
  if (tcp_) tcp_->Stop();
}

void ShuffleServer::StopListening() {
  if (tcp_) tcp_->StopListening();
}

uint32_t ShuffleServer::CutDataConnections(const std::string& reason) {
  uint32_t n = 0;
  if (!tcp_) return n;
  tcp_->ForEachConnection([&](transport::Connection& c) {
    auto* h = dynamic_cast<Handler*>(c.handler());
    if (h == nullptr || !h->serves_data() || c.closing()) return;
    c.Close(Status(StatusCode::kIoError, reason));
    ++n;
  });
  return n;
}

void ShuffleServer::ForEachConnection(const std::function<void(transport::Connection&)>& fn) {
  if (tcp_) tcp_->ForEachConnection(fn);
}

std::vector<std::string> ShuffleServer::ReaderStates() {
  std::vector<std::string> out;
  if (!tcp_) return out;
  tcp_->ForEachConnection([&](transport::Connection& c) {
    if (auto* h = dynamic_cast<Handler*>(c.handler())) h->AppendReaderStates(&out);
  });
  return out;
}

}  // namespace sluice::shuffle
