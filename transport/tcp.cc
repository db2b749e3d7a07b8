#include "transport/tcp.h"

#include <algorithm>
#include <condition_variable>
#include <future>

#include "transport/log.h"

namespace sluice::transport {

namespace {

Status ParseAddress(const std::string& host, uint16_t port, sockaddr_storage* out) {
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(out)) == 0) return {};
  if (uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(out)) == 0) return {};
  return InvalidArgument("'" + host +
                         "' is not a numeric IPv4 or IPv6 address (use e.g. 127.0.0.1)");
}

// "host:port" of the remote end; *ip receives the host alone (the per-peer cap's key).
std::string PeerName(uv_tcp_t* tcp, std::string* ip) {
  sockaddr_storage ss{};
  int len = sizeof(ss);
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    *ip = "unknown-peer";
    return "unknown-peer";
  }
  char host[64] = {0};
  uint16_t port = 0;
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    uv_ip6_name(a, host, sizeof(host));
    port = ntohs(a->sin6_port);
    *ip = host;
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  uv_ip4_name(a, host, sizeof(host));
  port = ntohs(a->sin_port);
  *ip = host;
  return std::string(host) + ":" + std::to_string(port);
}

void DeleteTcpOnClose(uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); }

// Runs fn on the loop thread and waits for it; false when the loop no longer runs tasks.
bool RunOnLoopAndWait(EventLoop* loop, std::function<void()> fn) {
  if (loop->IsLoopThread()) {
    fn();
    return true;
  }
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  if (!loop->Post([fn = std::move(fn), done] {
        fn();
        done->set_value();
      })) {
    return false;
  }
  f.wait();
  return true;
}

}  // namespace


// ---------------------------------------------------------------------------------------------
// TcpServer

TcpServer::TcpServer(EventLoop* loop, const ServerOptions& options, HandlerFactory factory)
    : loop_(loop),
      options_(options),
      factory_(std::move(factory)),
      metrics_(std::make_shared<TransportMetrics>()),
      alive_(std::make_shared<bool>(true)) {}

Result<std::unique_ptr<TcpServer>> TcpServer::Start(EventLoop* loop, const ServerOptions& options,
                                                    HandlerFactory factory) {
  std::unique_ptr<TcpServer> server(new TcpServer(loop, options, std::move(factory)));
  sockaddr_storage addr{};
  if (Status st = ParseAddress(options.bind_host, options.port, &addr); !st.ok()) {
    return InvalidArgument("listen address: " + st.message());
  }
  Status result;
  TcpServer* s = server.get();
  const bool ran = RunOnLoopAndWait(loop, [&] {
    s->listener_ = new uv_tcp_t;
    uv_tcp_init(loop->loop(), s->listener_);
    s->listener_->data = s;
    const std::string where = Endpoint{options.bind_host, options.port}.ToString();
    int rc = uv_tcp_bind(s->listener_, reinterpret_cast<sockaddr*>(&addr), 0);
    if (rc == 0)
      rc = uv_listen(reinterpret_cast<uv_stream_t*>(s->listener_), options.backlog,
                     &TcpServer::OnConnection);
    if (rc != 0) {
      result = IoError("cannot listen on " + where + ": " + uv_strerror(rc) +
                       (rc == UV_EADDRINUSE ? " (another process uses the port; pick another "
                                              "port or 0 for any free one)"
                                            : ""));
      uv_close(reinterpret_cast<uv_handle_t*>(s->listener_), DeleteTcpOnClose);
      s->listener_ = nullptr;
      s->stopped_ = true;
      return;
    }
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(s->listener_, reinterpret_cast<sockaddr*>(&bound), &len);
    s->port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);  // same offset for v6
    std::weak_ptr<bool> alive = s->alive_;
    loop->AddStopHook([s, alive] {
      if (alive.lock()) s->StopOnLoop();
    });
  });
  if (!ran) return ClosedError("event loop '" + loop->name() + "' is stopped");
  if (!result.ok()) return result;
  return server;
}

TcpServer::~TcpServer() {
  Stop();
  alive_.reset();
}

