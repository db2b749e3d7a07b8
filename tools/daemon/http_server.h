// HttpServer: sluiced's operator endpoint on metrics_listen: `GET /metrics` (Prometheus text
// exposition 0.0.4) and `GET /healthz` (200 "ok" while serving, 503 while shutting down).
//
// One small thread with poll() and plain sockets (libuv stays below shuffle's API). Bounded so
// that a hostile client cannot hurt the daemon: a request head of at most kMaxRequestHead
// bytes (more: 431), at most kMaxClients connections at once (more are closed on accept), a
// deadline for reading the request and writing the answer (kClientDeadline), HTTP/1.0 with
// "Connection: close". Every request must carry "Authorization: Bearer <token>" (the daemon's
// metrics token, compared in constant time): without it, or with another token, 401 and nothing
// else. Then anything but GET/HEAD gets 405, any other path 404.
//
// Thread-safe: the handlers are called on the server's thread; the destructor stops it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "buffer/status.h"

namespace sluice::daemon {

inline constexpr size_t kMaxRequestHead = 8 * 1024;
inline constexpr size_t kMaxClients = 8;
inline constexpr std::chrono::milliseconds kClientDeadline{5000};

struct HttpHandlers {
  std::function<std::string()> metrics;  // the /metrics body
  std::function<bool()> healthy;         // false: /healthz answers 503
};

// Counters of the endpoint (exported as sluice_http_*).
struct HttpStats {
  std::atomic<uint64_t> requests{0};  // answered with 200
  std::atomic<uint64_t> rejected{0};  // answered 4xx, or closed (deadline, too many clients)
};

class HttpServer {
 public:
  // Binds `host_port` ("127.0.0.1:9470", "[::1]:0", port 0 picks one) and starts the thread,
  // serving only requests that carry `token`. InvalidArgument naming metrics_listen when the
  // address does not parse or cannot be bound (in use, not local), and naming
  // metrics_token_file when `token` is shorter than 16 bytes.
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& host_port,
                                                   std::string token, HttpHandlers handlers);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Stops serving and joins the thread (no handler runs after it returns). Idempotent; the
  // destructor calls it. Not concurrently with itself.
  void Stop();

  uint16_t port() const { return port_; }
  const HttpStats& stats() const { return stats_; }

 private:
  struct Client;
  HttpServer(int listen_fd, uint16_t port, std::string token, HttpHandlers handlers);
  void Run();
  void Accept(std::vector<Client>& clients);
  // Reads what arrived; true when the client is still alive.
  bool OnReadable(Client& c);
  // Writes what is pending; true when there is more to write.
  bool OnWritable(Client& c);
  std::string Answer(const std::string& head);

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  const std::string token_;
  HttpHandlers handlers_;
  HttpStats stats_;
  std::thread thread_;
};

// Splits "host:port" / "[v6]:port". InvalidArgument naming metrics_listen.
Status SplitHostPort(const std::string& text, std::string* host, uint16_t* port);

}  // namespace sluice::daemon
