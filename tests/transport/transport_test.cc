// Tests for the transport over real loopback sockets: EventLoop, Connection, TcpServer and
// TcpClient. Misbehaving peers are raw blocking sockets driven by the test. Every test ends with
// the leak check (ExpectClean): every segment back in its NetworkBufferPool, every connection
// closed, servers and clients stopped, loops stopped with no handle left open, and the process's
// file descriptors back to where they started.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <atomic>
#include <functional>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "testutil/pools.h"
#include "transport/connection.h"
#include "transport/event_loop.h"
#include "transport/log.h"
#include "transport/tcp.h"
#include "transport/transport_fixture.h"
#include "transport/transport_test_util.h"

namespace sluice::transport {
namespace {

// ---------------------------------------------------------------------------------------------
// Data path

TEST_F(TransportTest, ManyFramesBothDirectionsInOrderByteForByte) {
  constexpr uint32_t kFrames = 20000;
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  // Separate pools for each side's sends so that senders never starve receivers.
  auto server_send_pool = MakePool(256);

  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  sh.verify = true;
  sh.send_pool = server_send_pool.get();
  sh.send_count = kFrames;
  sh.send_stream = 2;
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());

  HandlerOptions ch;
  ch.receive_pool = recv_pool_.get();
  ch.verify = true;
  ch.send_pool = send_pool_.get();
  ch.send_count = kFrames;
  ch.send_stream = 1;
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
  Track(&client);
  auto conn = Connect(client, server->port());
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();

  auto all_arrived = [](Recorder& r) {
    return [&r] { return r.frames == kFrames || r.mismatches > 0 || !r.closed.empty(); };
  };
  ASSERT_TRUE(server_rec->WaitFor(all_arrived(*server_rec), 120s));
  ASSERT_TRUE(client_rec->WaitFor(all_arrived(*client_rec), 120s));
  for (Recorder* r : {server_rec.get(), client_rec.get()}) {
    std::lock_guard lock(r->mu);
    EXPECT_EQ(r->mismatches, 0u) << r->first_mismatch;
    EXPECT_EQ(r->frames, kFrames);
    EXPECT_TRUE(r->closed.empty()) << r->closed.front().ToString();
    EXPECT_TRUE(r->send_done);
  }
  // Every pass over the socket ends with OnReadPassEnd, after the frames it delivered: the
  // last frame was followed by one. (Passes that read many frames make fewer passes than
  // frames on a busy stream, but that depends on timing, so it is not asserted.)
  for (Recorder* r : {server_rec.get(), client_rec.get()}) {
    EXPECT_TRUE(r->WaitFor([r] { return r->frames_at_pass_end == kFrames; }, 30s));
    std::lock_guard lock(r->mu);
    EXPECT_GT(r->read_passes, 0u);
  }
  // The recorder counts a frame at OnFrame; the decoder once its payload is complete.
  EXPECT_TRUE(Eventually([&] {
    uint64_t decoded = 0;
    RunOnLoop(client_loop_.get(), [&] { decoded = conn.value()->decoder().frames_decoded(); });
    return decoded == kFrames;
  }));
  // A frame written by a loop's own sendmsg is counted after the call returns: a task run on
  // each loop starts after those counts.
  RunOnLoop(server_loop_.get(), [] {});
  RunOnLoop(client_loop_.get(), [] {});
  for (const auto* m : {server->metrics().get(), client.metrics().get()}) {
    EXPECT_EQ(m->frames_in.load(), kFrames);
    EXPECT_EQ(m->frames_out.load(), kFrames);
    EXPECT_GT(m->frames_out.load(), m->writes.load()) << "no gathered writes";
    EXPECT_GT(m->payload_direct_bytes.load(), 0u) << "no zero-copy payload reads";
    EXPECT_EQ(m->protocol_errors_total(), 0u);
  }
  // bytes_out counts a write when its callback runs, which may come after the peer read it.
  EXPECT_TRUE(Eventually([&] {
    return server->metrics()->bytes_in.load() == client.metrics()->bytes_out.load() &&
           client.metrics()->bytes_in.load() == server->metrics()->bytes_out.load();
  }));
  EXPECT_EQ(server->metrics()->bytes_in.load(), client.metrics()->bytes_out.load());
  EXPECT_EQ(client.metrics()->bytes_in.load(), server->metrics()->bytes_out.load());
  conn = Status(StatusCode::kCancelled, "released");
  ExpectClean();
  EXPECT_EQ(server_send_pool->available_segments(), server_send_pool->total_segments());
}

// The smallest staging reads (one header at a time) still decode a mixed stream byte for byte.
TEST_F(TransportTest, TinyStagingReadsDecodeByteForByte) {
  constexpr uint32_t kFrames = 1500;
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.staging_read_bytes = 1;  // clamped to the 12-byte header
  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  sh.verify = true;
  auto server = StartServer(so, server_rec, sh);
  Track(server.get());
  HandlerOptions ch;
  ch.send_pool = send_pool_.get();
  ch.send_count = kFrames;
  ch.send_stream = 4;
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
  Track(&client);
  ASSERT_TRUE(Connect(client, server->port()).ok());
  ASSERT_TRUE(server_rec->WaitFor(
      [&] { return server_rec->frames == kFrames || server_rec->mismatches > 0; }, 120s));
  {
    std::lock_guard lock(server_rec->mu);
    EXPECT_EQ(server_rec->mismatches, 0u) << server_rec->first_mismatch;
  }
  EXPECT_GT(server->metrics()->payload_direct_bytes.load(), 0u);
  ExpectClean();
}

struct HandlerCloseCase {
  const char* name;
  bool in_payload;
  bool after_flush;
};

// A handler that closes its connection from inside OnFrame or OnPayload, while one read holds
// many more frames: nothing reaches it after the close, OnClosed comes once, no Buffer leaks.
TEST_F(TransportTest, HandlerClosingInsideCallbacksStopsDelivery) {
  const HandlerCloseCase cases[] = {{"Close in OnFrame", false, false},
                                    {"Close in OnPayload", true, false},
                                    {"CloseAfterFlush in OnFrame", false, true},
                                    {"CloseAfterFlush in OnPayload", true, true}};
  for (const HandlerCloseCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto server_rec = std::make_shared<Recorder>();
    auto client_rec = std::make_shared<Recorder>();
    HandlerOptions sh;
    sh.receive_pool = recv_pool_.get();
    sh.close_after_frames = 50;
    sh.close_in_payload = c.in_payload;
    sh.close_after_flush = c.after_flush;
    auto server = StartServer(DefaultServerOptions(), server_rec, sh);
    HandlerOptions ch;
    ch.send_pool = send_pool_.get();
    ch.send_count = 1000000;
    ch.send_stream = 5;
    TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
    ASSERT_TRUE(Connect(client, server->port()).ok());
    ASSERT_TRUE(server_rec->WaitFor([&] { return !server_rec->closed.empty(); }));
    ASSERT_TRUE(client_rec->WaitFor([&] { return !client_rec->closed.empty(); }));
    std::this_thread::sleep_for(20ms);  // anything late would show up here
    {
      std::lock_guard lock(server_rec->mu);
      EXPECT_EQ(server_rec->closed.size(), 1u);
      EXPECT_EQ(server_rec->closed[0].code(), StatusCode::kClosed)
          << server_rec->closed[0].ToString();
      if (c.in_payload) {
        EXPECT_EQ(server_rec->data_frames, 50u);
      } else {
        EXPECT_EQ(server_rec->frames, 50u);
      }
    }
    if (c.after_flush) {
      std::lock_guard lock(client_rec->mu);
      EXPECT_EQ(client_rec->control_frames, 1u) << "the goodbye frame was not flushed";
    }
    client.Stop();
    server->Stop();
    EXPECT_EQ(recv_pool_->available_segments(), recv_pool_->total_segments());
    EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  }
  ExpectClean();
}

// A peer that sends without pause while the server says goodbye (CloseAfterFlush): the server
// ends its stream after the goodbye and drops what still comes until the peer closes. Closing
// at once, with the peer's frames unread, would reset the connection: the peer's next send
// fails, and its read may end in the reset instead of the goodbye.
class FloodingPeer {
 public:
  explicit FloodingPeer(RawSocket& raw) : raw_(raw), thread_([this] { Run(); }) {}
  ~FloodingPeer() { Stop(); }
  // Stops sending; returns the errno of the first failed send (0: none failed).
  int Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return failed_errno_;
  }
  uint64_t frames() const { return frames_; }

