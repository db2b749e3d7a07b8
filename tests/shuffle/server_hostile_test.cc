// ShuffleServer against hostile peers, end to end over loopback: each test sends one kind of
// attack (by hand, frame by frame), asserts the server's answer (ErrorCode or close), that it
// stays up and serves a good client afterwards, that no segment leaks, and where the attack
// could make the server hold memory, that VmRSS grows by less than 16 MiB while the attacker
// keeps at it for a few seconds.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "schema/control.h"
#include "shuffle/auth.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "testutil/leak_check.h"
#include "testutil/loopback.h"
#include "testutil/rss.h"
#include "testutil/wait.h"
#include "transport/raw_socket.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using schema::MessageType;
using ::sluice::testutil::ExpectRssGrowthBounded;
using ::sluice::testutil::VmRssBytes;
using transport::testutil::Bytes;
using transport::testutil::RawSocket;

constexpr uint32_t kSegment = 4096;
constexpr const char* kSecret = "hostile-test-secret-0123456789abcdef";

Bytes ToBytes(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

// Answers StatsRequest with `reply_bytes` opaque bytes, or holds every reply when hold is set.
class FakeControl final : public ControlService {
 public:
  void OnControlRequest(MessageType, std::span<const uint8_t>, const std::string&,
                        ControlReply reply) override {
    std::lock_guard lock(mu_);
    ++requests_;
    if (hold) {
      held_.push_back(std::move(reply));
      return;
    }
    reply(MessageType::kStatsResponse, std::vector<uint8_t>(reply_bytes, 0x5A));
  }
  void DropHeld() {
    std::lock_guard lock(mu_);
    held_.clear();
  }
  uint64_t requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::atomic<bool> hold{false};
  std::atomic<size_t> reply_bytes{100};

 private:
  std::mutex mu_;
  std::vector<ControlReply> held_;
  uint64_t requests_ = 0;
};

Bytes StatsRequest() {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::CreateStatsRequest(fbb));
  return Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
}

class ServerHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EnvironmentConfig ec;
    ec.node_name = "producer";
    ec.listen = false;
    ec.memory.network_memory = 4u << 20;
    ec.memory.segment_size = kSegment;
    ec.options.buffer_timeout = 1ms;
    ec.auth.secret = kSecret;
    auto env = ShuffleEnvironment::Start(ec);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    env_ = std::move(*env);
    auto loop = transport::EventLoop::Start("hostile-io");
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    config_.node_name = "producer";
    config_.options = env_->config().options;
    config_.auth.secret = kSecret;
    config_.control = &control_;
    config_.timeouts.heartbeat_interval = 0ms;
    config_.timeouts.idle_timeout = 0ms;
    config_.timeouts.handshake_timeout = 20s;
  }
  void StartServer() {
    auto server = ShuffleServer::Start(loop_.get(), &env_->registry(), config_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }
  void TearDown() override {
    control_.DropHeld();
    for (const std::string& id : partitions_) env_->ReleasePartition(id);
    if (server_) server_->Stop();
    loop_->Stop();
    EXPECT_EQ(loop_->open_handles_after_stop(), 0);
    env_->Stop();
    testutil::ExpectAllSegmentsBack(*env_->pool());
  }

  // Hello, HelloAck, AuthResponse: an authenticated connection. False when refused.
  bool Handshake(RawSocket& s, const std::string& secret = kSecret) {
    schema::MessageBuilder b;
    const auth::Nonce mine = auth::MakeNonce();
    schema::HandshakeFields f;
    f.segment_size = kSegment;
    f.node_name = "hostile";
    f.nonce = mine;
    if (!s.SendFrame(static_cast<uint8_t>(MessageType::kHello), ToBytes(b.Hello(f)))) return false;
    auto ack = s.ReadFrame(5s);
    if (!ack || ack->header.type != static_cast<uint8_t>(MessageType::kHelloAck)) return false;
    auto m = schema::ParseHelloAck(ack->metadata);
    if (!m.ok() || (*m)->nonce() == nullptr) return false;
    std::span<const uint8_t> theirs((*m)->nonce()->data(), (*m)->nonce()->size());
    const auth::Proof proof = auth::MakeProof(secret, auth::kClientRole, theirs, mine);
    return s.SendFrame(static_cast<uint8_t>(MessageType::kAuthResponse),
                       ToBytes(b.AuthResponse(proof)));
  }

  std::shared_ptr<ResultPartition> Partition(const std::string& id, uint32_t subpartitions,
                                             const std::string& token = "") {
    auto p = env_->CreatePartition(id, subpartitions, token);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    partitions_.push_back(id);
    return p.ok() ? *p : nullptr;
  }

  // The next frame that is not a heartbeat.
  static std::optional<RawSocket::Frame> Next(RawSocket& s, std::chrono::milliseconds t = 5s) {
    return s.ReadFrame(t, static_cast<uint8_t>(MessageType::kHeartbeat));
  }
  // The next frame must be an ErrorResponse: returns code, receiver id (or -1), message.
  static std::tuple<fb::ErrorCode, int64_t, std::string> NextError(RawSocket& s) {
    auto f = Next(s);
    if (!f) return {fb::ErrorCode::Unknown, -2, "no frame (closed)"};
    if (f->header.type != static_cast<uint8_t>(MessageType::kErrorResponse)) {
      return {fb::ErrorCode::Unknown, -2, "frame of type " + std::to_string(f->header.type)};
    }
    auto m = schema::ParseErrorResponse(f->metadata);
    if (!m.ok()) return {fb::ErrorCode::Unknown, -2, m.status().ToString()};
    const int64_t id = (*m)->receiver_id() ? static_cast<int64_t>(*(*m)->receiver_id()) : -1;
    return {(*m)->code(), id, (*m)->message() ? (*m)->message()->str() : ""};
  }
  static bool Request(RawSocket& s, const std::string& partition, uint32_t sp, uint64_t id,
                      int32_t credit, std::span<const uint8_t> proof = {}) {
    schema::MessageBuilder b;
    return s.SendFrame(static_cast<uint8_t>(MessageType::kPartitionRequest),
                       ToBytes(b.PartitionRequest(partition, sp, id, credit, proof)));
  }
  // Reads BufferResponses for `id` up to its end of partition; returns data buffers seen, or -1.
  static int ReadToEnd(RawSocket& s, uint64_t id) {
    int data = 0;
    while (auto f = Next(s)) {
      if (f->header.type != static_cast<uint8_t>(MessageType::kBufferResponse)) return -1;
      auto m = schema::ParseBufferResponse(f->metadata, kSegment);
      if (!m.ok() || (*m)->receiver_id() != id) return -1;
      if ((*m)->data_type() == fb::DataType::EndOfPartition) return data;
      ++data;
    }
    return -1;
  }

  // A good client still gets a whole partition: the server is up and serving.
  void ExpectServesAGoodClient() {
    const std::string id = "good-" + std::to_string(good_++);
    auto p = Partition(id, 1);
    ASSERT_NE(p, nullptr);
    const Bytes record(100, 7);
    ASSERT_TRUE(p->Emit(record, 0).ok());
    ASSERT_TRUE(p->Finish().ok());
    RawSocket s(server_->port());
    ASSERT_TRUE(s.connected());
    ASSERT_TRUE(Handshake(s));
    ASSERT_TRUE(Request(s, id, 0, 1, 4));
    EXPECT_EQ(ReadToEnd(s, 1), 1);
  }

  std::unique_ptr<ShuffleEnvironment> env_;
  std::unique_ptr<transport::EventLoop> loop_;
  ShuffleServerConfig config_;
  FakeControl control_;
  std::unique_ptr<ShuffleServer> server_;
  std::vector<std::string> partitions_;
  int good_ = 0;
};

// --- Job-scoped partition access ---------------------------------------------------------

