#include "tools/daemon/http_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "shuffle/auth.h"

namespace sluice::daemon {

struct HttpServer::Client {
  int fd = -1;
  std::string in;
  std::string out;
  size_t written = 0;
  bool answered = false;
  std::chrono::steady_clock::time_point deadline;
};

namespace {

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string Response(int code, const char* reason, const std::string& type,
                     const std::string& body, bool with_body, const char* extra = "") {
  std::string r = "HTTP/1.0 " + std::to_string(code) + " " + reason + "\r\n";
  r += "Content-Type: " + type + "\r\nContent-Length: " + std::to_string(body.size()) +
       "\r\nConnection: close\r\n" + extra + "\r\n";
  if (with_body) r += body;
  return r;
}

std::string Plain(int code, const char* reason, const std::string& body,
                  const char* extra = "") {
  return Response(code, reason, "text/plain; charset=utf-8", body, true, extra);
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// `s` without the blanks (and a line's '\r') at either end.
std::string_view Trim(std::string_view s) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && blank(s.back())) s.remove_suffix(1);
  return s;
}

// The credentials of the request head's "Authorization: Bearer <token>" header (the header name
// and the scheme in any case), or nullopt when it has none.
std::optional<std::string_view> BearerToken(std::string_view head) {
  size_t at = head.find('\n');
  while (at != std::string_view::npos) {
    const size_t next = head.find('\n', at + 1);
    const std::string_view line = head.substr(at + 1, next == head.npos ? next : next - at - 1);
    at = next;
    const size_t colon = line.find(':');
    if (colon == line.npos || !EqualsIgnoreCase(line.substr(0, colon), "authorization")) continue;
    const std::string_view value = Trim(line.substr(colon + 1));
    if (value.size() < 7 || !EqualsIgnoreCase(value.substr(0, 7), "bearer ")) return std::nullopt;
    return Trim(value.substr(7));
  }
  return std::nullopt;
}

}  // namespace

Status SplitHostPort(const std::string& text, std::string* host, uint16_t* port) {
  const auto bad = [&](const std::string& why) {
    return InvalidArgument("metrics_listen = '" + text + "': " + why +
                           "; use HOST:PORT such as 127.0.0.1:9470 or [::1]:0, or \"\" for none");
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) return bad("no port");
  *host = text.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) return bad("no host");
  const std::string p = text.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) {
    return bad("port '" + p + "' is not a number");
  }
  const unsigned long v = std::stoul(p);
  if (v > 65535) return bad("port " + p + " is out of range 0..65535");
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host_port,
                                                      std::string token, HttpHandlers handlers) {
  if (token.size() < shuffle::auth::kMinSecretLength) {  // never an endpoint without one
    return InvalidArgument("metrics endpoint: a bearer token of at least " +
                           std::to_string(shuffle::auth::kMinSecretLength) +
                           " bytes is required (metrics_token_file)");
  }
  std::string host;
  uint16_t port = 0;
  if (Status st = SplitHostPort(host_port, &host, &port); !st.ok()) return st;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* ai = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &ai) != 0 || !ai) {
    return InvalidArgument("metrics_listen = '" + host_port + "': '" + host +
                           "' is not a literal IP address");
  }
  const int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = fd >= 0 && ::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
                     ::listen(fd, 64) == 0;
  const int err = errno;
  ::freeaddrinfo(ai);
  if (!bound) {
    if (fd >= 0) ::close(fd);
    return InvalidArgument("metrics_listen = '" + host_port + "': cannot listen: " +
                           std::strerror(err) +
                           "; choose another port (--metrics-listen HOST:PORT, port 0 picks "
                           "one) or --metrics-listen \"\" to serve no metrics");
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  const uint16_t bound_port =
      ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                     : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  SetNonBlocking(fd);
  std::unique_ptr<HttpServer> s(
      new HttpServer(fd, bound_port, std::move(token), std::move(handlers)));
  if (::pipe2(s->wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return Status(StatusCode::kInternal, "metrics_listen: pipe failed");
  }
  s->thread_ = std::thread([p = s.get()] { p->Run(); });
  return s;
}

HttpServer::HttpServer(int listen_fd, uint16_t port, std::string token, HttpHandlers handlers)
    : listen_fd_(listen_fd),
      port_(port),
      token_(std::move(token)),
      handlers_(std::move(handlers)) {}

void HttpServer::Stop() {
  if (thread_.joinable()) {
    const char x = 'x';
    [[maybe_unused]] ssize_t n = ::write(wake_[1], &x, 1);
    thread_.join();
  }
}

HttpServer::~HttpServer() {
  Stop();
  for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

void HttpServer::Accept(std::vector<Client>& clients) {
  while (true) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (clients.size() >= kMaxClients) {
      stats_.rejected.fetch_add(1, std::memory_order_relaxed);
      ::close(fd);
      continue;
    }
    Client c;
    c.fd = fd;
    c.deadline = std::chrono::steady_clock::now() + kClientDeadline;
    clients.push_back(std::move(c));
  }
}

std::string HttpServer::Answer(const std::string& head) {
  const size_t line_end = head.find_first_of("\r\n");
  const std::string line = head.substr(0, line_end);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);
    return Plain(400, "Bad Request", "not an HTTP request\n");
  }
  const std::string method = line.substr(0, sp1);
  std::string path = line.substr(sp1 + 1, sp2 == std::string::npos ? sp2 : sp2 - sp1 - 1);
  if (const size_t q = path.find('?'); q != std::string::npos) path.resize(q);
  const bool head_only = method == "HEAD";
  const std::optional<std::string_view> bearer = BearerToken(head);
  if (!bearer || !shuffle::auth::SecretsMatch(token_, *bearer)) {
    // Nothing is said about the daemon, its paths or its methods before the token checks out.
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);
    return Plain(401, "Unauthorized",
                 "sluiced's metrics endpoint needs \"Authorization: Bearer <token>\", the token "
                 "in the daemon's metrics_token_file (default <state_dir>/metrics_token)\n",
                 "WWW-Authenticate: Bearer realm=\"sluiced\"\r\n");
  }
  if (method != "GET" && !head_only) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);
    return Plain(405, "Method Not Allowed", "only GET is served here\n", "Allow: GET, HEAD\r\n");
  }
  if (path == "/metrics") {
    stats_.requests.fetch_add(1, std::memory_order_relaxed);
    return Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                    handlers_.metrics ? handlers_.metrics() : "", !head_only);
  }
  if (path == "/healthz") {
    stats_.requests.fetch_add(1, std::memory_order_relaxed);
    const bool ok = !handlers_.healthy || handlers_.healthy();
    return ok ? Response(200, "OK", "text/plain; charset=utf-8", "ok\n", !head_only)
              : Response(503, "Service Unavailable", "text/plain; charset=utf-8",
                         "shutting down\n", !head_only);
  }
  stats_.rejected.fetch_add(1, std::memory_order_relaxed);
  return Plain(404, "Not Found", "sluiced serves GET /metrics and GET /healthz\n");
}

