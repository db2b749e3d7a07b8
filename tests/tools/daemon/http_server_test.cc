// The metrics endpoint (tools/daemon/http_server.h) and the bounded per-gate and per-partition
// metrics (tools/daemon/metrics.h), in-process: every answer is asserted byte for byte where it
// matters; a client without the bearer token gets 401 and nothing else; hostile clients get
// 431/405/404 or a close and the server keeps serving.
#include "tools/daemon/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "shuffle/auth.h"
#include "tools/daemon/daemon_test_util.h"
#include "tools/daemon/metrics.h"

namespace sluice::daemon {
namespace {

int Dial(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Sends `request` and returns everything read until the server closes.
std::string Exchange(uint16_t port, const std::string& request) {
  const int fd = Dial(port);
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

std::string StatusLine(const std::string& response) {
  return response.substr(0, response.find("\r\n"));
}

constexpr char kToken[] = "metrics-token-0123456789abcdef";
// "METHOD PATH HTTP/1.x" with the Authorization header carrying kToken, and the end of the head.
std::string Authorized(const std::string& request_line, const std::string& more_headers = "") {
  return request_line + "\r\nAuthorization: Bearer " + kToken + "\r\n" + more_headers + "\r\n";
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpHandlers h;
    h.metrics = [] { return std::string("# HELP sluice_x x\n# TYPE sluice_x gauge\nsluice_x 1\n"); };
    h.healthy = [this] { return healthy_.load(); };
    auto s = HttpServer::Start("127.0.0.1:0", kToken, std::move(h));
    ASSERT_TRUE(s.ok()) << s.status().message();
    server_ = std::move(*s);
  }
  std::atomic<bool> healthy_{true};
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpServerTest, ServesMetricsAndHealthz) {
  const std::string m =
      Exchange(server_->port(), Authorized("GET /metrics HTTP/1.1", "Host: x\r\n"));
  EXPECT_EQ(StatusLine(m), "HTTP/1.0 200 OK");
  EXPECT_NE(m.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos);
  EXPECT_TRUE(m.ends_with("\r\n\r\n# HELP sluice_x x\n# TYPE sluice_x gauge\nsluice_x 1\n")) << m;
  const std::string h = Exchange(server_->port(), Authorized("GET /healthz HTTP/1.0"));
  EXPECT_EQ(StatusLine(h), "HTTP/1.0 200 OK");
  EXPECT_TRUE(h.ends_with("\r\n\r\nok\n"));
  healthy_ = false;
  const std::string down = Exchange(server_->port(), Authorized("GET /healthz HTTP/1.0"));
  EXPECT_EQ(StatusLine(down), "HTTP/1.0 503 Service Unavailable");
  EXPECT_TRUE(down.ends_with("shutting down\n"));
  EXPECT_EQ(server_->stats().requests.load(), 3u);
  EXPECT_EQ(server_->stats().rejected.load(), 0u);
}

TEST_F(HttpServerTest, RefusesOtherMethodsPathsAndGarbage) {
  EXPECT_EQ(StatusLine(Exchange(server_->port(), Authorized("POST /metrics HTTP/1.1"))),
            "HTTP/1.0 405 Method Not Allowed");
  EXPECT_EQ(StatusLine(Exchange(server_->port(), Authorized("GET /admin HTTP/1.1"))),
            "HTTP/1.0 404 Not Found");
  EXPECT_EQ(StatusLine(Exchange(server_->port(), "garbage\r\n\r\n")), "HTTP/1.0 400 Bad Request");
  EXPECT_EQ(server_->stats().rejected.load(), 3u);
  EXPECT_EQ(server_->stats().requests.load(), 0u);
}

TEST_F(HttpServerTest, HeadOverEightKibIsRefused) {
  // Sent in full before the server answers: 9 KiB of header without an end.
  const std::string big = "GET /metrics HTTP/1.1\r\nX: " + std::string(9 * 1024, 'a');
  const std::string r = Exchange(server_->port(), big);
  EXPECT_TRUE(r.empty() || StatusLine(r) == "HTTP/1.0 431 Request Header Fields Too Large") << r;
  EXPECT_EQ(server_->stats().rejected.load(), 1u);
  EXPECT_EQ(StatusLine(Exchange(server_->port(), Authorized("GET /healthz HTTP/1.0"))),
            "HTTP/1.0 200 OK");
}

TEST_F(HttpServerTest, ClientsBeyondTheLimitAreClosedAndTheServerKeepsServing) {
  std::vector<int> idle;
  for (size_t i = 0; i < kMaxClients; ++i) idle.push_back(Dial(server_->port()));
  // The next one is accepted and closed at once: recv sees the end, not an answer.
  const int extra = Dial(server_->port());
  char c;
  EXPECT_EQ(::recv(extra, &c, 1, 0), 0);
  ::close(extra);
  for (int fd : idle) ::close(fd);
  // Once the idle ones are gone (closed, the server sees the end), it serves again.
  std::string r;
  for (int i = 0; i < 100 && StatusLine(r) != "HTTP/1.0 200 OK"; ++i) {
    r = Exchange(server_->port(), Authorized("GET /healthz HTTP/1.0"));
  }
  EXPECT_EQ(StatusLine(r), "HTTP/1.0 200 OK");
  EXPECT_GE(server_->stats().rejected.load(), 1u);
}

TEST_F(HttpServerTest, PortInUseNamesTheOption) {
  auto second = HttpServer::Start("127.0.0.1:" + std::to_string(server_->port()), kToken, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second.status().message().find("metrics_listen = '127.0.0.1:" +
                                           std::to_string(server_->port()) +
                                           "': cannot listen: Address already in use"),
            std::string::npos)
      << second.status().message();
  auto bad = HttpServer::Start("localhost:9470", kToken, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'localhost' is not a literal IP address"),
            std::string::npos);
  auto noport = HttpServer::Start("127.0.0.1", kToken, {});
  ASSERT_FALSE(noport.ok());
  EXPECT_NE(noport.status().message().find("no port"), std::string::npos);
}

// No request is served without the token: none, another one, one that only starts like it,
// another scheme, or the token in another header get 401 naming the header and where the
// token is, and the metrics body never. The header's name and scheme are case-insensitive.
TEST_F(HttpServerTest, EveryRequestNeedsTheBearerToken) {
  const std::string t = kToken;
  const std::vector<std::string> requests = {
           "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
           "GET /healthz HTTP/1.0\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong-token-0123456789\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nAuthorization: Bearer " + t.substr(0, t.size() - 1) +
               "\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nAuthorization: Bearer " + t + "x\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nAuthorization: Basic " + t + "\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nX-Authorization: Bearer " + t + "\r\n\r\n",
           "GET /metrics HTTP/1.1 Authorization: Bearer " + t + "\r\n\r\n",
           "POST /admin HTTP/1.1\r\n\r\n"};
  for (const std::string& req : requests) {
    const std::string r = Exchange(server_->port(), req);
    EXPECT_EQ(StatusLine(r), "HTTP/1.0 401 Unauthorized") << req;
    EXPECT_NE(r.find("WWW-Authenticate: Bearer realm=\"sluiced\"\r\n"), std::string::npos) << r;
    EXPECT_NE(r.find("metrics_token_file"), std::string::npos) << r;
    EXPECT_EQ(r.find("sluice_x"), std::string::npos) << r;
  }
  EXPECT_EQ(server_->stats().rejected.load(), 10u);
  EXPECT_EQ(server_->stats().requests.load(), 0u);
  const std::string ok = Exchange(
      server_->port(), "GET /metrics HTTP/1.1\r\nauthorization:   bearer " + t + " \r\n\r\n");
  EXPECT_EQ(StatusLine(ok), "HTTP/1.0 200 OK") << ok;
  // A server without a usable token is never started.
  for (const char* token : {"", "short"}) {
    auto s = HttpServer::Start("127.0.0.1:0", token, {});
    ASSERT_FALSE(s.ok()) << token;
    EXPECT_NE(s.status().message().find("metrics_token_file"), std::string::npos);
  }
}

// 40 gates and 40 partitions: 32 of each get their own series, the other 8 are summed in
// "_other", so the totals stay right and the scrape stays bounded.
TEST(JobBufferMetricsTest, BoundedSeriesWithTotals) {
  MetricsSnapshot m;
  m.node = "n";
  JobBufferMetrics jb;
  for (uint32_t i = 0; i < 40; ++i) {
    jb.gates.push_back({"big/c" + std::to_string(i), 2, 1, 3, 4});
    jb.partitions.push_back({"big/p" + std::to_string(i), 5, 6, 1000000000});
  }
  m.job_buffers.emplace_back("big", jb);
  const std::string text = RenderPrometheus(m);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("\nsluice_gate_exclusive_buffers{"), 33u);
  EXPECT_EQ(count("\nsluice_partition_backlog{"), 33u);
  EXPECT_NE(text.find("sluice_gate_exclusive_buffers{node=\"n\",job=\"big\",gate=\"big/c0\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("sluice_gate_floating_buffers{node=\"n\",job=\"_other\",gate=\"_other\"} 8\n"),
            std::string::npos);
  EXPECT_NE(text.find("sluice_partition_backpressure_seconds_total{node=\"n\",job=\"_other\","
                      "partition=\"_other\"} 8\n"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE sluice_partition_backpressure_seconds_total counter\n"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE sluice_pool_segments gauge\n"), std::string::npos);
  EXPECT_EQ(text.find("sluice_pool_segments_total"), std::string::npos);
}

// An in-process daemon serves /metrics and /healthz on metrics_listen and answers HTTP on its
// data port with a 400 counted apart from protocol errors; every segment is back afterwards.
TEST(DaemonMetricsEndpointTest, ServesWhileRunning) {
  auto d = testing::StartDaemon("", 16ull << 20, [](DaemonConfig& c) { c.metrics_listen = "127.0.0.1:0"; });
  ASSERT_NE(d, nullptr);
  const uint16_t mport = d->metrics_port();
  ASSERT_NE(mport, 0);
  // The token the daemon made in its state directory on first start (0600), and nothing
  // served without it.
  const std::string token_file = testing::Scratch().Path("state") + "/metrics_token";
  struct stat st{};
  ASSERT_EQ(::stat(token_file.c_str(), &st), 0) << token_file;
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto token = shuffle::auth::ReadSecretFile(token_file);
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  EXPECT_EQ(StatusLine(Exchange(mport, "GET /metrics HTTP/1.0\r\n\r\n")),
            "HTTP/1.0 401 Unauthorized");
  const std::string auth = "Authorization: Bearer " + *token + "\r\n";
  const std::string m = Exchange(mport, "GET /metrics HTTP/1.0\r\n" + auth + "\r\n");
  EXPECT_EQ(StatusLine(m), "HTTP/1.0 200 OK");
  EXPECT_NE(m.find("# TYPE sluice_data_port_http_requests_total counter\n"), std::string::npos);
  EXPECT_NE(m.find("# TYPE sluice_http_requests_total counter\n"), std::string::npos);
  EXPECT_EQ(StatusLine(Exchange(mport, "GET /healthz HTTP/1.0\r\n" + auth + "\r\n")),
            "HTTP/1.0 200 OK");
  // HTTP on the data port: 400 naming the metrics endpoint, counted apart.
  const std::string data = Exchange(d->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusLine(data), "HTTP/1.0 400 Bad Request");
  EXPECT_NE(data.find("GET /metrics, GET /healthz"), std::string::npos);
  const std::string after = d->Prometheus();
  EXPECT_NE(after.find("sluice_data_port_http_requests_total{node=\"" + d->node_name() +
                       "\",side=\"served\"} 1\n"),
            std::string::npos);
  EXPECT_NE(after.find("sluice_protocol_errors_total{node=\"" + d->node_name() +
                       "\",side=\"served\",reason=\"BadMagic\"} 0\n"),
            std::string::npos);
  const ShutdownReport report = d->Shutdown(std::chrono::milliseconds(0));
  EXPECT_EQ(report.leaked_segments, 0u);
  EXPECT_FALSE(d->serving());
}

// An address in use fails the start when asked for, and is a warning for sluiced's implicit
// default (several daemons on one host without the option still start).
TEST(DaemonMetricsEndpointTest, AddressInUseFailsUnlessItIsTheDefault) {
  auto first = testing::StartDaemon("", 16ull << 20,
                                    [](DaemonConfig& c) { c.metrics_listen = "127.0.0.1:0"; });
  ASSERT_NE(first, nullptr);
  const std::string taken = "127.0.0.1:" + std::to_string(first->metrics_port());
  DaemonConfig c;
  c.port = 0;
  c.network_memory = 16ull << 20;
  c.auth_secret_file = testing::TestSecretFile();
  c.state_dir = testing::Scratch().Path("state");  // its metrics token
  c.local_socket = "off";
  c.metrics_listen = taken;
  auto refused = Daemon::Start(c);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("metrics_listen = '" + taken + "'"),
            std::string::npos);
  c.metrics_listen_optional = true;
  auto lenient = Daemon::Start(c);
  ASSERT_TRUE(lenient.ok()) << lenient.status().message();
  EXPECT_EQ((*lenient)->metrics_port(), 0);
  EXPECT_EQ((*lenient)->Shutdown(std::chrono::milliseconds(0)).leaked_segments, 0u);
  EXPECT_EQ(first->Shutdown(std::chrono::milliseconds(0)).leaked_segments, 0u);
}

// metrics_token_file is checked as the cluster secret is: a file others may read, or one too
// short to be a token, is a start error naming the file (and the chmod to run); nothing listens.
TEST(DaemonMetricsEndpointTest, AMetricsTokenFileThatIsNotPrivateOrTooShortIsRefused) {
  const std::string open_file = testutil::WriteFileWithMode(
      testing::Scratch().Path("metrics_token_open"), "0123456789abcdef0123\n", 0644);
  const std::string short_file =
      testutil::WriteFileWithMode(testing::Scratch().Path("metrics_token_short"), "short\n", 0600);
  for (const auto& [file, says] : {std::pair{open_file, "chmod 600 " + open_file},
                                   std::pair{short_file, std::string("at least 16")}}) {
    DaemonConfig c;
    c.port = 0;
    c.network_memory = 16ull << 20;
    c.auth_secret_file = testing::TestSecretFile();
    c.state_dir = testing::Scratch().Path("state");
    c.local_socket = "off";
    c.metrics_listen = "127.0.0.1:0";
    c.metrics_token_file = file;
    auto d = Daemon::Start(c);
    ASSERT_FALSE(d.ok()) << file;
    EXPECT_NE(d.status().message().find("metrics token: "), std::string::npos)
        << d.status().ToString();
    EXPECT_NE(d.status().message().find(says), std::string::npos) << d.status().ToString();
  }
}

// Write-through counters (issue 15): the served transport's direct and partial writes and the
// server's notifications posted to the loop, as counters with their values; absent without a
// server or transport.
TEST(WriteThroughMetricsTest, DirectWritesAndPostedNotificationsAreRendered) {
  MetricsSnapshot m;
  m.node = "n";
  EXPECT_EQ(RenderPrometheus(m).find("sluice_direct_writes_total"), std::string::npos);
  transport::TransportMetrics served;
  served.direct_writes = 41;
  served.direct_partial_writes = 2;
  shuffle::ShuffleServerStats server;
  server.notifications_posted = 7;
  m.served = &served;
  m.server = &server;
  const std::string text = RenderPrometheus(m);
  EXPECT_NE(text.find("# TYPE sluice_direct_writes_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sluice_direct_writes_total{node=\"n\"} 41\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_direct_partial_writes_total{node=\"n\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("sluice_notifications_posted_total{node=\"n\"} 7\n"), std::string::npos);
}

// The IO loops' own writes (Connection::Flush of an idle connection): one counter per side,
// like the other transport counters.
TEST(WriteThroughMetricsTest, LoopDirectWritesAreRenderedPerSide) {
  MetricsSnapshot m;
  m.node = "n";
  transport::TransportMetrics served;
  transport::TransportMetrics opened;
  served.loop_direct_writes = 5;
  opened.loop_direct_writes = 9;
  m.served = &served;
  m.opened = &opened;
  const std::string text = RenderPrometheus(m);
  EXPECT_NE(text.find("# TYPE sluice_loop_direct_writes_total counter\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("sluice_loop_direct_writes_total{node=\"n\",side=\"served\"} 5\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sluice_loop_direct_writes_total{node=\"n\",side=\"opened\"} 9\n"),
            std::string::npos);
}

}  // namespace
}  // namespace sluice::daemon
