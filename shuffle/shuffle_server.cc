#include "shuffle/shuffle_server.h"

#include <chrono>
#include <deque>
#include <unordered_map>

#include "schema/control.h"
#include "shuffle/auth.h"
#include "shuffle/crc32c.h"
#include "shuffle/handshake.h"
#include "shuffle/result_partition.h"
#include "transport/log.h"

namespace sluice::shuffle {

using schema::MessageType;
using transport::Admission;
using transport::FrameError;
using transport::Rejection;

namespace {
Rejection Reject(FrameError reason, Status st) { return Rejection{reason, std::move(st)}; }
uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}
}  // namespace

// Serves one receiver id from one subpartition view. Loop thread, except NotifyDataAvailable.
class ShuffleServer::Reader final : public SubpartitionListener,
                                    public std::enable_shared_from_this<Reader> {
 public:
  Reader(transport::EventLoop* loop, uint64_t id, int32_t initial_credit)
      : loop_(loop), receiver_id(id), credit(initial_credit) {}

  // Producer or flusher thread: post once until the loop has looked.
  void NotifyDataAvailable() override {
    if (notify_pending_.exchange(true)) return;
    std::weak_ptr<Reader> weak = weak_from_this();
    loop_->Post([weak] {
      auto r = weak.lock();
      if (!r) return;
      r->notify_pending_.store(false);
      if (!r->released && r->on_available) r->on_available(r.get());
    });
  }

  transport::EventLoop* const loop_;
  const uint64_t receiver_id;
  int32_t credit;
  std::unique_ptr<SubpartitionView> view;
  std::function<void(Reader*)> on_available;
  int32_t next_sequence = 0;
  std::string partition;  // "id/subpartition", for the credit dump
  bool queued = false;
  bool released = false;
  bool backlog_announced = false;
  uint64_t stall_since_ns = 0;

 private:
  std::atomic<bool> notify_pending_{false};
};