 private:
  void Run() {
    const Bytes frame = EncodeFrame(kControlType, testutil::MetadataFor(5, 0, 64));
    size_t off = 0;
    while (!stop_) {
      const ssize_t n =
          ::send(raw_.fd(), frame.data() + off, frame.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{raw_.fd(), POLLOUT, 0};
        ::poll(&p, 1, 10);
        continue;
      }
      if (n <= 0) {
        failed_errno_ = errno;
        return;
      }
      off += static_cast<size_t>(n);
      if (off == frame.size()) {
        off = 0;
        ++frames_;
      }
    }
  }
  RawSocket& raw_;
  std::atomic<bool> stop_{false};
  std::atomic<int> failed_errno_{0};
  std::atomic<uint64_t> frames_{0};
  std::thread thread_;
};

TEST_F(TransportTest, CloseAfterFlushLingersUntilAPeerStillSendingHasReadTheGoodbye) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.close_after_frames = 1000;  // the server reads a while, then says goodbye mid-flood
  h.close_after_flush = true;
  ServerOptions o = DefaultServerOptions();
  o.transport.close_flush_timeout = 30s;  // a slow test host must not hit it: the peer ends
  auto server = StartServer(o, rec, h);
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  FloodingPeer flood(raw);
  const auto goodbye = raw.ReadFrame(5s);
  ASSERT_TRUE(goodbye.has_value()) << "no goodbye frame";
  EXPECT_EQ(goodbye->header.type, kControlType);
  EXPECT_EQ(goodbye->metadata, testutil::MetadataFor(99, 0, 8));
  // The server ended its stream after the goodbye, and still takes what the peer sends.
  uint8_t b;
  EXPECT_EQ(::recv(raw.fd(), &b, 1, 0), 0) << "the server's stream did not end cleanly: "
                                            << std::strerror(errno);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(flood.Stop(), 0) << "a send failed while the server lingered";
  EXPECT_GT(flood.frames(), 1000u);
  {
    std::lock_guard lock(rec->mu);
    EXPECT_TRUE(rec->closed.empty()) << "closed before the peer ended its stream";
  }
  ::shutdown(raw.fd(), SHUT_WR);  // the peer's end lets the server finish its close
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->closed[0].code(), StatusCode::kClosed) << rec->closed[0].ToString();
    EXPECT_EQ(rec->frames, 1000u) << "frames after the goodbye reached the handler";
  }
  raw.Close();
  ExpectClean();
}

TEST_F(TransportTest, APeerThatNeverEndsItsStreamIsClosedAtTheCloseFlushTimeout) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.close_after_frames = 1;
  h.close_after_flush = true;
  ServerOptions o = DefaultServerOptions();
  o.transport.close_flush_timeout = 200ms;
  auto server = StartServer(o, rec, h);
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  FloodingPeer flood(raw);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  // Bounded by the timeout (plus a tick), not by the peer: it is still sending.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->closed[0].code(), StatusCode::kClosed) << rec->closed[0].ToString();
  }
  flood.Stop();
  raw.Close();
  ExpectClean();
}

// An HTTP client on the data port gets its 400 even when its request is longer than one read
// (here a 4 MiB body): the answer goes out as a last frame, and the connection lingers instead
// of resetting the client mid-send.
TEST_F(TransportTest, AnHttpRequestWithALongBodyGetsTheWholeAnswerAndACleanEnd) {
  auto rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), rec, HandlerOptions{});
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  std::string request = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n";
  request.append(4u << 20, 'x');
  EXPECT_TRUE(raw.Send(Bytes(request.begin(), request.end()))) << std::strerror(errno);
  ::shutdown(raw.fd(), SHUT_WR);
  bool ended = false;
  const Bytes answer = raw.ReadUntilClosed(5s, &ended);
  const std::string text(answer.begin(), answer.end());
  EXPECT_EQ(text.substr(0, 25), "HTTP/1.0 400 Bad Request\r") << text;
  EXPECT_NE(text.find("metrics_listen"), std::string::npos) << text;
  uint8_t b;
  EXPECT_EQ(::recv(raw.fd(), &b, 1, 0), 0) << "not a clean end: " << std::strerror(errno);
  EXPECT_TRUE(ended);
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(server->metrics()->http_requests.load(), 1u);
  raw.Close();
  ExpectClean();
}

TEST_F(TransportTest, CloseAfterFlushDeliversQueuedFrames) {
  constexpr uint32_t kFrames = 300;
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());
  auto client = ConnectVerifyingClient(client_rec, server->port());
  ASSERT_TRUE(client);
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 1; }));
  // The server counts the connection before its handler's recorder has it: wait for both.
  ASSERT_TRUE(Eventually([&] { return server_rec->connection() != nullptr; }));
  std::shared_ptr<Connection> sc = server_rec->connection();
  ASSERT_NE(sc, nullptr);
  RunOnLoop(server_loop_.get(), [&] {
    for (uint32_t i = 0; i < kFrames; ++i) {
      const auto spec = testutil::SpecFor(0, i);
      buffer::Buffer payload;
      if (spec.type == kDataType) {
        payload =
            buffer::Buffer::Wrap(send_pool_->TryRequestSegment(), send_pool_->direct_recycler());
        testutil::FillPattern(0, i, 0xC3, payload.data(), spec.payload_size);
        payload.SetSize(spec.payload_size);
      }
      sc->Send(OutFrame::Make(spec.type, testutil::MetadataFor(0, i, spec.metadata_size),
                              std::move(payload)));
    }
    sc->CloseAfterFlush(ClosedError("test closes after flush"));
    // Frames sent after CloseAfterFlush are dropped (and their Buffers released).
    sc->Send(OutFrame::Make(
        kDataType, testutil::MetadataFor(0, kFrames, 8),
        buffer::Buffer::Wrap(send_pool_->TryRequestSegment(), send_pool_->direct_recycler())));
  });
  ASSERT_TRUE(client_rec->WaitFor([&] { return !client_rec->closed.empty(); }));
  {
    std::lock_guard lock(client_rec->mu);
    EXPECT_EQ(client_rec->frames, kFrames);
    EXPECT_EQ(client_rec->mismatches, 0u) << client_rec->first_mismatch;
  }
  ASSERT_TRUE(server_rec->WaitFor([&] { return !server_rec->closed.empty(); }));
  EXPECT_EQ(server_rec->closed[0].code(), StatusCode::kClosed);
  sc.reset();
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// Faults

TEST_F(TransportTest, PeerClosingMidFrameIsTruncatedFrameAndLeaksNoBuffer) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.receive_pool = recv_pool_.get();
  auto server = StartServer(DefaultServerOptions(), rec, h);
  Track(server.get());
  {
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.connected());
    const Bytes meta = testutil::MetadataFor(9, 0, 8);
    Bytes frame = EncodeFrame(kDataType, meta, Bytes(kSegmentSize, 0xAB));
    frame.resize(kFrameHeaderSize + meta.size() + kSegmentSize / 2);  // half the payload
    ASSERT_TRUE(raw.Send(frame));
    // The server holds a Buffer for the partial payload ...
    ASSERT_TRUE(Eventually(
        [&] { return recv_pool_->available_segments() == recv_pool_->total_segments() - 1; }));
    raw.Close();  // ... when the peer goes away mid-frame.
  }
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(server->metrics()->protocol_errors_of(FrameError::kTruncatedFrame), 1u);
  EXPECT_EQ(server->metrics()->protocol_errors_total(), 1u);
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->closed[0].code(), StatusCode::kProtocolError) << rec->closed[0].ToString();
    EXPECT_NE(rec->closed[0].message().find("TruncatedFrame"), std::string::npos);
  }
  EXPECT_EQ(recv_pool_->available_segments(), recv_pool_->total_segments());
  ExpectClean();
}

