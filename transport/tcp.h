// TcpServer and TcpClient: where connections come from.
//
// TcpServer binds (loopback by default; port 0 picks a free port), accepts up to
// max_connections in all and max_connections_per_peer from one remote IP address, and gives every
// connection a handler from the factory. TcpClient keeps one connection per remote endpoint, shared
// by any number of logical channels: concurrent requests for an endpoint that is still connecting
// wait for the same attempt; a failed attempt is retried with backoff (initial, doubling, capped)
// before the callbacks get the error.
//
// Both are thread-safe to call; their connections live on their EventLoop. Stop() (also run by
// the destructor) closes every connection through its close callbacks and waits for that; on
// the loop thread itself it cannot wait, and the closes finish on later loop iterations (safe
// also when the object is destroyed right after). Destroy both before their EventLoop.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "buffer/status.h"
#include "transport/connection.h"
#include "transport/endpoint.h"
#include "transport/event_loop.h"
#include "transport/transport_options.h"

namespace sluice::transport {

// Makes the upper layer's handler for a new connection (loop thread).
using HandlerFactory = std::function<std::unique_ptr<ConnectionHandler>(Connection&)>;

struct ServerOptions {
  std::string bind_host = "127.0.0.1";
  uint16_t port = 0;
  int backlog = 128;
  uint32_t max_connections = 1024;
  // Connections from one remote IP address at a time (the port does not count); one more is
  // closed at once and counted in TransportMetrics::connections_refused_per_peer. 0: no cap.
  uint32_t max_connections_per_peer = 64;
  TransportOptions transport;
};

class TcpServer {
 public:
  // Binds and listens on `loop`. Errors name the address and what to change.
  static Result<std::unique_ptr<TcpServer>> Start(EventLoop* loop, const ServerOptions& options,
                                                  HandlerFactory factory);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  uint16_t port() const { return port_; }
  const std::shared_ptr<TransportMetrics>& metrics() const { return metrics_; }
  // Connections currently open.
  size_t connection_count() const;
  // Stops accepting and closes every connection; waits until they are closed. Idempotent.
  void Stop();
  // Runs fn(connection) for every open connection on the loop thread and waits (tests, tools).
  void ForEachConnection(const std::function<void(Connection&)>& fn);
  // Closes the listening socket; open connections go on. Idempotent.
  void StopListening();

 private:
  TcpServer(EventLoop* loop, const ServerOptions& options, HandlerFactory factory);
  static void OnConnection(uv_stream_t* server, int status);
  void StopOnLoop();
  void LogRefusal(const std::string& line);

  EventLoop* const loop_;
  const ServerOptions options_;
  const HandlerFactory factory_;
  const std::shared_ptr<TransportMetrics> metrics_;
  uint16_t port_ = 0;
  // Loop thread only:
  uv_tcp_t* listener_ = nullptr;
  bool stopped_ = false;
  std::unordered_map<Connection*, std::shared_ptr<Connection>> connections_;
  std::unordered_map<std::string, uint32_t> per_peer_;  // open connections by remote IP
  uint64_t refusals_logged_ms_ = 0;  // when a refusal was last logged (loop time)
  uint64_t refusals_unlogged_ = 0;   // refusals since then
  mutable std::mutex count_mu_;
  size_t count_ = 0;
  std::shared_ptr<bool> alive_;  // stop hook guard
};

struct RetryPolicy {
  uint32_t attempts = 5;  // connection attempts in total
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{10000};
};

class TcpClient {
 public:
  using ConnectCallback = std::function<void(Result<std::shared_ptr<Connection>>)>;

  TcpClient(EventLoop* loop, TransportOptions options, HandlerFactory factory,
            RetryPolicy retry = {});
  ~TcpClient();
  TcpClient(const TcpClient&) = delete;
  TcpClient& operator=(const TcpClient&) = delete;

  // Calls `done` on the loop thread with the shared connection to `endpoint`, connecting first
  // when there is none. Thread-safe.
  void GetOrConnect(const Endpoint& endpoint, ConnectCallback done);
  const std::shared_ptr<TransportMetrics>& metrics() const { return metrics_; }
  // Closes every connection and cancels pending attempts (their callbacks get Cancelled);
  // waits until done. Idempotent.
  void Stop();
  size_t connection_count() const;
  // Runs fn(connection) for every open connection on the loop thread and waits (tests, tools).
  void ForEachConnection(const std::function<void(Connection&)>& fn);

 private:
  struct Attempt;
  void StartAttempt(const Endpoint& endpoint);
  static void TryConnect(Attempt* attempt);
  // Frees an attempt whose client was destroyed on the loop thread (see ~TcpClient).
  static void FreeOrphanedAttempt(Attempt* attempt);
  void OnAttemptDone(Attempt* attempt, int status);
  void StopOnLoop();

  EventLoop* const loop_;
  const TransportOptions options_;
  const HandlerFactory factory_;
  const RetryPolicy retry_;
  const std::shared_ptr<TransportMetrics> metrics_;
  // Loop thread only:
  std::map<Endpoint, std::shared_ptr<Connection>> connections_;
  std::map<Endpoint, std::vector<ConnectCallback>> waiting_;
  std::vector<Attempt*> attempts_;
  bool stopped_ = false;
  mutable std::mutex count_mu_;
  size_t count_ = 0;
  std::shared_ptr<bool> alive_;  // stop hook guard
};

}  // namespace sluice::transport