TEST_F(ServerHostileTest, PartitionRequestWithoutTheJobsProofIsRefusedOnItsChannelOnly) {
  StartServer();
  const std::string token = auth::MakeJobToken();
  auto p = Partition("job1-p0", 2, token);
  ASSERT_TRUE(p->Emit(Bytes(50, 1), 0).ok());
  ASSERT_TRUE(p->Finish().ok());
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  // No proof.
  ASSERT_TRUE(Request(s, "job1-p0", 0, 11, 2));
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::AuthenticationFailed) << text;
  EXPECT_EQ(rid, 11);
  EXPECT_EQ(text, "access to partition 'job1-p0' subpartition 0 on " + config_.node_name +
                      " denied: the request carries no access proof for the job that owns it "
                      "(the consumer needs the job's token)");
  EXPECT_EQ(text.find(token), std::string::npos) << "the token leaked: " << text;
  // A proof for another subpartition, and one made with another job's token.
  const auth::Proof other_sp = auth::MakePartitionProof(token, "job1-p0", 1);
  ASSERT_TRUE(Request(s, "job1-p0", 0, 12, 2, other_sp));
  EXPECT_EQ(std::get<0>(NextError(s)), fb::ErrorCode::AuthenticationFailed);
  const auth::Proof other_job = auth::MakePartitionProof(auth::MakeJobToken(), "job1-p0", 0);
  ASSERT_TRUE(Request(s, "job1-p0", 0, 13, 2, other_job));
  EXPECT_EQ(std::get<1>(NextError(s)), 13);
  EXPECT_EQ(server_->stats().auth_failures.load(), 3u);
  // The connection goes on, and the right proof reads the data.
  const auth::Proof right = auth::MakePartitionProof(token, "job1-p0", 0);
  ASSERT_TRUE(Request(s, "job1-p0", 0, 14, 2, right));
  EXPECT_EQ(ReadToEnd(s, 14), 1);
  ExpectServesAGoodClient();
}

TEST_F(ServerHostileTest, ParkedRequestIsCheckedWhenThePartitionAppears) {
  config_.options.server_park_timeout = 10s;
  StartServer();
  const std::string token = auth::MakeJobToken();
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  ASSERT_TRUE(Request(s, "late", 0, 21, 2));  // parked, no proof
  ASSERT_TRUE(Request(s, "late", 1, 22, 2, auth::MakePartitionProof(token, "late", 1)));
  std::this_thread::sleep_for(100ms);
  auto p = Partition("late", 2, token);
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::AuthenticationFailed) << text;
  EXPECT_EQ(rid, 21);
  ASSERT_TRUE(p->Emit(Bytes(50, 1), 1).ok());
  ASSERT_TRUE(p->Finish().ok());
  EXPECT_EQ(ReadToEnd(s, 22), 1);
  EXPECT_EQ(server_->stats().auth_failures.load(), 1u);
  ExpectServesAGoodClient();
}

TEST_F(ServerHostileTest, ParkedRequestsPerConnectionAreBounded) {
  config_.max_parked_requests = 16;
  config_.options.server_park_timeout = 10s;
  StartServer();
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  for (uint64_t id = 1; id <= 17; ++id)
    ASSERT_TRUE(Request(s, "never-" + std::to_string(id), 0, id, 1));
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::PartitionNotFound) << text;
  EXPECT_EQ(rid, 17);
  EXPECT_EQ(text, "partition 'never-17' is not registered on " + config_.node_name +
                      ", and this connection already waits for 16 partitions "
                      "(max_parked_requests); retry later");
  std::vector<std::string> states = server_->ReaderStates();
  EXPECT_EQ(states.size(), 16u);
  // The connection goes on: a cancel frees a slot, and the next request parks again.
  schema::MessageBuilder b;
  ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kCancelPartitionRequest),
                          ToBytes(b.CancelPartitionRequest(1))));
  ASSERT_TRUE(Request(s, "never-18", 0, 18, 1));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(server_->ReaderStates().size(), 16u);
  EXPECT_FALSE(Next(s, 200ms).has_value());
  ExpectServesAGoodClient();
}