TEST_F(TransportTest, ConnectionResetIsReportedWithThePeerName) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.receive_pool = recv_pool_.get();
  auto server = StartServer(DefaultServerOptions(), rec, h);
  Track(server.get());
  std::string peer;
  {
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.connected());
    peer = raw.LocalName();
    ASSERT_TRUE(raw.Send(EncodeFrame(kControlType, testutil::MetadataFor(3, 0, 8))));
    ASSERT_TRUE(rec->WaitFor([&] { return rec->control_frames == 1; }));
    raw.Reset();
  }
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->closed[0].code(), StatusCode::kIoError) << rec->closed[0].ToString();
    EXPECT_NE(rec->closed[0].message().find(peer), std::string::npos) << rec->closed[0].ToString();
  }
  ExpectClean();
}

// The server is streaming to the peer when it resets: the failed write must not kill the
// process (SIGPIPE) and must release every queued Buffer.
TEST_F(TransportTest, ResetWhileServerStreamsReleasesEverything) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.receive_pool = recv_pool_.get();
  h.send_pool = send_pool_.get();
  h.send_count = 1000000;  // more than the peer will ever read
  h.send_window = 2u << 20;
  auto server = StartServer(DefaultServerOptions(), rec, h);
  Track(server.get());
  ResetWhileStreamingClosesNamingThePeer(*server, *rec, [] { return true; });
  EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  ExpectClean();
}

// Writing to a connection the peer has reset: the first write fails with ECONNRESET, any
// further write in the same flush with EPIPE, which raises SIGPIPE. The transport must turn that
// into an error value, not let the signal kill the process.
TEST_F(TransportTest, WritesToAResetPeerDoNotRaiseSigpipe) {
  uint16_t lport = 0;
  const int lfd = ::sluice::testutil::ListenOnLoopback(4, &lport);
  ASSERT_GE(lfd, 0);
  auto rec = std::make_shared<Recorder>();
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(rec, HandlerOptions{}));
  Track(&client);
  auto conn = Connect(client, lport);
  ASSERT_TRUE(conn.ok());
  const int peer = ::accept(lfd, nullptr, nullptr);
  ASSERT_GE(peer, 0);
  std::shared_ptr<Connection> c = conn.value();
  // All on the loop thread, so the loop cannot notice the reset before the writes.
  RunOnLoop(client_loop_.get(), [&] {
    linger l{1, 0};
    ::setsockopt(peer, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    ::close(peer);
    std::this_thread::sleep_for(20ms);
    for (int i = 0; i < 1000; ++i) {
      c->Send(OutFrame::Make(kControlType, testutil::MetadataFor(1, i, 8)));
    }
    c->Flush();  // several uv_writes: 1000 frames > max_frames_per_write
  });
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(rec->closed[0].code(), StatusCode::kIoError) << rec->closed[0].ToString();
  c.reset();
  conn = Status(StatusCode::kCancelled, "released");
  ::close(lfd);
  ExpectClean();
}

struct GarbageCase {
  const char* name;
  Bytes bytes;
  FrameError reason;
};

TEST_F(TransportTest, GarbageClosesOnlyThatConnectionAfterTheLastFrame) {
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());
  HandlerOptions ch;
  ch.receive_pool = recv_pool_.get();
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
  Track(&client);
  auto good = Connect(client, server->port());
  ASSERT_TRUE(good.ok());
  // The server counts a connection before its handler (which tells the recorder) exists.
  std::shared_ptr<Connection> good_server_side;
  ASSERT_TRUE(
      Eventually([&] { return (good_server_side = server_rec->connection(0)) != nullptr; }));
  ASSERT_EQ(server->connection_count(), 1u);

  Bytes bad_magic = testutil::RawHeader(20, 0xDEADBEEF, 1, kControlType, 8);
  bad_magic.resize(20, 0);
  const std::vector<GarbageCase> cases = {
      {"bad magic", bad_magic, FrameError::kBadMagic},
      {"unknown type", testutil::RawHeader(12, kMagic, 1, 99, 0), FrameError::kUnknownType},
      {"too long",
       testutil::RawHeader(static_cast<uint32_t>(MaxFrameLength(kSegmentSize) + 1), kMagic, 1,
                           kDataType, 0),
       FrameError::kFrameTooLong},
  };
  // One log line per refused connection names the peer and the reason.
  auto lines = std::make_shared<std::vector<std::string>>();
  auto lines_mu = std::make_shared<std::mutex>();
  SetLogSink([lines, lines_mu](LogLevel, std::string_view m) {
    std::lock_guard lock(*lines_mu);
    lines->emplace_back(m);
  });
  uint32_t round = 0;
  for (const GarbageCase& c : cases) {
    SCOPED_TRACE(c.name);
    RawSocket raw(server->port());
    ASSERT_TRUE(raw.connected());
    ASSERT_TRUE(raw.Send(c.bytes));
    bool eof = false;
    const Bytes got = raw.ReadUntilClosed(10s, &eof);
    EXPECT_TRUE(eof);
    // Exactly one frame came back before the close: the handler's last frame.
    const std::string text = "error:" + std::string(FrameErrorName(c.reason));
    const Bytes expect = EncodeFrame(kControlType, Bytes(text.begin(), text.end()));
    EXPECT_EQ(got, expect);
    EXPECT_EQ(server->metrics()->protocol_errors_of(c.reason), 1u);
    ASSERT_TRUE(server_rec->WaitFor([&] { return server_rec->closed.size() == round + 1; }));
    {
      std::lock_guard lock(server_rec->mu);
      EXPECT_EQ(server_rec->protocol_errors.back(), c.reason);
      EXPECT_EQ(server_rec->closed.back().code(), StatusCode::kProtocolError);
      EXPECT_NE(server_rec->closed.back().message().find(raw.LocalName()), std::string::npos)
          << server_rec->closed.back().ToString();
    }

    {
      std::lock_guard lock(*lines_mu);
      ASSERT_EQ(lines->size(), round + 1u);
      EXPECT_NE(lines->back().find(raw.LocalName()), std::string::npos) << lines->back();
      EXPECT_NE(lines->back().find(FrameErrorName(c.reason)), std::string::npos) << lines->back();
    }
    // The well-behaved connection still works, both ways.
    RunOnLoop(client_loop_.get(), [&] {
      good.value()->Send(OutFrame::Make(kControlType, testutil::MetadataFor(5, round, 8)));
    });
    ASSERT_TRUE(server_rec->WaitFor([&] { return server_rec->control_frames == round + 1; }));
    RunOnLoop(server_loop_.get(), [&] {
      good_server_side->Send(OutFrame::Make(kControlType, testutil::MetadataFor(6, round, 8)));
    });
    ASSERT_TRUE(client_rec->WaitFor([&] { return client_rec->control_frames == round + 1; }));
    ++round;
  }
  SetLogSink(nullptr);
  EXPECT_EQ(server->metrics()->protocol_errors_total(), cases.size());
  EXPECT_EQ(server->connection_count(), 1u);
  EXPECT_EQ(client_rec->closed_count(), 0u);
  good = Status(StatusCode::kCancelled, "released");
  good_server_side.reset();
  ExpectClean();
}

TEST_F(TransportTest, NoBufferForPayloadClosesAndCounts) {
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  // The receiver's pool is exhausted: the sender broke its credit.
  auto tiny = MakePool(2);
  std::vector<buffer::Buffer> held;
  while (auto* seg = tiny->TryRequestSegment())
    held.push_back(buffer::Buffer::Wrap(seg, tiny->direct_recycler()));
  HandlerOptions sh;
  sh.receive_pool = tiny.get();
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());
  HandlerOptions ch;
  ch.receive_pool = recv_pool_.get();
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
  Track(&client);
  auto conn = Connect(client, server->port());
  ASSERT_TRUE(conn.ok());
  RunOnLoop(client_loop_.get(), [&] {
    buffer::Buffer payload =
        buffer::Buffer::Wrap(send_pool_->TryRequestSegment(), send_pool_->direct_recycler());
    payload.SetSize(1000);
    conn.value()->Send(
        OutFrame::Make(kDataType, testutil::MetadataFor(1, 0, 8), std::move(payload)));
  });
  ASSERT_TRUE(server_rec->WaitFor([&] { return !server_rec->closed.empty(); }));
  ASSERT_TRUE(client_rec->WaitFor([&] { return !client_rec->closed.empty(); }));
  EXPECT_EQ(server->metrics()->protocol_errors_of(FrameError::kNoBufferForPayload), 1u);
  EXPECT_EQ(server_rec->closed[0].code(), StatusCode::kProtocolError);
  // The client got the server's last frame before the close.
  EXPECT_EQ(client_rec->control_frames, 1u);
  EXPECT_EQ(client.connection_count(), 0u);
  held.clear();
  EXPECT_EQ(tiny->available_segments(), tiny->total_segments());
  conn = Status(StatusCode::kCancelled, "released");
  ExpectClean();
}

