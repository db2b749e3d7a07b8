// ShuffleServer: the producer side of the network. Accepts consumer connections, performs the
// handshake, and serves PartitionRequests from the process's PartitionRegistry: a reader per
// receiver id, scheduled only when it has credit and a finished buffer, or an event (events
// need no credit); round robin between readers; several frames per gathered write; never more
// data buffers in flight than credit; the backlog in every BufferResponse. A reader without
// credit but with a backlog announces it once (BacklogAnnouncement), so channels with zero
// exclusive buffers get floating credit. A request for a partition that is not registered yet
// is parked for `server_park_timeout`, then answered with PartitionNotFound (the client retries).
//
// The credit arithmetic lives in PartitionRequestQueue (one per connection); the handler here
// parses frames, checks access, and sends what the queue says. A buffer a producer flushes to
// an idle connection is written on the producer's thread (write-through: no wake-up of the
// loop; see PartitionRequestQueue and Connection::SendFromAnyThread).
//
// Errors are scoped: a failed partition fails its reader (ErrorResponse with the receiver id),
// and so does a PartitionRequest without the job's access proof (AuthenticationFailed) or for
// a subpartition that already has a reader; protocol violations close the connection
// (ErrorResponse without one, its ErrorCode naming the reason). Other connections go on.
// A peer that sends control requests without reading the replies is closed once its unread
// replies pass a bound.
//
// Thread-safe to create, query and stop; connection state lives on the EventLoop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/partition_registry.h"
#include "shuffle/protocol.h"
#include "shuffle/shuffle_options.h"
#include "transport/event_loop.h"
#include "transport/tcp.h"

namespace sluice::shuffle {

// Sends the answer to one control request: a message of `type` (schema/control.fbs). Callable
// from any thread, once; dropped when the connection is gone by then.
using ControlReply = std::function<void(schema::MessageType type, std::vector<uint8_t> message)>;

// Serves daemon control messages (frame types 32..63) that arrive on the shuffle port, after
// the handshake and authentication. Called on the loop thread: an implementation must not
// block there (hand the work to another thread and reply from it).
class ControlService {
 public:
  virtual ~ControlService() = default;
  virtual void OnControlRequest(schema::MessageType type, std::span<const uint8_t> message,
                                const std::string& peer, ControlReply reply) = 0;
};

struct ShuffleServerConfig {
  std::string bind_host = "127.0.0.1";
  uint16_t port = 0;
  uint32_t max_connections = 1024;
  // Connections from one remote IP address at a time (TcpServer); 0: no per-peer cap.
  uint32_t max_connections_per_peer = 64;
  ShuffleOptions options;
  std::string node_name = "sluice";
  ConnectionTimeouts timeouts;
  // Stop queueing frames on a connection while this many bytes are queued or in flight.
  size_t write_high_water_bytes = 4u << 20;
  // PartitionRequests for unregistered partitions one connection may park at once (each
  // waits up to options.server_park_timeout); more are answered with PartitionNotFound.
  uint32_t max_parked_requests = 4096;
  // Replies a peer has not read yet (control replies, and errors answering its
  // PartitionRequests), beyond write_high_water_bytes: a peer whose queued bytes would pass
  // write_high_water_bytes + max_unread_control_bytes is closed.
  size_t max_unread_control_bytes = 4u << 20;
  // Control requests a connection may have unanswered at once; one more closes it.
  uint32_t max_outstanding_control_requests = 64;
  // Shared secret (shuffle/auth.h, shuffle/handshake.h). Required unless auth.off: Start
  // refuses an empty secret. Every message but the handshake and heartbeats needs it proved.
  auth::AuthConfig auth;
  // Control messages go here; null: they are refused as unexpected. Must outlive the server.
  ControlService* control = nullptr;
};

struct ShuffleServerStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> requests_not_found{0};
  std::atomic<uint64_t> buffers_out{0};
  std::atomic<uint64_t> bytes_out{0};
  std::atomic<uint64_t> events_out{0};
  std::atomic<uint64_t> backlog_announcements{0};
  std::atomic<uint64_t> credits_in{0};
  std::atomic<uint64_t> credit_stall_ns{0};  // time readers had data but no credit
  std::atomic<uint64_t> active_readers{0};
  // Wrong or missing proof, or anything but the handshake before authentication.
  std::atomic<uint64_t> auth_failures{0};
  std::atomic<uint64_t> control_requests{0};
  std::atomic<uint64_t> control_peers_closed{0};  // over the unread reply or request bound
  // Producer notifications handed to the IO loop (Post: a wake-up of a sleeping loop each);
  // the ones served on the producer's thread instead (write-through) need none.
  std::atomic<uint64_t> notifications_posted{0};
};

class ShuffleServer {
 public:
  // InvalidArgument naming auth.secret and auth.off when config.auth is unusable
  // (auth::ValidateAuthConfig); the listener's error when it cannot bind.
  static Result<std::unique_ptr<ShuffleServer>> Start(transport::EventLoop* loop,
                                                      PartitionRegistry* registry,
                                                      const ShuffleServerConfig& config);
  ~ShuffleServer();
  ShuffleServer(const ShuffleServer&) = delete;
  ShuffleServer& operator=(const ShuffleServer&) = delete;

  uint16_t port() const { return tcp_->port(); }
  const std::shared_ptr<transport::TransportMetrics>& metrics() const { return tcp_->metrics(); }
  const ShuffleServerStats& stats() const { return *stats_; }
  size_t connection_count() const { return tcp_->connection_count(); }
  // Closes every connection (readers release their views) and stops listening. Idempotent.
  void Stop();
  // Stops accepting new connections; open ones go on (graceful shutdown). Idempotent.
  void StopListening();
  // Closes every connection that serves or waits for a partition (not control-only ones), as a
  // network cut would; returns how many. Fault injection for tests and the harness.
  uint32_t CutDataConnections(const std::string& reason);
  // One line per reader: peer, receiver id, partition/subpartition, credit, backlog, stalled.
  std::vector<std::string> ReaderStates();
  // Runs fn(connection) for every open connection on the loop thread and waits (tests, tools).
  void ForEachConnection(const std::function<void(transport::Connection&)>& fn);

 private:
  class Handler;
  ShuffleServer(transport::EventLoop* loop, PartitionRegistry* registry,
                const ShuffleServerConfig& config);

  transport::EventLoop* const loop_;
  PartitionRegistry* const registry_;
  const ShuffleServerConfig config_;
  const std::shared_ptr<ShuffleServerStats> stats_;
  std::unique_ptr<transport::TcpServer> tcp_;
};

}  // namespace sluice::shuffle