void TcpServer::OnConnection(uv_stream_t* listener, int status) {
  auto* s = static_cast<TcpServer*>(listener->data);
  if (status < 0) {
    Log(LogLevel::kWarn, std::string("accept failed: ") + uv_strerror(status));
    return;
  }
  auto* tcp = new uv_tcp_t;
  uv_tcp_init(s->loop_->loop(), tcp);
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(tcp)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(tcp), DeleteTcpOnClose);
    return;
  }
  std::string ip;
  const std::string peer = PeerName(tcp, &ip);
  const uint32_t per_peer_cap = s->options_.max_connections_per_peer;
  if (!s->stopped_ && per_peer_cap > 0 && s->connections_.size() < s->options_.max_connections) {
    auto it = s->per_peer_.find(ip);
    if (it != s->per_peer_.end() && it->second >= per_peer_cap) {
      s->metrics_->connections_refused_per_peer.fetch_add(1, std::memory_order_relaxed);
      s->LogRefusal("refusing connection from " + peer + ": " + ip + " already has " +
                    std::to_string(it->second) +
                    " connections, the most one peer may have (max_connections_per_peer)");
      uv_close(reinterpret_cast<uv_handle_t*>(tcp), DeleteTcpOnClose);
      return;
    }
  }
  if (s->stopped_ || s->connections_.size() >= s->options_.max_connections) {
    s->metrics_->connections_refused.fetch_add(1, std::memory_order_relaxed);
    s->LogRefusal("refusing connection from " + peer + ": " +
                  (s->stopped_ ? std::string("server stopping")
                               : "limit of " + std::to_string(s->options_.max_connections) +
                                     " connections reached"));
    uv_close(reinterpret_cast<uv_handle_t*>(tcp), DeleteTcpOnClose);
    return;
  }
  auto conn = Connection::Adopt(s->loop_, tcp, s->options_.transport, s->metrics_, peer, false);
  s->connections_[conn.get()] = conn;
  ++s->per_peer_[ip];
  {
    std::lock_guard lock(s->count_mu_);
    ++s->count_;
  }
  // The server may be gone by the time a connection finishes closing (destroyed on the loop
  // thread, where Stop() cannot wait): the hook then has nothing to update.
  conn->SetCloseHook([s, ip, alive = std::weak_ptr<bool>(s->alive_)](Connection* c) {
    if (alive.expired()) return;
    s->connections_.erase(c);
    if (auto it = s->per_peer_.find(ip); it != s->per_peer_.end() && --it->second == 0) {
      s->per_peer_.erase(it);
    }
    std::lock_guard lock(s->count_mu_);
    --s->count_;
  });
  conn->Start(s->factory_(*conn));
}

void TcpServer::LogRefusal(const std::string& line) {
  // A peer that opens connections in a loop must not flood the log: one line a second, with
  // the count of the ones left out (the metrics count every refusal).
  const uint64_t now = uv_now(loop_->loop());
  if (refusals_logged_ms_ != 0 && now - refusals_logged_ms_ < 1000) {
    ++refusals_unlogged_;
    return;
  }
  std::string text = line;
  if (refusals_unlogged_ > 0) {
    text += " (and " + std::to_string(refusals_unlogged_) + " more refusals not logged)";
  }
  Log(LogLevel::kWarn, text);
  refusals_logged_ms_ = now;
  refusals_unlogged_ = 0;
}

size_t TcpServer::connection_count() const {
  std::lock_guard lock(count_mu_);
  return count_;
}

void TcpServer::StopListening() {
  RunOnLoopAndWait(loop_, [this] {
    if (listener_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(listener_), DeleteTcpOnClose);
      listener_ = nullptr;
    }
  });
}

void TcpServer::StopOnLoop() {
  if (!stopped_) {
    stopped_ = true;
    if (listener_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(listener_), DeleteTcpOnClose);
      listener_ = nullptr;
    }
  }
  // Copy: closing runs hooks that erase from the map (later, in close callbacks).
  std::vector<std::shared_ptr<Connection>> all;
  for (auto& [raw, c] : connections_) all.push_back(c);
  for (auto& c : all)
    c->Close(ClosedError("server on port " + std::to_string(port_) + " stopping"));
}