TEST_F(TransportTest, ThousandConnectCloseCyclesLeakNoDescriptors) {
  constexpr int kCycles = 1000;
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), server_rec, HandlerOptions{});
  Track(server.get());
  TcpClient client(client_loop_.get(), BaseOptions(), Factory(client_rec, HandlerOptions{}));
  Track(&client);
  // libuv opens a reserve descriptor per loop with its first stream: count after one cycle.
  int fds_before = 0;
  for (int i = 0; i < kCycles; ++i) {
    if (i == 1) fds_before = testutil::CountOpenFds();
    auto conn = Connect(client, server->port());
    ASSERT_TRUE(conn.ok()) << conn.status().ToString();
    std::shared_ptr<Connection> c = std::move(conn).value();
    // Alternate which side closes.
    if (i % 2 == 0) {
      RunOnLoop(client_loop_.get(), [c] { c->Close(ClosedError("cycle")); });
    } else {
      ASSERT_TRUE(Eventually([&] { return server->connection_count() == 1; }));
      server->ForEachConnection([](Connection& sc) { sc.Close(ClosedError("cycle")); });
    }
    c.reset();
    ASSERT_TRUE(server_rec->WaitFor([&] { return server_rec->closed.size() == size_t(i + 1); }));
    ASSERT_TRUE(client_rec->WaitFor([&] { return client_rec->closed.size() == size_t(i + 1); }));
  }
  ASSERT_TRUE(Eventually([&] { return client.connection_count() == 0; }));
  EXPECT_EQ(server->connection_count(), 0u);
  EXPECT_EQ(server->metrics()->connections_opened.load(), uint64_t{kCycles});
  EXPECT_EQ(client.metrics()->connections_opened.load(), uint64_t{kCycles});
  EXPECT_EQ(testutil::CountOpenFds(), fds_before);
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// Liveness

TEST_F(TransportTest, HandshakeDeadlineClosesUnestablishedConnection) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.handshake_timeout = 100ms;
  HandlerOptions h;
  h.establish = false;
  auto server = StartServer(so, rec, h);
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  const auto start = Clock::now();
  bool eof = false;
  raw.ReadUntilClosed(10s, &eof);
  EXPECT_TRUE(eof);
  EXPECT_GE(Clock::now() - start, 90ms);
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(rec->closed[0].code(), StatusCode::kTimeout);
  EXPECT_EQ(server->metrics()->handshake_timeouts.load(), 1u);
  raw.Close();
  ExpectClean();
}

TEST_F(TransportTest, IdleTimeoutClosesSilentPeer) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.idle_timeout = 150ms;
  auto server = StartServer(so, rec, HandlerOptions{});
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  const auto start = Clock::now();
  bool eof = false;
  raw.ReadUntilClosed(10s, &eof);
  EXPECT_TRUE(eof);
  EXPECT_GE(Clock::now() - start, 140ms);
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(rec->closed[0].code(), StatusCode::kTimeout);
  EXPECT_NE(rec->closed[0].message().find(raw.LocalName()), std::string::npos);
  EXPECT_EQ(server->metrics()->idle_timeouts.load(), 1u);
  EXPECT_EQ(server->metrics()->handshake_timeouts.load(), 0u);
  raw.Close();
  ExpectClean();
}

TEST_F(TransportTest, HeartbeatsKeepIdleConnectionAlive) {
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  TransportOptions live = BaseOptions();
  live.heartbeat_interval = 20ms;
  live.idle_timeout = 150ms;
  live.heartbeat_frame = testutil::HeartbeatFrame();
  ServerOptions so = DefaultServerOptions();
  so.transport = live;
  auto server = StartServer(so, server_rec, HandlerOptions{});
  Track(server.get());
  TcpClient client(client_loop_.get(), live, Factory(client_rec, HandlerOptions{}));
  Track(&client);
  ASSERT_TRUE(Connect(client, server->port()).ok());
  std::this_thread::sleep_for(1s);  // several idle timeouts long
  EXPECT_EQ(server_rec->closed_count(), 0u);
  EXPECT_EQ(client_rec->closed_count(), 0u);
  EXPECT_EQ(server->connection_count(), 1u);
  EXPECT_EQ(client.connection_count(), 1u);
  EXPECT_EQ(server->metrics()->idle_timeouts.load(), 0u);
  EXPECT_EQ(client.metrics()->idle_timeouts.load(), 0u);
  EXPECT_GE(server->metrics()->heartbeats_sent.load(), 10u);
  EXPECT_GE(client.metrics()->heartbeats_sent.load(), 10u);
  {
    std::lock_guard lock(server_rec->mu);
    EXPECT_GE(server_rec->heartbeats, 10u);
  }
  ExpectClean();
}

// A peer that stopped reading (zero window) but still sends heartbeats is backpressured, not
// dead. Once it stops sending heartbeats too it is closed, and the frames stuck for it are
// released.
TEST_F(TransportTest, BackpressuredPeerThatSendsHeartbeatsIsNotDead) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.heartbeat_interval = 50ms;
  so.transport.idle_timeout = 300ms;
  so.transport.heartbeat_frame = testutil::HeartbeatFrame();
  so.transport.send_buffer_bytes = 64 * 1024;
  HandlerOptions h;
  h.send_pool = send_pool_.get();
  h.send_count = 1000000;
  h.send_window = 2u << 20;
  auto server = StartServer(so, rec, h);
  Track(server.get());
  RawSocket raw(server->port(), /*rcvbuf=*/64 * 1024);
  ASSERT_TRUE(raw.connected());
  const Bytes hb = testutil::HeartbeatFrame();
  const auto until = Clock::now() + 1500ms;
  while (Clock::now() < until) {
    ASSERT_TRUE(raw.Send(hb));
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(rec->closed_count(), 0u);
  EXPECT_EQ(server->metrics()->idle_timeouts.load(), 0u);
  size_t queued = 0;
  auto sc = rec->connection();
  ASSERT_NE(sc, nullptr);
  RunOnLoop(server_loop_.get(), [&] { queued = sc->queued_bytes(); });
  EXPECT_GT(queued, 0u) << "the peer was not backpressuring";
  {
    std::lock_guard lock(rec->mu);
    EXPECT_GE(rec->heartbeats, 20u);
  }
  // Now silent as well: dead.
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }, 10s));
  EXPECT_EQ(rec->closed[0].code(), StatusCode::kTimeout);
  EXPECT_EQ(server->metrics()->idle_timeouts.load(), 1u);
  sc.reset();
  EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  raw.Close();
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// TcpClient

TEST_F(TransportTest, ClientSharesOneConnectionForConcurrentRequests) {
  auto server_rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), server_rec, HandlerOptions{});
  Track(server.get());
  TcpClient client(client_loop_.get(), BaseOptions(),
                   Factory(std::make_shared<Recorder>(), HandlerOptions{}));
  Track(&client);
  for (int round = 0; round < 20; ++round) {
    std::latch go(2);
    ConnectResult results[2] = {Status(StatusCode::kInternal, "unset"),
                                Status(StatusCode::kInternal, "unset")};
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        go.arrive_and_wait();
        results[t] = Connect(client, server->port());
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE(results[0].ok()) << results[0].status().ToString();
    ASSERT_TRUE(results[1].ok()) << results[1].status().ToString();
    EXPECT_EQ(results[0].value().get(), results[1].value().get());
    EXPECT_EQ(client.connection_count(), 1u);
    EXPECT_EQ(client.metrics()->connections_opened.load(), uint64_t(round + 1));
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 1; }));
    // Next round: a fresh connection.
    std::shared_ptr<Connection> c = results[0].value();
    RunOnLoop(client_loop_.get(), [c] { c->Close(ClosedError("next round")); });
    ASSERT_TRUE(Eventually(
        [&] { return client.connection_count() == 0 && server->connection_count() == 0; }));
  }
  ExpectClean();
}