// A subpartition index at or past the partition's count, up to the largest a u32 holds, fails
// that channel alone at once (ProducerFailed, which the client does not retry) and names the
// count; the connection goes on serving the others.
TEST_F(ServerHostileTest, SubpartitionPastTheEndFailsItsChannelOnly) {
  StartServer();
  auto p = Partition("two", 2);
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  auto expect_refused = [&s](uint32_t sp, uint64_t id, const std::string& count) {
    ASSERT_TRUE(Request(s, "two", sp, id, 2));
    auto [code, rid, text] = NextError(s);
    EXPECT_EQ(code, fb::ErrorCode::ProducerFailed) << text;  // permanent: no retry
    EXPECT_EQ(rid, static_cast<int64_t>(id));
    EXPECT_EQ(text, "partition 'two' has 2 subpartitions, not " + count + " or more");
  };
  expect_refused(2, 31, "3");
  expect_refused(UINT32_MAX, 32, "4294967296");
  ASSERT_TRUE(p->Emit(Bytes(50, 1), 1).ok());
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(Request(s, "two", 1, 33, 2));
  EXPECT_EQ(ReadToEnd(s, 33), 1);
  EXPECT_EQ(server_->ReaderStates().size(), 0u);  // the refused requests hold nothing
  ExpectServesAGoodClient();
}

TEST_F(ServerHostileTest, SecondRequestForASubpartitionCannotTakeOverTheFirstReader) {
  StartServer();
  auto p = Partition("shared", 1);
  RawSocket owner(server_->port());
  ASSERT_TRUE(Handshake(owner));
  ASSERT_TRUE(Request(owner, "shared", 0, 1, 4));
  std::this_thread::sleep_for(50ms);
  for (int i = 0; i < 2; ++i) {  // another connection, and the same one with a new id
    RawSocket thief(server_->port());
    ASSERT_TRUE(Handshake(thief));
    ASSERT_TRUE(Request(thief, "shared", 0, 1, 4));
    auto [code, rid, text] = NextError(thief);
    EXPECT_EQ(code, fb::ErrorCode::ProtocolViolation) << text;
    EXPECT_EQ(rid, 1);
    EXPECT_NE(text.find("already has a consumer"), std::string::npos) << text;
  }
  ASSERT_TRUE(Request(owner, "shared", 0, 2, 4));
  EXPECT_EQ(std::get<1>(NextError(owner)), 2);
  ASSERT_TRUE(p->Emit(Bytes(50, 1), 0).ok());
  ASSERT_TRUE(p->Finish().ok());
  EXPECT_EQ(ReadToEnd(owner, 1), 1);  // the first reader got everything
  ExpectServesAGoodClient();
}

// --- ErrorCodes that match their reasons -------------------------------------------------

TEST_F(ServerHostileTest, ErrorCodesNameTheReason) {
  StartServer();
  auto p = Partition("codes", 1);
  struct Case {
    const char* name;
    std::function<void(RawSocket&)> attack;
    fb::ErrorCode expected;
  };
  schema::MessageBuilder b;
  const std::vector<Case> cases = {
      {"zero credit",
       [&](RawSocket& s) {
         s.SendFrame(static_cast<uint8_t>(MessageType::kAddCredit), ToBytes(b.AddCredit(1, 0)));
       },
       fb::ErrorCode::CreditViolation},
      {"negative credit",
       [&](RawSocket& s) {
         s.SendFrame(static_cast<uint8_t>(MessageType::kAddCredit), ToBytes(b.AddCredit(1, -5)));
       },
       fb::ErrorCode::CreditViolation},
      {"absurd credit",
       [&](RawSocket& s) {
         Request(s, "codes", 0, 1, 1);
         s.SendFrame(static_cast<uint8_t>(MessageType::kAddCredit),
                     ToBytes(b.AddCredit(1, INT32_MAX)));
       },
       fb::ErrorCode::CreditViolation},
      {"negative initial credit", [&](RawSocket& s) { Request(s, "codes", 0, 1, -1); },
       fb::ErrorCode::CreditViolation},
      {"absurd initial credit", [&](RawSocket& s) { Request(s, "codes", 0, 1, INT32_MAX); },
       fb::ErrorCode::CreditViolation},
      {"unsupported version",
       [&](RawSocket& s) {
         Bytes f = transport::testutil::EncodeFrame(static_cast<uint8_t>(MessageType::kHeartbeat),
                                                    ToBytes(b.Heartbeat(1)));
         f[8] = 7;
         s.Send(f);
       },
       fb::ErrorCode::UnsupportedVersion},
      {"bad magic",
       [&](RawSocket& s) { s.Send(transport::testutil::RawHeader(12, 0x12345678, 1, 10, 0)); },
       fb::ErrorCode::ProtocolViolation},
  };
  for (const Case& c : cases) {
    RawSocket s(server_->port());
    ASSERT_TRUE(Handshake(s)) << c.name;
    c.attack(s);
    auto [code, rid, text] = NextError(s);
    EXPECT_EQ(code, c.expected) << c.name << ": " << text;
    EXPECT_EQ(rid, -1) << c.name;
    bool eof = false;
    s.ReadUntilClosed(5s, &eof);
    EXPECT_TRUE(eof) << c.name << ": the connection should close";
  }
  ExpectServesAGoodClient();
}