void TcpServer::Stop() {
  if (!RunOnLoopAndWait(loop_, [this] { StopOnLoop(); })) return;
  // Close callbacks run on later loop iterations: wait for the count to reach zero.
  while (true) {
    bool empty = false;
    RunOnLoopAndWait(loop_, [&] { empty = connections_.empty(); });
    if (empty || loop_->IsLoopThread()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void TcpServer::ForEachConnection(const std::function<void(Connection&)>& fn) {
  RunOnLoopAndWait(loop_, [&] {
    std::vector<std::shared_ptr<Connection>> all;
    for (auto& [raw, c] : connections_) all.push_back(c);
    for (auto& c : all) fn(*c);
  });
}

// ---------------------------------------------------------------------------------------------
// TcpClient

struct TcpClient::Attempt {
  TcpClient* client = nullptr;
  Endpoint endpoint;
  sockaddr_storage addr{};
  uint32_t tries = 0;
  std::chrono::milliseconds backoff{0};
  uv_tcp_t* tcp = nullptr;
  uv_connect_t req{};
  uv_timer_t* timer = nullptr;  // backoff; closed (and freed) when the attempt ends
  bool finished = false;
  // The client was destroyed on the loop thread while this attempt's connect was still being
  // cancelled: the callback only frees the attempt (its waiters were answered already).
  bool orphaned = false;
};

TcpClient::TcpClient(EventLoop* loop, TransportOptions options, HandlerFactory factory,
                     RetryPolicy retry)
    : loop_(loop),
      options_(std::move(options)),
      factory_(std::move(factory)),
      retry_(retry),
      metrics_(std::make_shared<TransportMetrics>()),
      alive_(std::make_shared<bool>(true)) {
  std::weak_ptr<bool> alive = alive_;
  RunOnLoopAndWait(loop_, [this, alive] {
    loop_->AddStopHook([this, alive] {
      if (alive.lock()) StopOnLoop();
    });
  });
}

TcpClient::~TcpClient() {
  Stop();
  if (loop_->IsLoopThread()) {
    // Stop() could not wait here: attempts whose connect is being cancelled call back later.
    // Answer their waiters now and let the callbacks free the attempts without us.
    for (Attempt* a : attempts_) a->orphaned = true;
    auto waiting = std::move(waiting_);
    waiting_.clear();
    for (auto& [ep, waiters] : waiting) {
      for (auto& w : waiters) w(Cancelled("client destroyed while connecting to " + ep.ToString()));
    }
  }
  alive_.reset();
}

size_t TcpClient::connection_count() const {
  std::lock_guard lock(count_mu_);
  return count_;
}

void TcpClient::GetOrConnect(const Endpoint& endpoint, ConnectCallback done) {
  auto task = [this, endpoint, done]() mutable {
    if (stopped_) {
      done(Cancelled("client stopped before connecting to " + endpoint.ToString()));
      return;
    }
    auto it = connections_.find(endpoint);
    if (it != connections_.end() && !it->second->closing()) {
      done(it->second);
      return;
    }
    auto& waiters = waiting_[endpoint];
    waiters.push_back(std::move(done));
    if (waiters.size() == 1) StartAttempt(endpoint);
  };
  if (!loop_->RunOrPost(task)) {
    done(Cancelled("event loop stopped before connecting to " + endpoint.ToString()));
  }
}

void TcpClient::StartAttempt(const Endpoint& endpoint) {
  auto* a = new Attempt;
  a->client = this;
  a->endpoint = endpoint;
  a->backoff = retry_.initial_backoff;
  if (Status st = ParseAddress(endpoint.host, endpoint.port, &a->addr); !st.ok()) {
    auto waiters = std::move(waiting_[endpoint]);
    waiting_.erase(endpoint);
    delete a;
    for (auto& w : waiters)
      w(InvalidArgument("cannot connect to " + endpoint.ToString() + ": " + st.message()));
    return;
  }
  a->timer = new uv_timer_t;
  uv_timer_init(loop_->loop(), a->timer);
  a->timer->data = a;
  attempts_.push_back(a);

  TryConnect(a);
}

void TcpClient::TryConnect(Attempt* a) {
  ++a->tries;
  a->tcp = new uv_tcp_t;
  uv_tcp_init(a->client->loop_->loop(), a->tcp);
  a->req.data = a;
  const int rc = uv_tcp_connect(&a->req, a->tcp, reinterpret_cast<sockaddr*>(&a->addr),
                                [](uv_connect_t* req, int status) {
                                  auto* at = static_cast<Attempt*>(req->data);
                                  if (at->orphaned) {
                                    FreeOrphanedAttempt(at);
                                    return;
                                  }
                                  at->client->OnAttemptDone(at, status);
                                });
  if (rc != 0) a->client->OnAttemptDone(a, rc);
}

void TcpClient::OnAttemptDone(Attempt* a, int status) {
  const Endpoint ep = a->endpoint;
  auto finish = [this, a] {
    a->finished = true;
    attempts_.erase(std::find(attempts_.begin(), attempts_.end(), a));
    uv_close(reinterpret_cast<uv_handle_t*>(a->timer), [](uv_handle_t* h) {
      auto* at = static_cast<Attempt*>(h->data);
      delete reinterpret_cast<uv_timer_t*>(h);
      delete at;
    });
  };
  if (status == 0 && !stopped_) {
    uv_tcp_t* tcp = a->tcp;
    a->tcp = nullptr;
    finish();
    auto conn = Connection::Adopt(loop_, tcp, options_, metrics_, ep.ToString(), true);
    connections_[ep] = conn;
    {
      std::lock_guard lock(count_mu_);
      ++count_;
    }
    conn->SetCloseHook([this, ep, alive = std::weak_ptr<bool>(alive_)](Connection* c) {
      if (alive.expired()) return;  // the client was destroyed on the loop thread
      auto it = connections_.find(ep);
      if (it != connections_.end() && it->second.get() == c) connections_.erase(it);
      std::lock_guard lock(count_mu_);
      --count_;
    });
    conn->Start(factory_(*conn));
    auto waiters = std::move(waiting_[ep]);
    waiting_.erase(ep);
    for (auto& w : waiters) w(conn);
    return;
  }
  if (a->tcp != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(a->tcp), DeleteTcpOnClose);
    a->tcp = nullptr;
  }
  if (!stopped_ && a->tries < retry_.attempts) {
    const auto delay = a->backoff;
    a->backoff = std::min(a->backoff * 2, retry_.max_backoff);
    uv_timer_start(
        a->timer,
        [](uv_timer_t* t) {
          auto* at = static_cast<Attempt*>(t->data);
          if (at->client->stopped_) {
            at->client->OnAttemptDone(at, UV_ECANCELED);
          } else {
            TryConnect(at);
          }
        },
        static_cast<uint64_t>(delay.count()), 0);
    return;
  }
  const uint32_t tries = a->tries;
  finish();
  auto waiters = std::move(waiting_[ep]);
  waiting_.erase(ep);
  Status err = stopped_ ? Cancelled("client stopped while connecting to " + ep.ToString())
                        : IoError("could not connect to " + ep.ToString() + " after " +
                                  std::to_string(tries) + " attempts: " + uv_strerror(status) +
                                  "; check that the peer's daemon runs and listens there");
  for (auto& w : waiters) w(err);
}

void TcpClient::FreeOrphanedAttempt(Attempt* a) {
  if (a->tcp != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(a->tcp), DeleteTcpOnClose);
    a->tcp = nullptr;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(a->timer), [](uv_handle_t* h) {
    auto* at = static_cast<Attempt*>(h->data);
    delete reinterpret_cast<uv_timer_t*>(h);
    delete at;
  });
}

void TcpClient::StopOnLoop() {
  stopped_ = true;
  std::vector<std::shared_ptr<Connection>> all;
  for (auto& [ep, c] : connections_) all.push_back(c);
  for (auto& c : all) c->Close(ClosedError("client stopping"));
  // Attempts in backoff end now; those connecting end when their connect is cancelled.
  std::vector<Attempt*> backing_off;
  for (Attempt* a : attempts_) {
    if (a->tcp == nullptr)
      backing_off.push_back(a);
    else {
      uv_close(reinterpret_cast<uv_handle_t*>(a->tcp), DeleteTcpOnClose);
      a->tcp = nullptr;
    }
  }
  for (Attempt* a : backing_off) {
    uv_timer_stop(a->timer);
    OnAttemptDone(a, UV_ECANCELED);
  }
}

void TcpClient::ForEachConnection(const std::function<void(Connection&)>& fn) {
  RunOnLoopAndWait(loop_, [&] {
    std::vector<std::shared_ptr<Connection>> all;
    for (auto& [ep, c] : connections_) all.push_back(c);
    for (auto& c : all) fn(*c);
  });
}

void TcpClient::Stop() {
  if (!RunOnLoopAndWait(loop_, [this] { StopOnLoop(); })) return;
  while (true) {
    bool empty = false;
    RunOnLoopAndWait(loop_, [&] { empty = connections_.empty() && attempts_.empty(); });
    if (empty || loop_->IsLoopThread()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace sluice::transport