TEST_F(TransportTest, ClientGivesUpAfterConfiguredAttemptsNamingTheEndpoint) {
  const uint16_t port = testutil::UnusedPort();
  RetryPolicy retry;
  retry.attempts = 3;
  retry.initial_backoff = 1ms;
  retry.max_backoff = 4ms;
  TcpClient client(client_loop_.get(), BaseOptions(),
                   Factory(std::make_shared<Recorder>(), HandlerOptions{}), retry);
  Track(&client);
  const auto start = Clock::now();
  auto r = Connect(client, port);
  ASSERT_FALSE(r.ok());
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
  const std::string where = "127.0.0.1:" + std::to_string(port);
  EXPECT_NE(r.status().message().find(where), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("3 attempts"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(client.connection_count(), 0u);
  ExpectClean();
}

TEST_F(TransportTest, ClientStopWhileBackingOffCancels) {
  RetryPolicy retry;
  retry.attempts = 10;
  retry.initial_backoff = 10s;
  TcpClient client(client_loop_.get(), BaseOptions(),
                   Factory(std::make_shared<Recorder>(), HandlerOptions{}), retry);
  Track(&client);
  auto p = std::make_shared<std::promise<ConnectResult>>();
  auto f = p->get_future();
  client.GetOrConnect({"127.0.0.1", testutil::UnusedPort()},
                      [p](ConnectResult r) { p->set_value(std::move(r)); });
  EXPECT_EQ(f.wait_for(100ms), std::future_status::timeout);  // first attempt failed, waiting
  client.Stop();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(f.get().status().code(), StatusCode::kCancelled);
  // A request after Stop is cancelled at once.
  auto r = Connect(client, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  ExpectClean();
}

TEST_F(TransportTest, ClientStopWhileConnectIsPendingCancels) {
  // A listener whose accept queue is full: further SYNs are dropped and connect() stays pending.
  uint16_t port = 0;
  const int lfd = ::sluice::testutil::ListenOnLoopback(0, &port);
  ASSERT_GE(lfd, 0);
  // With backlog 0 the queue holds one connection: this one.
  std::vector<std::unique_ptr<RawSocket>> fillers;
  fillers.push_back(std::make_unique<RawSocket>(port));

  TcpClient client(client_loop_.get(), BaseOptions(),
                   Factory(std::make_shared<Recorder>(), HandlerOptions{}));
  Track(&client);
  auto p = std::make_shared<std::promise<ConnectResult>>();
  auto f = p->get_future();
  client.GetOrConnect({"127.0.0.1", port}, [p](ConnectResult r) { p->set_value(std::move(r)); });
  if (f.wait_for(200ms) == std::future_status::ready) {
    ::close(lfd);
    fillers.clear();
    GTEST_SKIP() << "the kernel completed the connect despite a full accept queue";
  }
  client.Stop();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(f.get().status().code(), StatusCode::kCancelled);
  fillers.clear();
  ::close(lfd);
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// Threads

TEST_F(TransportTest, ConcurrentPostedSendsKeepPerThreadOrder) {
  constexpr uint32_t kThreads = 4;
  constexpr uint32_t kPerThread = 500;
  auto server_rec = std::make_shared<Recorder>();
  server_rec->record_order = true;
  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());
  TcpClient client(client_loop_.get(), BaseOptions(),
                   Factory(std::make_shared<Recorder>(), HandlerOptions{}));
  Track(&client);
  auto conn = Connect(client, server->port());
  ASSERT_TRUE(conn.ok());
  std::shared_ptr<Connection> c = conn.value();
  std::vector<std::thread> threads;
  std::latch go(kThreads);
  for (uint32_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      for (uint32_t i = 0; i < kPerThread; ++i) {
        // Payload Buffers are made on this thread and released on the loop thread.
        auto payload = std::make_shared<buffer::Buffer>();
        if (i % 2 == 0) {
          buffer::MemorySegment* seg = nullptr;
          while ((seg = send_pool_->TryRequestSegment()) == nullptr) std::this_thread::yield();
          *payload = buffer::Buffer::Wrap(seg, send_pool_->direct_recycler());
          std::memset(payload->data(), static_cast<int>(t), 512);
          payload->SetSize(512);
        }
        const Bytes meta = testutil::MetadataFor(t, i, 8);
        const uint8_t type = i % 2 == 0 ? kDataType : kControlType;
        ASSERT_TRUE(client_loop_->Post([c, meta, type, payload] {
          c->Send(OutFrame::Make(type, meta, std::move(*payload)));
        }));
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(server_rec->WaitFor([&] { return server_rec->frames == kThreads * kPerThread; }));
  {
    std::lock_guard lock(server_rec->mu);
    std::map<uint32_t, uint32_t> next;
    for (auto [stream, index] : server_rec->received) {
      EXPECT_EQ(index, next[stream]) << "stream " << stream;
      next[stream] = index + 1;
    }
    EXPECT_EQ(server_rec->data_frames, kThreads * kPerThread / 2);
  }
  c.reset();
  conn = Status(StatusCode::kCancelled, "released");
  ExpectClean();
}

TEST_F(TransportTest, PostRacingWithStopRunsEveryAcceptedTask) {
  for (int round = 0; round < 20; ++round) {
    auto loop = std::move(EventLoop::Start("race")).value();
    std::atomic<uint64_t> accepted{0};
    std::atomic<uint64_t> ran{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        while (!go.load()) std::this_thread::yield();
        while (loop->Post([&ran] { ran.fetch_add(1); })) accepted.fetch_add(1);
      });
    }
    go.store(true);
    std::this_thread::sleep_for(std::chrono::milliseconds(round % 5));
    loop->Stop();
    for (auto& t : threads) t.join();
    EXPECT_EQ(ran.load(), accepted.load());
    EXPECT_EQ(loop->open_handles_after_stop(), 0);
    EXPECT_FALSE(loop->Post([] {}));
  }
  ExpectClean();
}

// Stopping the loops while a server and a client still hold connections closes them through
// the stop hooks: handlers see OnClosed, every Buffer comes home, no handle stays open.
TEST_F(TransportTest, LoopStopClosesLiveConnections) {
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  HandlerOptions sh;
  sh.receive_pool = recv_pool_.get();
  sh.send_pool = send_pool_.get();
  sh.send_count = 1000000;
  sh.send_window = 1u << 20;
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  HandlerOptions ch;
  ch.receive_pool = recv_pool_.get();
  auto client =
      std::make_unique<TcpClient>(client_loop_.get(), BaseOptions(), Factory(client_rec, ch));
  ASSERT_TRUE(Connect(*client, server->port()).ok());
  ASSERT_TRUE(client_rec->WaitFor([&] { return client_rec->data_frames > 100; }));
  client_loop_->Stop();
  server_loop_->Stop();
  EXPECT_EQ(server_rec->closed_count(), 1u);
  EXPECT_EQ(client_rec->closed_count(), 1u);
  EXPECT_EQ(server->connection_count(), 0u);
  EXPECT_EQ(client->connection_count(), 0u);
  // Destroying them after their loop stopped is fine.
  server.reset();
  client.reset();
  ExpectClean();
}

// An owner may destroy its server or client from a task on their loop thread, where Stop()
// cannot wait for the close callbacks: those must not touch the destroyed object, and pending
// connect requests must still be answered (Cancelled).
TEST_F(TransportTest, DestroyingServerAndClientOnTheirLoopThreadIsSafe) {
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), server_rec, HandlerOptions{});
  auto client = std::make_unique<TcpClient>(client_loop_.get(), BaseOptions(),
                                            Factory(client_rec, HandlerOptions{}));
  ASSERT_TRUE(Connect(*client, server->port()).ok());
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 1; }));
  // One attempt still connecting (full accept queue) and one backing off.
  uint16_t lport = 0;
  const int lfd = ::sluice::testutil::ListenOnLoopback(0, &lport);
  ASSERT_GE(lfd, 0);
  RawSocket filler(lport);
  auto pending = std::make_shared<std::promise<ConnectResult>>();
  auto pending_f = pending->get_future();
  client->GetOrConnect({"127.0.0.1", lport},
                       [pending](ConnectResult r) { pending->set_value(std::move(r)); });
  RetryPolicy slow;
  slow.initial_backoff = 10s;
  auto backoff_client = std::make_unique<TcpClient>(client_loop_.get(), BaseOptions(),
                                                    Factory(client_rec, HandlerOptions{}), slow);
  auto backing_off = std::make_shared<std::promise<ConnectResult>>();
  auto backing_off_f = backing_off->get_future();
  backoff_client->GetOrConnect(
      {"127.0.0.1", testutil::UnusedPort()},
      [backing_off](ConnectResult r) { backing_off->set_value(std::move(r)); });
  std::this_thread::sleep_for(100ms);
  ASSERT_EQ(pending_f.wait_for(0ms), std::future_status::timeout);

  RunOnLoop(server_loop_.get(), [&] { server.reset(); });
  RunOnLoop(client_loop_.get(), [&] {
    client.reset();
    backoff_client.reset();
  });
  ASSERT_EQ(pending_f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(pending_f.get().status().code(), StatusCode::kCancelled);
  ASSERT_EQ(backing_off_f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(backing_off_f.get().status().code(), StatusCode::kCancelled);
  ASSERT_TRUE(server_rec->WaitFor([&] { return server_rec->closed.size() == 1; }));
  ASSERT_TRUE(client_rec->WaitFor([&] { return client_rec->closed.size() == 1; }));
  filler.Close();
  ::close(lfd);
  ExpectClean();
}

TEST_F(TransportTest, ServerRefusesConnectionsOverTheLimit) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.max_connections = 2;
  auto server = StartServer(so, rec, HandlerOptions{});
  Track(server.get());
  {
    RawSocket a(server->port());
    RawSocket b(server->port());
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 2; }));
    RawSocket c(server->port());
    bool eof = false;
    c.ReadUntilClosed(10s, &eof);
    EXPECT_TRUE(eof);
    EXPECT_EQ(server->metrics()->connections_refused.load(), 1u);
    EXPECT_EQ(server->connection_count(), 2u);
  }
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 0; }));
  // Below the limit again: accepted.
  RawSocket d(server->port());
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 1; }));
  EXPECT_EQ(server->metrics()->connections_refused.load(), 1u);
  d.Close();
  ExpectClean();
}