// The server's side of one connection. Loop thread only.
class ShuffleServer::Handler final : public transport::ConnectionHandler {
 public:
  Handler(ShuffleServer* server, transport::Connection* conn)
      : server_(server),
        conn_(conn),
        alive_(std::make_shared<bool>(true)),
        handshake_(server->config_.auth, server->config_.options.credit.segment_size,
                   server->config_.node_name, conn->peer()) {}
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
      case MessageType::kAddCredit: {
        auto m = schema::ParseAddCredit(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        auto it = readers_.find((*m)->receiver_id());
        if (it == readers_.end()) return Admission();  // finished or cancelled meanwhile
        Reader* r = it->second.get();
        server_->stats_->credits_in.fetch_add(static_cast<uint64_t>((*m)->credit()),
                                              std::memory_order_relaxed);
        if (static_cast<int64_t>(r->credit) + (*m)->credit() > (1 << 30)) {
          return Reject(FrameError::kInvalidField,
                        ProtocolError("AddCredit for receiver " +
                                      std::to_string(r->receiver_id) +
                                      " makes its credit absurdly large"));
        }
        r->credit += (*m)->credit();
        r->backlog_announced = false;
        if (r->stall_since_ns != 0) {
          server_->stats_->credit_stall_ns.fetch_add(NowNs() - r->stall_since_ns,
                                                     std::memory_order_relaxed);
          r->stall_since_ns = 0;
        }
        TryEnqueue(r);
        return Admission();
      }
      case MessageType::kCancelPartitionRequest: {
        auto m = schema::ParseCancelPartitionRequest(meta);
        if (!m.ok()) return RejectMessage(type, meta, m.status());
        ReleaseReader((*m)->receiver_id());
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

  void OnWritable() override { WriteMore(); }

  void OnClosed(const Status& reason) override {
    if (!readers_.empty()) {
      Log(LogLevel::kInfo, "connection from " + conn_->peer() + " closed with " +
                               std::to_string(readers_.size()) +
                               " partition requests active: " + reason.message());
    }
    ReleaseAll();
  }

  std::optional<transport::OutFrame> OnProtocolError(FrameError, const Status& status) override {
    return MakeFrame(MessageType::kErrorResponse,
                     builder_.ErrorResponse(fb::ErrorCode::ProtocolViolation, status.message(),
                                            std::nullopt));
  }

 private:
  struct Parked {
    std::string partition_id;
    uint32_t subpartition = 0;
    int32_t credit = 0;
    uint64_t token = 0;
    uv_timer_t* timer = nullptr;
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
    std::weak_ptr<bool> alive = alive_;
    transport::EventLoop* loop = conn_->loop();
    transport::Connection* conn = conn_;
    control->OnControlRequest(
        type, meta, conn_->peer(),
        [alive, loop, conn](MessageType reply_type, std::vector<uint8_t> message) {
          loop->Post([alive, conn, reply_type, message] {
            if (!alive.lock()) return;
            conn->Send(MakeFrame(reply_type, message));
          });
        });
    return Admission();
  }

 public:
  bool serves_data() const { return !readers_.empty() || !parked_.empty(); }
  transport::Connection* connection() const { return conn_; }

  void AppendReaderStates(std::vector<std::string>* out) const {
    for (const auto& [id, r] : readers_) {
      out->push_back("reader peer=" + conn_->peer() + " receiver=" + std::to_string(id) +
                     " partition=" + r->partition + " credit=" + std::to_string(r->credit) +
                     " backlog=" + std::to_string(r->view ? r->view->backlog() : 0) +
                     " next_sequence=" + std::to_string(r->next_sequence) +
                     (r->stall_since_ns != 0 ? " stalled" : ""));
    }
    for (const auto& [id, p] : parked_) {
      out->push_back("parked peer=" + conn_->peer() + " receiver=" + std::to_string(id) +
                     " partition=" + p.partition_id + "/" + std::to_string(p.subpartition));
    }
  }

 private:

  void SendFatal(fb::ErrorCode code, const std::string& message) {
    Log(LogLevel::kWarn, "refusing client " + conn_->peer() + ": " + message);
    conn_->Send(MakeFrame(MessageType::kErrorResponse,
                          builder_.ErrorResponse(code, message, std::nullopt)));
    conn_->CloseAfterFlush(ProtocolError(message));
  }

  void SendChannelError(uint64_t receiver_id, fb::ErrorCode code, const std::string& message) {
    conn_->Send(MakeFrame(MessageType::kErrorResponse,
                          builder_.ErrorResponse(code, message, receiver_id)));
  }

  Admission OnPartitionRequest(std::span<const uint8_t> meta) {
    auto m = schema::ParsePartitionRequest(meta);
    if (!m.ok()) return RejectMessage(MessageType::kPartitionRequest, meta, m.status());
    const uint64_t id = (*m)->receiver_id();
    if (readers_.count(id) != 0 || parked_.count(id) != 0) {
      return Reject(FrameError::kInvalidField,
                    ProtocolError("PartitionRequest reuses active receiver id " +
                                  std::to_string(id)));
    }
    server_->stats_->requests.fetch_add(1, std::memory_order_relaxed);
    const std::string partition_id = (*m)->partition_id()->str();
    const uint32_t sp = (*m)->subpartition();
    const int32_t credit = (*m)->initial_credit();
    if (auto partition = server_->registry_->Lookup(partition_id)) {
      Serve(id, partition, sp, credit);
    } else {
      Park(id, partition_id, sp, credit);
    }
    return Admission();
  }

  void Serve(uint64_t id, const std::shared_ptr<ResultPartition>& partition, uint32_t sp,
             int32_t credit) {
    if (sp >= partition->num_subpartitions()) {
      SendChannelError(id, fb::ErrorCode::PartitionNotFound,
                       "partition '" + partition->id() + "' has " +
                           std::to_string(partition->num_subpartitions()) +
                           " subpartitions, not " + std::to_string(sp + 1) + " or more");
      return;
    }
    auto reader = std::make_shared<Reader>(conn_->loop(), id, credit);
    reader->partition = partition->id() + "/" + std::to_string(sp);
    reader->on_available = [this](Reader* r) { TryEnqueue(r); };
    auto view = partition->CreateView(sp, reader.get());
    if (!view.ok()) {
      SendChannelError(id, fb::ErrorCode::ProducerFailed, view.status().message());
      return;
    }
    reader->view = std::move(*view);
    readers_[id] = reader;
    server_->stats_->active_readers.fetch_add(1, std::memory_order_relaxed);
    TryEnqueue(reader.get());
  }

  void Park(uint64_t id, const std::string& partition_id, uint32_t sp, int32_t credit) {
    Parked& p = parked_[id];
    p.partition_id = partition_id;
    p.subpartition = sp;
    p.credit = credit;
    std::weak_ptr<bool> alive = alive_;
    transport::EventLoop* loop = conn_->loop();
    p.token = server_->registry_->OnRegistered(
        partition_id, [this, alive, loop, id](std::shared_ptr<ResultPartition> partition) {
          loop->Post([this, alive, id, partition] {
            if (!alive.lock()) return;
            auto it = parked_.find(id);
            if (it == parked_.end()) return;
            const uint32_t parked_sp = it->second.subpartition;
            const int32_t parked_credit = it->second.credit;
            CloseParkTimer(it->second);
            parked_.erase(it);
            Serve(id, partition, parked_sp, parked_credit);
          });
        });
    p.timer = new uv_timer_t;
    uv_timer_init(loop->loop(), p.timer);
    p.timer->data = new std::pair<Handler*, uint64_t>(this, id);
    uv_timer_start(
        p.timer,
        [](uv_timer_t* t) {
          auto* ctx = static_cast<std::pair<Handler*, uint64_t>*>(t->data);
          ctx->first->OnParkTimeout(ctx->second);
        },
        static_cast<uint64_t>(server_->config_.options.server_park_timeout.count()), 0);
  }

  void CloseParkTimer(Parked& p) {
    server_->registry_->CancelCallback(p.token);
    if (p.timer != nullptr) {
      uv_timer_stop(p.timer);
      uv_close(reinterpret_cast<uv_handle_t*>(p.timer), [](uv_handle_t* h) {
        delete static_cast<std::pair<Handler*, uint64_t>*>(h->data);
        delete reinterpret_cast<uv_timer_t*>(h);
      });
      p.timer = nullptr;
    }
  }

  void OnParkTimeout(uint64_t id) {
    auto it = parked_.find(id);
    if (it == parked_.end()) return;
    const std::string pid = it->second.partition_id;
    const uint32_t sp = it->second.subpartition;
    CloseParkTimer(it->second);
    parked_.erase(it);
    server_->stats_->requests_not_found.fetch_add(1, std::memory_order_relaxed);
    SendChannelError(id, fb::ErrorCode::PartitionNotFound,
                     "partition '" + pid + "' subpartition " + std::to_string(sp) +
                         " is not registered on " + server_->config_.node_name);
  }

  void CancelParked(uint64_t id) {
    auto it = parked_.find(id);
    if (it == parked_.end()) return;
    CloseParkTimer(it->second);
    parked_.erase(it);
  }

  bool Writable(Reader* r) const {
    if (r->released) return false;
    if (r->view->IsAvailable(r->credit)) return true;
    return r->credit <= 0 && !r->backlog_announced && r->view->backlog() > 0;
  }

  void TryEnqueue(Reader* r) {
    if (!r->queued && Writable(r)) {
      r->queued = true;
      ready_.push_back(r->receiver_id);
    }
    WriteMore();
  }

  void WriteMore() {
    if (conn_->closing()) return;
    const size_t high_water = server_->config_.write_high_water_bytes;
    const bool checksums = server_->config_.options.checksums;
    while (!ready_.empty() && conn_->queued_bytes() < high_water) {
      const uint64_t id = ready_.front();
      ready_.pop_front();
      auto it = readers_.find(id);
      if (it == readers_.end()) continue;
      Reader* r = it->second.get();
      r->queued = false;
      if (r->released) continue;
      if (!r->view->IsAvailable(r->credit)) {
        // No credit for the data that waits: tell the receiver the backlog once.
        const uint32_t backlog = r->view->backlog();
        if (r->credit <= 0 && backlog > 0 && !r->backlog_announced) {
          r->backlog_announced = true;
          if (r->stall_since_ns == 0) r->stall_since_ns = NowNs();
          server_->stats_->backlog_announcements.fetch_add(1, std::memory_order_relaxed);
          conn_->Send(MakeFrame(MessageType::kBacklogAnnouncement,
                                builder_.BacklogAnnouncement(id, static_cast<int32_t>(backlog))));
        }
        continue;
      }
      auto item = r->view->PollNext();
      if (!item.ok()) {
        SendChannelError(id, fb::ErrorCode::ProducerFailed, item.status().message());
        ReleaseReader(id);
        continue;
      }
      if (!item->has_value()) continue;
      BufferAndBacklog& b = **item;
      const buffer::DataType type = b.buffer.type();
      const bool is_data = type == buffer::DataType::kData;
      if (is_data) {
        --r->credit;
        server_->stats_->buffers_out.fetch_add(1, std::memory_order_relaxed);
        server_->stats_->bytes_out.fetch_add(b.buffer.size(), std::memory_order_relaxed);
        if (r->credit == 0 && b.backlog > 0 && r->stall_since_ns == 0) r->stall_since_ns = NowNs();
      } else {
        server_->stats_->events_out.fetch_add(1, std::memory_order_relaxed);
      }
      schema::BufferResponseFields f;
      f.receiver_id = id;
      f.sequence_number = r->next_sequence++;
      f.backlog = static_cast<int32_t>(b.backlog);
      f.data_type = type;
      f.payload_size = b.buffer.size();
      if (checksums) {
        f.flags |= schema::kFlagChecksummed;
        f.checksum = Crc32c(b.buffer.data(), b.buffer.size());
      }
      conn_->Send(MakeFrame(MessageType::kBufferResponse, builder_.BufferResponse(f),
                            std::move(b.buffer)));
      if (type == buffer::DataType::kEndOfPartition) {
        ReleaseReader(id);
        continue;
      }
      if (Writable(r)) {
        r->queued = true;
        ready_.push_back(id);
      }
    }
  }

  void ReleaseReader(uint64_t id) {
    auto it = readers_.find(id);
    if (it == readers_.end()) return;
    std::shared_ptr<Reader> r = std::move(it->second);
    readers_.erase(it);
    r->released = true;
    if (r->stall_since_ns != 0) {
      server_->stats_->credit_stall_ns.fetch_add(NowNs() - r->stall_since_ns,
                                                 std::memory_order_relaxed);
    }
    if (r->view) r->view->Release();
    server_->stats_->active_readers.fetch_sub(1, std::memory_order_relaxed);
  }

  void ReleaseAll() {
    while (!readers_.empty()) ReleaseReader(readers_.begin()->first);
    while (!parked_.empty()) {
      CloseParkTimer(parked_.begin()->second);
      parked_.erase(parked_.begin());
    }
    ready_.clear();
  }

  ShuffleServer* const server_;
  transport::Connection* const conn_;
  std::shared_ptr<bool> alive_;
  schema::MessageBuilder builder_;
  ServerHandshake handshake_;
  std::unordered_map<uint64_t, std::shared_ptr<Reader>> readers_;
  std::unordered_map<uint64_t, Parked> parked_;
  std::deque<uint64_t> ready_;
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

std::vector<std::string> ShuffleServer::ReaderStates() {
  std::vector<std::string> out;
  if (!tcp_) return out;
  tcp_->ForEachConnection([&](transport::Connection& c) {
    if (auto* h = dynamic_cast<Handler*>(c.handler())) h->AppendReaderStates(&out);
  });
  return out;
}

}  // namespace sluice::shuffle