// --- Bounds -------------------------------------------------------------------------------

// A peer that keeps sending StatsRequests and never reads the (large) replies is closed once
// its unread replies pass the bound; the attacker reconnects and does it again for seconds.
TEST_F(ServerHostileTest, UnreadControlRepliesAreCappedAndThePeerClosed) {
  config_.write_high_water_bytes = 1u << 20;
  config_.max_unread_control_bytes = 2u << 20;
  StartServer();
  control_.reply_bytes = 60000;
  const Bytes req = transport::testutil::EncodeFrame(
      static_cast<uint8_t>(MessageType::kStatsRequest), StatsRequest());
  const uint64_t rss_before = VmRssBytes();
  const auto end = std::chrono::steady_clock::now() + 4s;
  int rounds = 0;
  while (std::chrono::steady_clock::now() < end) {
    RawSocket s(server_->port(), /*rcvbuf=*/4096);
    ASSERT_TRUE(Handshake(s));
    // Up to 3000 requests ask for 180 MB of replies; none is read. Sent in small batches, so
    // that the replies come back between them (below the outstanding-request bound) and pile
    // up unread on the server.
    for (int i = 0; i < 3000; ++i) {
      if (!s.Send(req)) break;  // the server closed us: that is the answer
      if (i % 16 == 15) std::this_thread::sleep_for(1ms);
    }
    bool eof = false;
    s.ReadUntilClosed(10s, &eof);
    ASSERT_TRUE(eof) << "round " << rounds << ": the server kept the connection open";
    ++rounds;
  }
  const uint64_t rss_after = VmRssBytes();
  EXPECT_GE(server_->stats().control_peers_closed.load(), static_cast<uint64_t>(rounds));
  ExpectRssGrowthBounded(rss_before, rss_after,
                         std::to_string(rounds) + " rounds of unread replies");
  // A peer that reads its replies is served.
  RawSocket good(server_->port());
  ASSERT_TRUE(Handshake(good));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(good.Send(req));
    auto f = Next(good);
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->header.type, static_cast<uint8_t>(MessageType::kStatsResponse));
    EXPECT_EQ(f->metadata.size(), 60000u);
  }
  ExpectServesAGoodClient();
}