TEST_F(TransportTest, ServerStartFailsWithActionableMessage) {
  auto rec = std::make_shared<Recorder>();
  auto first = StartServer(DefaultServerOptions(), rec, HandlerOptions{});
  Track(first.get());
  ServerOptions so = DefaultServerOptions();
  so.port = first->port();
  auto second = TcpServer::Start(server_loop_.get(), so, Factory(rec, HandlerOptions{}));
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(std::to_string(first->port())), std::string::npos);
  so.bind_host = "localhost";
  auto third = TcpServer::Start(server_loop_.get(), so, Factory(rec, HandlerOptions{}));
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), StatusCode::kInvalidArgument);
  ExpectClean();
}

// A socket connected from another loopback address (Linux routes all of 127/8 to lo).
int ConnectFrom(const char* local_ip, uint16_t port) {
  return ::sluice::testutil::ConnectFromLoopback(local_ip, port);
}

TEST_F(TransportTest, ServerCapsConnectionsPerPeerAddress) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.max_connections_per_peer = 2;
  auto server = StartServer(so, rec, HandlerOptions{});
  Track(server.get());
  {
    RawSocket a(server->port());
    RawSocket b(server->port());
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 2; }));
    RawSocket c(server->port());  // a third from 127.0.0.1: refused
    bool eof = false;
    c.ReadUntilClosed(10s, &eof);
    EXPECT_TRUE(eof);
    EXPECT_EQ(server->metrics()->connections_refused_per_peer.load(), 1u);
    EXPECT_EQ(server->metrics()->connections_refused.load(), 0u);
    // Another address has its own allowance.
    RawSocket other(RawSocket::AdoptFd{ConnectFrom("127.0.0.2", server->port())});
    ASSERT_TRUE(other.connected());
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 3; }));
    a.Close();
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 2; }));
    RawSocket d(server->port());  // 127.0.0.1 is below its cap again
    ASSERT_TRUE(Eventually([&] { return server->connection_count() == 3; }));
    EXPECT_EQ(server->metrics()->connections_refused_per_peer.load(), 1u);
  }
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 0; }));
  ExpectClean();
}

// Until MarkEstablished(), a connection holds a few KiB of read buffers and refuses metadata
// over TransportOptions::handshake_max_metadata; after it, large metadata is read as before.
TEST_F(TransportTest, UnestablishedConnectionHoldsAFewKiBAndRefusesLargeMetadata) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  HandlerOptions h;
  h.establish = false;
  h.reply_on_protocol_error = false;
  auto server = StartServer(so, rec, h);
  Track(server.get());
  RawSocket small(server->port());
  ASSERT_TRUE(small.SendFrame(testutil::kControlType, testutil::Bytes(8000, 1)));
  ASSERT_TRUE(rec->WaitFor([&] { return rec->control_frames == 1; }));
  size_t held = 0;
  server->ForEachConnection([&](Connection& c) { held = std::max(held, c.buffer_bytes()); });
  EXPECT_LE(held, 4096u + 8192u);
  RawSocket big(server->port());
  ASSERT_TRUE(big.SendFrame(testutil::kControlType, testutil::Bytes(9000, 1)));
  bool eof = false;
  big.ReadUntilClosed(10s, &eof);
  EXPECT_TRUE(eof);
  EXPECT_EQ(server->metrics()->protocol_errors_of(FrameError::kFrameTooLong), 1u);
  small.Close();
  big.Close();
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 0; }));
  // Established at once: 60,000 bytes of metadata arrive whole.
  auto rec2 = std::make_shared<Recorder>();
  auto server2 = StartServer(so, rec2, HandlerOptions{});
  Track(server2.get());
  RawSocket s(server2->port());
  ASSERT_TRUE(Eventually([&] { return server2->connection_count() == 1; }));
  ASSERT_TRUE(s.SendFrame(testutil::kControlType, testutil::Bytes(60000, 2)));
  ASSERT_TRUE(rec2->WaitFor([&] { return rec2->control_frames == 1; }));
  s.Close();
  ExpectClean();
}