bool HttpServer::OnReadable(Client& c) {
  char buf[4096];
  while (!c.answered) {
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.in.append(buf, static_cast<size_t>(n));
    size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) end = c.in.find("\n\n");
    if (end != std::string::npos && end <= kMaxRequestHead) {
      c.out = Answer(c.in.substr(0, end));
      c.answered = true;
    } else if (c.in.size() > kMaxRequestHead) {
      stats_.rejected.fetch_add(1, std::memory_order_relaxed);
      c.out = Plain(431, "Request Header Fields Too Large",
                    "the request head exceeds 8 KiB\n");
      c.answered = true;
    }
  }
  c.in.clear();
  c.in.shrink_to_fit();
  return true;
}

bool HttpServer::OnWritable(Client& c) {
  while (c.written < c.out.size()) {
    const ssize_t n =
        ::send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
      return false;
    }
    c.written += static_cast<size_t>(n);
  }
  return false;
}

void HttpServer::Run() {
  std::vector<Client> clients;
  std::vector<pollfd> fds;
  while (true) {
    fds.clear();
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const Client& c : clients) {
      fds.push_back({c.fd, static_cast<short>(c.answered ? POLLOUT : POLLIN), 0});
    }
    ::poll(fds.data(), fds.size(), 200);
    if (fds[0].revents) break;
    if (fds[1].revents & POLLIN) Accept(clients);
    const auto now = std::chrono::steady_clock::now();
    std::vector<Client> alive;
    for (size_t i = 0; i < clients.size() && i + 2 < fds.size(); ++i) {
      Client& c = clients[i];
      const short ev = fds[i + 2].revents;
      bool keep = true;
      if (ev & (POLLERR | POLLNVAL)) keep = false;
      if (keep && !c.answered && (ev & (POLLIN | POLLHUP))) keep = OnReadable(c);
      if (keep && c.answered) keep = OnWritable(c);
      if (keep && now > c.deadline) {
        stats_.rejected.fetch_add(1, std::memory_order_relaxed);
        keep = false;
      }
      if (keep) {
        alive.push_back(std::move(c));
      } else {
        ::close(c.fd);
      }
    }
    // Clients accepted this round (beyond fds) stay as they are.
    for (size_t i = fds.size() - 2; i < clients.size(); ++i) alive.push_back(std::move(clients[i]));
    clients.swap(alive);
  }
  for (Client& c : clients) ::close(c.fd);
}

}  // namespace sluice::daemon