// Refused PartitionRequests are answered at once with an ErrorResponse each. A peer that
// sends them in a loop and never reads the answers is closed once its unread replies pass the
// same bound as control replies, instead of growing the server's memory; other peers are
// served.
TEST_F(ServerHostileTest, UnreadErrorRepliesToRefusedRequestsAreCappedAndThePeerClosed) {
  config_.write_high_water_bytes = 64u << 10;
  config_.max_unread_control_bytes = 256u << 10;
  StartServer();
  ASSERT_NE(Partition("victim", 1), nullptr);
  RawSocket s(server_->port(), /*rcvbuf=*/4096);
  ASSERT_TRUE(Handshake(s));
  // Subpartition 7 of a one-subpartition partition: PartitionNotFound, about 150 bytes each;
  // 80,000 of them would queue about 12 MB, more than the kernel's socket buffers take (4 MB
  // each way at most by default) plus the server's bound.
  int sent = 0;
  for (; sent < 80000; ++sent) {
    if (!Request(s, "victim", 7, 1, 1)) break;  // the server closed us: that is the answer
  }
  // Not read meanwhile: reading the replies would drain the server's queue. A slow server
  // (TSan) may still be working through requests in the socket buffers when the loop ends.
  EXPECT_TRUE(testutil::PollUntil(
      [&] { return server_->stats().control_peers_closed.load() >= 1; }, 60s, 5ms));
  bool eof = false;
  s.ReadUntilClosed(10s, &eof);
  EXPECT_TRUE(eof) << "the server kept a peer open that left " << sent << " replies unread";
  EXPECT_EQ(server_->stats().control_peers_closed.load(), 1u);
  ExpectServesAGoodClient();
}

TEST_F(ServerHostileTest, TooManyOutstandingControlRequestsCloseThePeer) {
  config_.max_outstanding_control_requests = 8;
  StartServer();
  control_.hold = true;  // the service never answers
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  for (int i = 0; i < 9; ++i) {
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kStatsRequest), StatsRequest()));
  }
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::ProtocolViolation);
  EXPECT_NE(text.find("max_outstanding_control_requests"), std::string::npos) << text;
  bool eof = false;
  s.ReadUntilClosed(5s, &eof);
  EXPECT_TRUE(eof);
  EXPECT_EQ(control_.requests(), 8u);
  EXPECT_EQ(server_->stats().control_peers_closed.load(), 1u);
  control_.hold = false;
  control_.DropHeld();
  ExpectServesAGoodClient();
}

TEST_F(ServerHostileTest, AControlReplyOverTheFrameLimitIsAnErrorNotAnAbort) {
  StartServer();
  control_.reply_bytes = 70000;  // over the 65,535-byte metadata limit
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kStatsRequest), StatsRequest()));
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::Internal);
  EXPECT_NE(text.find("too large to send"), std::string::npos) << text;
  // The connection goes on: a reply that fits arrives on it.
  control_.reply_bytes = 1000;
  ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kStatsRequest), StatsRequest()));
  auto f = Next(s);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->header.type, static_cast<uint8_t>(MessageType::kStatsResponse));
  ExpectServesAGoodClient();
}

TEST(ProtocolTest, TryMakeFrameRefusesWhatAFrameCannotCarry) {
  const std::vector<uint8_t> big(70000, 1);
  auto f = TryMakeFrame(MessageType::kJobStatusResponse, big);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("JobStatusResponse"), std::string::npos)
      << f.status().message();
  buffer::Buffer payload = buffer::AllocateUnpooled(2 * kSegment, buffer::DataType::kData);
  payload.SetSize(2 * kSegment);
  auto g = TryMakeFrame(MessageType::kBufferResponse, std::vector<uint8_t>(16, 0),
                        std::move(payload), kSegment);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().message().find("at most one segment (4096 bytes)"), std::string::npos)
      << g.status().message();
  auto h = TryMakeFrame(MessageType::kStatsResponse, std::vector<uint8_t>(65535, 1));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->total_bytes(), 12u + 65535u);
}

// A socket connected from another loopback address (Linux routes all of 127/8 to lo).
std::unique_ptr<RawSocket> ConnectFrom(const char* local_ip, uint16_t port) {
  const int fd = testutil::ConnectFromLoopback(local_ip, port);
  if (fd < 0) return nullptr;
  return std::make_unique<RawSocket>(RawSocket::AdoptFd{fd});
}