TEST(OutFrameTest, FramesOverTheLimitAreAnErrorNotAnAbort) {
  const std::vector<uint8_t> ok(kMaxMetadataLength, 1);
  auto f = OutFrame::TryMake(7, ok);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->head().size(), kFrameHeaderSize + kMaxMetadataLength);
  const std::vector<uint8_t> too_long(kMaxMetadataLength + 1, 1);
  auto g = OutFrame::TryMake(7, too_long);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(g.status().message().find("65536 bytes of metadata"), std::string::npos)
      << g.status().message();
  EXPECT_NE(g.status().message().find("65535"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Write-through: Connection::SendFromAnyThread from threads other than the loop's.

// Frame `index` of stream `stream` for the write-through tests: 8 bytes of metadata naming it,
// and (every other frame) a payload of 1..32 KiB with the stream's pattern.
OutFrame DirectFrame(NetworkBufferPool* pool, uint32_t stream, uint32_t index) {
  buffer::Buffer payload;
  if (index % 2 == 0) {
    buffer::MemorySegment* seg = nullptr;
    while ((seg = pool->TryRequestSegment()) == nullptr) std::this_thread::yield();
    payload = buffer::Buffer::Wrap(seg, pool->direct_recycler());
    const uint32_t size = 1 + static_cast<uint32_t>(testutil::Mix(stream * 7919 + index) %
                                                    kSegmentSize);
    testutil::FillPattern(stream, index, 0xC3, payload.data(), size);
    payload.SetSize(size);
  }
  return OutFrame::Make(payload ? kDataType : kControlType, testutil::MetadataFor(stream, index, 8),
                        std::move(payload));
}

// Reads `total` frames from `raw`, checking per stream order and every payload byte. Returns
// frames read per stream; `errors` counts order and byte mismatches.
std::map<uint32_t, uint32_t> ReadDirectFrames(RawSocket& raw, uint32_t total, int* errors) {
  std::map<uint32_t, uint32_t> next;
  for (uint32_t n = 0; n < total; ++n) {
    auto f = raw.ReadFrame(30s);
    if (!f) {
      ++*errors;
      break;
    }
    uint32_t stream = 0, index = 0;
    std::memcpy(&stream, f->metadata.data(), 4);
    std::memcpy(&index, f->metadata.data() + 4, 4);
    if (index != next[stream]) ++*errors;
    next[stream] = index + 1;
    if (!f->payload.empty() &&
        testutil::FindPatternMismatch(stream, index, 0xC3, f->payload.data(), f->payload.size()) >=
            0) {
      ++*errors;
    }
  }
  return next;
}

// Reads `frames` frames of stream 0 with indices 0, 2, 4, ... (DirectFrame's frames with a
// payload), checking their order and every payload byte.
void ReadEvenFramesOfStreamZero(RawSocket& raw, uint32_t frames) {
  uint32_t next = 0;
  for (uint32_t n = 0; n < frames; ++n) {
    auto f = raw.ReadFrame(30s);
    ASSERT_TRUE(f) << "frame " << n << " missing";
    uint32_t index = 0;
    std::memcpy(&index, f->metadata.data() + 4, 4);
    ASSERT_EQ(index, next) << "frame " << n;
    next += 2;
    ASSERT_EQ(testutil::FindPatternMismatch(0, index, 0xC3, f->payload.data(), f->payload.size()),
              -1)
        << "frame " << index;
  }
}

std::shared_ptr<Connection> OnlyConnection(Recorder& rec) {
  std::shared_ptr<Connection> c;
  Eventually([&] { return (c = rec.connection(0)) != nullptr; });
  return c;
}

}  // namespace

TransportTest::StalledPeer TransportTest::StartStalledPeer(size_t loop_direct_max_bytes) {
  StalledPeer p;
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.send_buffer_bytes = 64 * 1024;
  so.transport.loop_direct_max_bytes = loop_direct_max_bytes;
  p.server = StartServer(so, rec, HandlerOptions{});
  Track(p.server.get());
  p.raw = std::make_unique<RawSocket>(p.server->port(), /*rcvbuf=*/8 * 1024);
  EXPECT_TRUE(p.raw->connected());
  if (p.raw->connected()) p.conn = OnlyConnection(*rec);
  return p;
}

namespace {

// Two producer threads write directly while the loop sends a stream of its own on the same
// connection (a flush racing the loop's write); the reader's small receive buffer makes the
// socket block now and then, so partial writes hand the rest to the loop. Every stream arrives
// complete, in order, byte for byte.
TEST_F(TransportTest, DirectWritesRacingLoopWritesKeepEveryStreamInOrder) {
  constexpr uint32_t kPerStream = 600;
  auto rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), rec, HandlerOptions{});
  Track(server.get());
  RawSocket raw(server->port(), /*rcvbuf=*/16 * 1024);
  ASSERT_TRUE(raw.connected());
  std::shared_ptr<Connection> c = OnlyConnection(*rec);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->direct_writes_enabled());
  int errors = 0;
  std::map<uint32_t, uint32_t> got;
  std::thread reader([&] { got = ReadDirectFrames(raw, 3 * kPerStream, &errors); });
  std::latch go(3);
  std::vector<std::thread> threads;
  std::atomic<uint64_t> dropped{0};
  for (uint32_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      for (uint32_t i = 0; i < kPerStream; ++i) {
        // Now and then wait for an idle moment, so that direct writes surely take part.
        if (i % 16 == 0) Eventually([&] { return c->DirectWritable(); }, 2s);
        if (c->SendFromAnyThread(DirectFrame(send_pool_.get(), t, i)) ==
            Connection::SendPath::kDropped) {
          dropped.fetch_add(1);
        }
      }
    });
  }
  threads.emplace_back([&] {  // stream 2: the loop's own writes
    go.arrive_and_wait();
    for (uint32_t i = 0; i < kPerStream; ++i) {
      auto frame = std::make_shared<OutFrame>(DirectFrame(send_pool_.get(), 2, i));
      ASSERT_TRUE(server_loop_->Post([c, frame] { c->Send(std::move(*frame)); }));
    }
  });
  for (auto& t : threads) t.join();
  reader.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(dropped.load(), 0u);
  for (uint32_t s = 0; s < 3; ++s) EXPECT_EQ(got[s], kPerStream) << "stream " << s;
  const auto& m = *server->metrics();
  EXPECT_GT(m.direct_writes.load(), 0u);
  EXPECT_LE(m.direct_writes.load(), 2u * kPerStream);
  std::printf("direct writes %llu, partial %llu of %u frames from producer threads\n",
              static_cast<unsigned long long>(m.direct_writes.load()),
              static_cast<unsigned long long>(m.direct_partial_writes.load()), 2 * kPerStream);
  ASSERT_TRUE(Eventually([&] { return c->queued_bytes() == 0; }));
  EXPECT_EQ(c->bytes_sent(), m.bytes_out.load());
  raw.Close();
  c.reset();
  ExpectClean();
}

// A peer that does not read: the first frames go out directly, the socket fills, and a frame
// the socket takes only in part (or not at all) is queued ahead of the rest for the loop. When
// the peer reads, every frame arrives whole and in order.
TEST_F(TransportTest, DirectWriteThatWouldBlockLeavesTheRestToTheLoopInOrder) {
  constexpr uint32_t kFrames = 120;  // ~2 MiB of payloads: more than the socket buffers hold
  StalledPeer peer = StartStalledPeer();
  ASSERT_TRUE(peer.conn);
  RawSocket& raw = *peer.raw;
  std::shared_ptr<Connection> c = std::move(peer.conn);
  std::map<Connection::SendPath, uint32_t> paths;
  std::thread producer([&] {
    for (uint32_t i = 0; i < kFrames; ++i) {
      // Even frames only: each carries a payload.
      ++paths[c->SendFromAnyThread(DirectFrame(send_pool_.get(), 0, 2 * i))];
    }
  });
  producer.join();
  EXPECT_GE(paths[Connection::SendPath::kDirect], 1u);
  EXPECT_GE(paths[Connection::SendPath::kQueued], 1u) << "the socket never blocked";
  EXPECT_EQ(paths[Connection::SendPath::kDropped], 0u);
  EXPECT_GT(c->queued_bytes(), 0u);
  ASSERT_NO_FATAL_FAILURE(ReadEvenFramesOfStreamZero(raw, kFrames));
  ASSERT_TRUE(Eventually([&] { return c->queued_bytes() == 0; }));
  EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  raw.Close();
  c.reset();
  ExpectClean();
}

// The loop closes the connection while producer threads write to it directly: they see
// kDropped from then on, the close completes, and every payload Buffer goes back to the pool.
TEST_F(TransportTest, CloseDuringDirectWritesReleasesEveryBuffer) {
  auto rec = std::make_shared<Recorder>();
  auto server = StartServer(DefaultServerOptions(), rec, HandlerOptions{});
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  std::shared_ptr<Connection> c = OnlyConnection(*rec);
  ASSERT_TRUE(c);
  std::atomic<bool> reading{true};
  std::thread drain([&] {
    while (reading.load()) {
      if (raw.Drain() < 0) break;
      std::this_thread::sleep_for(100us);
    }
  });
  std::atomic<uint64_t> sent{0};
  std::vector<std::thread> producers;
  std::vector<int> saw_dropped(3, 0);
  for (uint32_t t = 0; t < 3; ++t) {
    producers.emplace_back([&, t] {
      for (uint32_t i = 0;; ++i) {
        if (c->SendFromAnyThread(DirectFrame(send_pool_.get(), t, i)) ==
            Connection::SendPath::kDropped) {
          saw_dropped[t] = 1;
          return;
        }
        sent.fetch_add(1);
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return sent.load() > 2000; }));
  RunOnLoop(server_loop_.get(), [&] { c->Close(ClosedError("test closes during direct writes")); });
  for (auto& t : producers) t.join();
  for (uint32_t t = 0; t < 3; ++t) EXPECT_EQ(saw_dropped[t], 1) << "producer " << t;
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->closed[0].message(), "test closes during direct writes");
  }
  EXPECT_GT(server->metrics()->direct_writes.load(), 0u);
  reading.store(false);
  drain.join();
  EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  raw.Close();
  c.reset();
  ExpectClean();
}

