// The fixture of the transport's socket tests (transport_test.cc, direct_read_test.cc): two
// event loops, pools for each side, and the leak check every test ends with (ExpectClean):
// every segment back in its NetworkBufferPool, every connection closed, servers and clients
// stopped, loops stopped with no handle left open, and the process's file descriptors back to
// where they started. Misbehaving peers are raw blocking sockets driven by the test.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "testutil/pools.h"
#include "transport/connection.h"
#include "transport/event_loop.h"
#include "transport/tcp.h"
#include "transport/transport_test_util.h"

namespace sluice::transport {

using namespace std::chrono_literals;
using buffer::NetworkBufferPool;
using testutil::Bytes;
using testutil::Clock;
using testutil::EncodeFrame;
using testutil::Eventually;
using testutil::HandlerOptions;
using testutil::kControlType;
using testutil::kDataType;
using testutil::kSegmentSize;
using testutil::RawSocket;
using testutil::Recorder;
using testutil::TestHandler;

using ConnectResult = Result<std::shared_ptr<Connection>>;

inline std::shared_ptr<NetworkBufferPool> MakePool(uint32_t segments) {
  return ::sluice::testutil::MakeNetworkBufferPool(segments, kSegmentSize);
}

inline TransportOptions BaseOptions() {
  TransportOptions o;
  o.limits = testutil::TestLimits();
  o.heartbeat_interval = 0ms;
  o.idle_timeout = 0ms;
  o.handshake_timeout = 10s;
  return o;
}

inline HandlerFactory Factory(std::shared_ptr<Recorder> rec, HandlerOptions opts) {
  return [rec, opts](Connection& c) -> std::unique_ptr<ConnectionHandler> {
    return std::make_unique<TestHandler>(c, rec, opts);
  };
}

// Runs fn on the loop thread and waits for it.
inline void RunOnLoop(EventLoop* loop, std::function<void()> fn) {
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  ASSERT_TRUE(loop->Post([fn = std::move(fn), done] {
    fn();
    done->set_value();
  }));
  f.wait();
}

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // libuv opens a process-wide pipe with the first loop; count descriptors after it.
    static const bool warmed_up = [] {
      std::move(EventLoop::Start("warm-up")).value()->Stop();
      return true;
    }();
    (void)warmed_up;
    fds_at_start_ = testutil::CountOpenFds();
    server_loop_ = std::move(EventLoop::Start("test-server")).value();
    client_loop_ = std::move(EventLoop::Start("test-client")).value();
    recv_pool_ = MakePool(32);
    send_pool_ = MakePool(256);
  }

  void TearDown() override {
    // A test that failed before its own ExpectClean() may have destroyed the servers and
    // clients it tracked (locals of the test body): checking them would read freed memory.
    if (!cleaned_ && !HasFailure()) ExpectClean();
  }

  std::unique_ptr<TcpServer> StartServer(ServerOptions options, std::shared_ptr<Recorder> rec,
                                         HandlerOptions handler) {
    auto s = TcpServer::Start(server_loop_.get(), options, Factory(std::move(rec), handler));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return std::move(s).value();
  }

  // A client whose handler checks every frame it receives against the test pattern
  // (Recorder::mismatches), connected to `port`. The fixture owns it (and checks it for
  // leaks); null, with a test failure, when it could not connect.
  TcpClient* ConnectVerifyingClient(std::shared_ptr<Recorder> rec, uint16_t port) {
    HandlerOptions h;
    h.receive_pool = recv_pool_.get();
    h.verify = true;
    owned_clients_.push_back(
        std::make_unique<TcpClient>(client_loop_.get(), BaseOptions(), Factory(std::move(rec), h)));
    TcpClient* client = Track(owned_clients_.back().get());
    const ConnectResult connected = Connect(*client, port);
    EXPECT_TRUE(connected.ok()) << connected.status().ToString();
    return connected.ok() ? client : nullptr;
  }

  // A raw peer connects to `server` (streaming to it), reads something, waits for `ready`,
  // then resets: the connection closes with IoError, or Closed when a failed write consumed
  // the reset first and the read saw EOF, and the reason names the peer.
  void ResetWhileStreamingClosesNamingThePeer(TcpServer& server, Recorder& rec,
                                              const std::function<bool()>& ready) {
    std::string peer;
    {
      RawSocket raw(server.port());
      ASSERT_TRUE(raw.connected());
      peer = raw.LocalName();
      ASSERT_TRUE(Eventually([&] { return raw.Drain() > 0; }));
      ASSERT_TRUE(Eventually(ready));
      raw.Reset();
    }
    ASSERT_TRUE(rec.WaitFor([&] { return !rec.closed.empty(); }));
    std::lock_guard lock(rec.mu);
    const StatusCode code = rec.closed[0].code();
    EXPECT_TRUE(code == StatusCode::kIoError || code == StatusCode::kClosed)
        << rec.closed[0].ToString();
    EXPECT_NE(rec.closed[0].message().find(peer), std::string::npos) << rec.closed[0].ToString();
  }

  ServerOptions DefaultServerOptions() {
    ServerOptions o;
    o.transport = BaseOptions();
    return o;
  }

  static ConnectResult Connect(TcpClient& client, uint16_t port) {
    auto p = std::make_shared<std::promise<ConnectResult>>();
    auto f = p->get_future();
    client.GetOrConnect({"127.0.0.1", port}, [p](ConnectResult r) { p->set_value(std::move(r)); });
    return f.get();
  }

  // The leak check every test ends with.
  void ExpectClean() {
    cleaned_ = true;
    for (TcpServer* s : servers_) {
      s->Stop();
      EXPECT_EQ(s->connection_count(), 0u);
      EXPECT_EQ(s->metrics()->connections_opened.load(), s->metrics()->connections_closed.load());
    }
    for (TcpClient* c : clients_) {
      c->Stop();
      EXPECT_EQ(c->connection_count(), 0u);
      EXPECT_EQ(c->metrics()->connections_opened.load(), c->metrics()->connections_closed.load());
    }
    EXPECT_EQ(recv_pool_->available_segments(), recv_pool_->total_segments());
    EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
    server_loop_->Stop();
    client_loop_->Stop();
    EXPECT_EQ(server_loop_->open_handles_after_stop(), 0);
    EXPECT_EQ(client_loop_->open_handles_after_stop(), 0);
    EXPECT_EQ(testutil::CountOpenFds(), fds_at_start_) << "file descriptors leaked";
  }

  // Registers a server/client for the leak check (the test keeps ownership).
  TcpServer* Track(TcpServer* s) {
    servers_.push_back(s);
    return s;
  }
  TcpClient* Track(TcpClient* c) {
    clients_.push_back(c);
    return c;
  }

  // A server connection to a raw peer that does not read yet: small socket buffers (no
  // autotuning), so a couple of MiB sent fill them and writes would block.
  struct StalledPeer {
    std::unique_ptr<TcpServer> server;
    std::unique_ptr<RawSocket> raw;
    std::shared_ptr<Connection> conn;  // null when the setup failed
  };
  StalledPeer StartStalledPeer(
      size_t loop_direct_max_bytes = TransportOptions{}.loop_direct_max_bytes);

  int fds_at_start_ = 0;
  bool cleaned_ = false;
  std::unique_ptr<EventLoop> server_loop_;
  std::unique_ptr<EventLoop> client_loop_;
  std::shared_ptr<NetworkBufferPool> recv_pool_;
  std::shared_ptr<NetworkBufferPool> send_pool_;
  std::vector<std::unique_ptr<TcpClient>> owned_clients_;  // before the loops go
  std::vector<TcpServer*> servers_;
  std::vector<TcpClient*> clients_;
};

}  // namespace sluice::transport