TEST_F(ServerHostileTest, PerPeerConnectionCapKeepsOtherPeersServed) {
  config_.max_connections_per_peer = 8;
  StartServer();
  const uint64_t rss_before = VmRssBytes();
  const auto end = std::chrono::steady_clock::now() + 3s;
  uint64_t refused = 0;
  while (std::chrono::steady_clock::now() < end) {
    std::vector<std::unique_ptr<RawSocket>> held;
    for (int i = 0; i < 40; ++i) {
      auto s = ConnectFrom("127.0.0.2", server_->port());
      ASSERT_NE(s, nullptr);
      held.push_back(std::move(s));
    }
    // The server closes every one over the cap at once.
    uint64_t closed = 0;
    for (auto& s : held) {
      bool eof = false;
      s->ReadUntilClosed(100ms, &eof);
      closed += eof ? 1 : 0;
    }
    EXPECT_EQ(closed, 32u);
    refused += 32;
    // Meanwhile another address is served.
    ExpectServesAGoodClient();
    held.clear();
    testutil::PollUntil([&] { return server_->connection_count() == 0; }, 5s, 2ms);
  }
  EXPECT_EQ(server_->metrics()->connections_refused_per_peer.load(), refused);
  EXPECT_EQ(server_->metrics()->connections_refused.load(), 0u);
  const uint64_t rss_after = VmRssBytes();
  ExpectRssGrowthBounded(rss_before, rss_after, "connections over the per-peer cap");
}

// Hundreds of connections that send a Hello and stop: each holds a few KiB of buffers (not the
// 128 KiB an authenticated connection may grow to), and a Hello with more metadata than the
// handshake needs is refused before it is buffered.
TEST_F(ServerHostileTest, UnauthenticatedConnectionsHoldAFewKiB) {
  config_.max_connections_per_peer = 0;
  StartServer();
  const uint64_t rss_before = VmRssBytes();
  std::vector<std::unique_ptr<RawSocket>> held;
  schema::MessageBuilder b;
  const auth::Nonce nonce = auth::MakeNonce();
  schema::HandshakeFields f;
  f.segment_size = kSegment;
  f.node_name = "idle";
  f.nonce = nonce;
  const Bytes hello = ToBytes(b.Hello(f));
  const auto end = std::chrono::steady_clock::now() + 3s;
  while (held.size() < 400 || std::chrono::steady_clock::now() < end) {
    if (held.size() < 400) {
      auto s = std::make_unique<RawSocket>(server_->port());
      ASSERT_TRUE(s->connected());
      ASSERT_TRUE(s->SendFrame(static_cast<uint8_t>(MessageType::kHello), hello));
      held.push_back(std::move(s));
    } else {
      std::this_thread::sleep_for(50ms);
    }
  }
  testutil::PollUntil([&] { return server_->connection_count() >= 400; }, 5s, 5ms);
  EXPECT_EQ(server_->connection_count(), 400u);
  size_t largest = 0;
  std::this_thread::sleep_for(100ms);  // let the last Hellos be read
  server_->ForEachConnection([&](transport::Connection& c) {
    EXPECT_FALSE(c.established());
    largest = std::max(largest, c.buffer_bytes());
  });
  EXPECT_LE(largest, 8u << 10) << "bytes of buffers held by an unauthenticated connection";
  std::printf("largest buffers of an unauthenticated connection: %zu bytes\n", largest);
  const uint64_t rss_after = VmRssBytes();
  ExpectRssGrowthBounded(rss_before, rss_after, "400 unauthenticated connections");
  // A Hello padded to 20 KiB of metadata is refused (FrameTooLong) before it is buffered.
  RawSocket big(server_->port());
  Bytes padded = hello;
  padded.resize(20000, 0);
  ASSERT_TRUE(big.SendFrame(static_cast<uint8_t>(MessageType::kHello), padded));
  auto [code, rid, text] = NextError(big);
  EXPECT_EQ(code, fb::ErrorCode::ProtocolViolation);
  EXPECT_NE(text.find("before the handshake"), std::string::npos) << text;
  EXPECT_EQ(server_->metrics()->protocol_errors_of(transport::FrameError::kFrameTooLong), 1u);
  held.clear();
  ExpectServesAGoodClient();
}


// --- Buffer debloating's BufferSizeAnnouncement (MessageType 12) ---------------------------