// With the fault shim on (its delay line and corruption see every frame), and on the loop
// thread itself, nothing is written directly.
TEST_F(TransportTest, FaultShimAndLoopThreadKeepWritesOnTheLoop) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.faults.delay_ms = 1;
  auto server = StartServer(so, rec, HandlerOptions{});
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  std::shared_ptr<Connection> c = OnlyConnection(*rec);
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->direct_writes_enabled());
  EXPECT_FALSE(c->DirectWritable());
  for (uint32_t i = 0; i < 10; ++i) {
    EXPECT_EQ(c->SendFromAnyThread(DirectFrame(send_pool_.get(), 0, i)),
              Connection::SendPath::kQueued);
  }
  Connection::SendPath on_loop = Connection::SendPath::kDropped;
  RunOnLoop(server_loop_.get(),
            [&] { on_loop = c->SendFromAnyThread(DirectFrame(send_pool_.get(), 0, 10)); });
  EXPECT_EQ(on_loop, Connection::SendPath::kQueued);
  int errors = 0;
  auto got = ReadDirectFrames(raw, 11, &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(got[0], 11u);
  EXPECT_EQ(server->metrics()->direct_writes.load(), 0u);
  EXPECT_EQ(server->metrics()->loop_direct_writes.load(), 0u);
  raw.Close();
  c.reset();
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// The loop's own direct writes: Flush of an idle connection's queued frames with one sendmsg.

// A handler that keeps one frame queued at a time (send_window 1 byte) sends its next frame
// only from OnWritable: every write finds the connection idle, goes out in one sendmsg, and
// must be followed by OnWritable as a completed uv_write is, or the stream stops after a frame.
TEST_F(TransportTest, LoopWritesToAnIdleConnectionAtOnceAndCallOnWritable) {
  constexpr uint32_t kFrames = 300;
  auto server_rec = std::make_shared<Recorder>();
  auto client_rec = std::make_shared<Recorder>();
  HandlerOptions sh;
  sh.send_pool = send_pool_.get();
  sh.send_count = kFrames;
  sh.send_window = 1;
  auto server = StartServer(DefaultServerOptions(), server_rec, sh);
  Track(server.get());
  auto client = ConnectVerifyingClient(client_rec, server->port());
  ASSERT_TRUE(client);
  ASSERT_TRUE(client_rec->WaitFor([&] { return client_rec->frames == kFrames; }))
      << "the stream stopped at frame " << client_rec->frames;
  {
    std::lock_guard lock(client_rec->mu);
    EXPECT_EQ(client_rec->mismatches, 0u) << client_rec->first_mismatch;
  }
  // The loop counts a frame after its sendmsg returns, which may be after the client read it:
  // a task run on the server's loop starts after that write's callback has ended.
  RunOnLoop(server_loop_.get(), [] {});
  const TransportMetrics& m = *server->metrics();
  // Each frame was written alone, nearly always by the loop's sendmsg (a full socket would
  // hand one to uv_write; on loopback with one small frame in flight it does not happen).
  EXPECT_GE(m.loop_direct_writes.load(), kFrames - 10);
  EXPECT_LE(m.loop_direct_writes.load(), m.writes.load());
  EXPECT_EQ(m.frames_out.load(), kFrames);
  ExpectClean();
}

// Hostile peer: it resets the connection while the loop writes to it frame by frame with its
// own sendmsg (send_window 1: each frame alone). The failed sendmsg leaves the frame to
// uv_write, which meets the error: the connection closes naming the peer, the other side's
// loop goes on, and every payload Buffer is back.
TEST_F(TransportTest, PeerResettingDuringLoopDirectWritesClosesOnlyThatConnection) {
  auto rec = std::make_shared<Recorder>();
  HandlerOptions h;
  h.send_pool = send_pool_.get();
  h.send_count = 1000000;  // more than the peer will ever read
  h.send_window = 1;
  auto server = StartServer(DefaultServerOptions(), rec, h);
  Track(server.get());
  ResetWhileStreamingClosesNamingThePeer(
      *server, *rec, [&] { return server->metrics()->loop_direct_writes.load() > 10; });
  // The server still serves: a new peer gets frames.
  RawSocket again(server->port());
  ASSERT_TRUE(again.connected());
  EXPECT_TRUE(Eventually([&] { return again.Drain() > 0; }));
  again.Close();
  ASSERT_TRUE(Eventually([&] { return server->connection_count() == 0; }));
  EXPECT_EQ(send_pool_->available_segments(), send_pool_->total_segments());
  ExpectClean();
}

// A flush of more than loop_direct_max_bytes (here 2 MiB against the default 64 KiB) goes
// through uv_write as before: the loop makes no sendmsg of its own, and every frame arrives.
TEST_F(TransportTest, LoopFlushOverTheLimitGoesThroughUvWrite) {
  constexpr uint32_t kFrames = 120;
  StalledPeer peer = StartStalledPeer();
  ASSERT_TRUE(peer.conn);
  std::shared_ptr<Connection> c = std::move(peer.conn);
  RunOnLoop(server_loop_.get(), [&] {
    for (uint32_t i = 0; i < kFrames; ++i) c->Send(DirectFrame(send_pool_.get(), 0, 2 * i));
  });
  ASSERT_NO_FATAL_FAILURE(ReadEvenFramesOfStreamZero(*peer.raw, kFrames));
  ASSERT_TRUE(Eventually([&] { return c->queued_bytes() == 0; }));
  EXPECT_EQ(peer.server->metrics()->loop_direct_writes.load(), 0u);
  peer.raw->Close();
  c.reset();
  ExpectClean();
}

// A peer that does not read: the loop's sendmsg takes what the socket holds (part of a frame,
// the rest queued ahead of everything), uv_write writes the rest when the socket drains, and
// every frame arrives whole, in order, byte for byte.
TEST_F(TransportTest, LoopWriteThatWouldBlockLeavesTheRestToUvWriteInOrder) {
  constexpr uint32_t kFrames = 120;  // ~2 MiB of payloads: more than the socket buffers hold
  StalledPeer peer = StartStalledPeer(/*loop_direct_max_bytes=*/8u << 20);
  ASSERT_TRUE(peer.conn);
  TcpServer* server = peer.server.get();
  RawSocket& raw = *peer.raw;
  std::shared_ptr<Connection> c = std::move(peer.conn);
  RunOnLoop(server_loop_.get(), [&] {
    for (uint32_t i = 0; i < kFrames; ++i) c->Send(DirectFrame(send_pool_.get(), 0, 2 * i));
  });
  const TransportMetrics& m = *server->metrics();
  ASSERT_TRUE(Eventually([&] { return m.loop_direct_writes.load() == 1; }));
  ASSERT_TRUE(Eventually([&] { return m.writes.load() >= 2; })) << "no uv_write for the rest";
  EXPECT_GT(c->queued_bytes(), 0u) << "the socket took everything";
  ASSERT_NO_FATAL_FAILURE(ReadEvenFramesOfStreamZero(raw, kFrames));
  ASSERT_TRUE(Eventually([&] { return c->queued_bytes() == 0; }));
  EXPECT_EQ(m.loop_direct_writes.load(), 1u);
  EXPECT_EQ(c->bytes_sent(), m.bytes_out.load());
  raw.Close();
  c.reset();
  ExpectClean();
}

}  // namespace
}  // namespace sluice::transport