// BufferResponse payload sizes of `id` up to its end of partition (BacklogAnnouncements are
// passed over); empty on anything else.
std::vector<uint32_t> DataSizesToEnd(RawSocket& s, uint64_t id) {
  std::vector<uint32_t> sizes;
  while (auto f = s.ReadFrame(5s, static_cast<uint8_t>(MessageType::kHeartbeat))) {
    if (f->header.type == static_cast<uint8_t>(MessageType::kBacklogAnnouncement)) continue;
    if (f->header.type != static_cast<uint8_t>(MessageType::kBufferResponse)) return {};
    auto m = schema::ParseBufferResponse(f->metadata, kSegment);
    if (!m.ok() || (*m)->receiver_id() != id) return {};
    if ((*m)->data_type() == fb::DataType::EndOfPartition) return sizes;
    sizes.push_back(static_cast<uint32_t>(f->payload.size()));
  }
  return {};
}

// Sizes are clamped into [1 KiB, segment] (never refused), an unknown receiver is ignored, the
// sender then cuts buffers at the size; 0 is a ProtocolViolation that closes the connection.
TEST_F(ServerHostileTest, BufferSizeAnnouncementIsClampedAndZeroCloses) {
  StartServer();
  auto p = Partition("debloat", 1);
  ASSERT_NE(p, nullptr);
  RawSocket s(server_->port());
  ASSERT_TRUE(Handshake(s));
  ASSERT_TRUE(Request(s, "debloat", 0, 31, 0));
  schema::MessageBuilder b;
  auto announce = [&](uint64_t id, uint32_t size) {
    return s.SendFrame(static_cast<uint8_t>(MessageType::kBufferSizeAnnouncement),
                       ToBytes(b.BufferSizeAnnouncement(id, size)));
  };
  ASSERT_TRUE(announce(31, 1));  // below the minimum: raised to 1 KiB
  ASSERT_TRUE(testutil::PollUntil([&] { return p->buffer_size(0) == 1024; }, 5s, 1ms));
  // ceil(max_buffers_per_channel 10 x 1024 / 4096) = 3 queued buffers at most.
  EXPECT_EQ(p->Stats().subpartitions[0].queue_cap, 3u);
  ASSERT_TRUE(announce(31, UINT32_MAX));  // above a segment: the segment (debloating off)
  ASSERT_TRUE(testutil::PollUntil([&] { return p->buffer_size(0) == kSegment; }, 5s, 1ms));
  EXPECT_EQ(p->Stats().subpartitions[0].queue_cap, 0u);
  ASSERT_TRUE(announce(999, 1500));  // no such receiver: ignored
  ASSERT_TRUE(announce(31, 2000));
  ASSERT_TRUE(testutil::PollUntil([&] { return p->buffer_size(0) == 2000; }, 5s, 1ms));
  // Six records of 600 bytes (604 with the prefix) in one batch: the buffer ends at the first
  // record that reaches 2000 bytes (4 records, 2416), the rest (1208) with Finish.
  const Bytes record(600, 3);
  std::vector<std::span<const uint8_t>> batch(6, std::span<const uint8_t>(record));
  ASSERT_TRUE(p->EmitBatch(batch, 0).ok());
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kAddCredit), ToBytes(b.AddCredit(31, 4))));
  EXPECT_EQ(DataSizesToEnd(s, 31), (std::vector<uint32_t>{2416, 1208}));
  // Zero: refused, and the connection closes.
  ASSERT_TRUE(announce(31, 0));
  auto [code, rid, text] = NextError(s);
  EXPECT_EQ(code, fb::ErrorCode::ProtocolViolation) << text;
  EXPECT_EQ(rid, -1);
  EXPECT_NE(text.find("buffer_size 0"), std::string::npos) << text;
  bool eof = false;  // closed, not merely silent (heartbeats are off here)
  s.ReadUntilClosed(5s, &eof);
  EXPECT_TRUE(eof) << "the connection stayed open after buffer_size 0";
  ExpectServesAGoodClient();
}

}  // namespace
}  // namespace sluice::shuffle
