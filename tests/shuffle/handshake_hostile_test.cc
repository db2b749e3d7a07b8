// The handshake under attack, end to end on loopback (shuffle/handshake.h):
// - a raw client sends each message type before it has authenticated (before the Hello, and
//   after the Hello without the proof) to a real ShuffleEnvironment: AuthenticationFailed and a
//   close, nothing served, the server serves a good client afterwards, no segment leaks;
// - a fake server (a raw listening socket) sends data, backlog or errors to a consumer
//   ShuffleEnvironment's gate before it has proved the secret: the channel fails with an error
//   naming the peer, no record is delivered, no segment leaks.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "schema/control.h"
#include "shuffle/record_reader.h"
#include "shuffle/record_serializer.h"
#include "shuffle/remote_input_channel.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "shuffle_test_util.h"
#include "testutil/wait.h"
#include "testutil/leak_check.h"
#include "testutil/loopback.h"
#include "testutil/wait.h"
#include "transport/raw_socket.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using schema::MessageType;
using transport::testutil::Bytes;
using transport::testutil::EncodeFrame;
using transport::testutil::RawSocket;

constexpr uint32_t kSegment = 4096;
constexpr uint8_t kHeartbeat = static_cast<uint8_t>(MessageType::kHeartbeat);

using testing::StartEnv;

EnvironmentConfig Config(const std::string& name, bool listen) {
  EnvironmentConfig c = testing::TestEnvironmentConfig(name, 2u << 20, kSegment);
  c.listen = listen;
  return c;
}

void ExpectNoLeak(ShuffleEnvironment* env) {
  testutil::ExpectAllSegmentsBack(*env->pool(), env->config().node_name);
}

// Counts control requests that get through; none may before authentication.
class CountingControl final : public ControlService {
 public:
  void OnControlRequest(MessageType, std::span<const uint8_t>, const std::string&,
                        ControlReply reply) override {
    calls.fetch_add(1);
    reply(MessageType::kControlResult, {});
  }
  std::atomic<int> calls{0};
};

Bytes Copy(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

// One message of each type a client may send only after authenticating.
struct PreAuthCase {
  const char* name;
  MessageType type;
  Bytes message;
};

std::vector<PreAuthCase> PreAuthCases() {
  schema::MessageBuilder b;
  std::vector<PreAuthCase> out;
  out.push_back({"PartitionRequest", MessageType::kPartitionRequest,
                 Copy(b.PartitionRequest("p0", 0, 7, 2))});
  out.push_back({"AddCredit", MessageType::kAddCredit, Copy(b.AddCredit(7, 5))});
  out.push_back({"CancelPartitionRequest", MessageType::kCancelPartitionRequest,
                 Copy(b.CancelPartitionRequest(7))});
  flatbuffers::FlatBufferBuilder fbb(64);
  fbb.Finish(fb::CreateStatsRequest(fbb));
  out.push_back({"StatsRequest", MessageType::kStatsRequest,
                 Bytes(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize())});
  out.push_back({"ErrorResponse", MessageType::kErrorResponse,
                 Copy(b.ErrorResponse(fb::ErrorCode::ProtocolViolation, "hostile", 7))});
  out.push_back({"CloseRequest", MessageType::kCloseRequest, Copy(b.CloseRequest())});
  out.push_back({"BufferSizeAnnouncement", MessageType::kBufferSizeAnnouncement,
                 Copy(b.BufferSizeAnnouncement(7, 4096))});
  return out;
}

// Hello with a fresh nonce (a client that claims to hold a secret); returns the nonce.
auth::Nonce SendHello(RawSocket& s) {
  const auth::Nonce nonce = auth::MakeNonce();
  schema::HandshakeFields f;
  f.segment_size = kSegment;
  f.node_name = "hostile";
  f.nonce = nonce;
  schema::MessageBuilder b;
  EXPECT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kHello), Copy(b.Hello(f))));
  return nonce;
}

// The server's answer was ErrorResponse `code` (text containing `text`), then the close.
void ExpectRefusedAndClosed(RawSocket& s, fb::ErrorCode code, const std::string& text) {
  auto frame = s.ReadFrame(5s, kHeartbeat);
  ASSERT_TRUE(frame.has_value()) << "no answer from the server";
  ASSERT_EQ(frame->header.type, static_cast<uint8_t>(MessageType::kErrorResponse));
  auto e = schema::ParseErrorResponse(frame->metadata);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ((*e)->code(), code) << fb::EnumNameErrorCode((*e)->code());
  ASSERT_NE((*e)->message(), nullptr);
  EXPECT_NE((*e)->message()->str().find(text), std::string::npos) << (*e)->message()->str();
  EXPECT_FALSE((*e)->receiver_id().has_value());
  bool eof = false;
  s.ReadUntilClosed(5s, &eof);
  EXPECT_TRUE(eof) << "the server kept the connection open";
}

// A real consumer with the secret reads p0/0 to its end: `records` records.
void ExpectGoodClientServed(ShuffleEnvironment* prod, uint64_t records) {
  auto cons = StartEnv(Config("good-consumer", false));
  ASSERT_TRUE(cons);
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("good", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  uint64_t got = 0;
  {
    RecordReader reader(gate->get());
    while (true) {
      auto item = reader.Next(10s);
      ASSERT_TRUE(item.ok()) << item.status().ToString();
      ASSERT_NE(item->kind, RecordReader::Kind::kTimeout);
      if (item->kind == RecordReader::Kind::kEndOfInput) break;
      if (item->kind != RecordReader::Kind::kRecord) continue;
      auto rec = testing::ParseRecord(item->data.data(), item->data.size());
      EXPECT_TRUE(rec.valid);
      EXPECT_EQ(rec.seq, got);
      ++got;
    }
  }
  EXPECT_EQ(got, records);
  (*gate)->Close();
  cons->Stop();
  ExpectNoLeak(cons.get());
}

// A producer with p0 (one subpartition, `records` records, finished) and a control service.
struct Producer {
  explicit Producer(bool auth_off = false, uint64_t n = 200) : records(n) {
    EnvironmentConfig c = Config("producer", true);
    if (auth_off) c.auth = auth::AuthConfig{"", true};
    c.control = &control;
    env = StartEnv(c);
    if (!env) return;
    auto p = env->CreatePartition("p0", 1);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return;
    for (uint64_t i = 0; i < records; ++i) {
      EXPECT_TRUE((*p)->Emit(testing::MakeRecord(0, 0, i, 100), 0).ok());
    }
    EXPECT_TRUE((*p)->Finish().ok());
  }
  // The good client is served, then everything is released and checked.
  void FinishAndCheck() {
    ExpectGoodClientServed(env.get(), records);
    EXPECT_EQ(control.calls.load(), 0);
    env->ReleasePartition("p0");
    testutil::PollUntil([&] { return env->server()->connection_count() == 0; }, 5s, 5ms);
    EXPECT_EQ(env->server()->connection_count(), 0u);
    env->Stop();
    ExpectNoLeak(env.get());
  }
  uint64_t auth_failures() const { return env->server()->stats().auth_failures.load(); }
  uint64_t requests() const { return env->server()->stats().requests.load(); }

  CountingControl control;
  uint64_t records;
  std::unique_ptr<ShuffleEnvironment> env;
};

class PreAuthMessageTest : public ::testing::TestWithParam<int> {};

TEST_P(PreAuthMessageTest, BeforeHelloGetsAuthenticationFailedAndClose) {
  const PreAuthCase c = PreAuthCases()[static_cast<size_t>(GetParam())];
  SCOPED_TRACE(c.name);
  Producer prod;
  ASSERT_TRUE(prod.env);
  {
    RawSocket s(prod.env->port());
    ASSERT_TRUE(s.connected());
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(c.type), c.message));
    ExpectRefusedAndClosed(s, fb::ErrorCode::AuthenticationFailed,
                           "authentication required: producer serves nothing but the handshake");
  }
  EXPECT_EQ(prod.auth_failures(), 1u);
  EXPECT_EQ(prod.requests(), 0u);
  prod.FinishAndCheck();
}

TEST_P(PreAuthMessageTest, AfterHelloWithoutProofGetsAuthenticationFailedAndClose) {
  const PreAuthCase c = PreAuthCases()[static_cast<size_t>(GetParam())];
  SCOPED_TRACE(c.name);
  Producer prod;
  ASSERT_TRUE(prod.env);
  {
    RawSocket s(prod.env->port());
    ASSERT_TRUE(s.connected());
    SendHello(s);
    auto ack = s.ReadFrame(5s, kHeartbeat);
    ASSERT_TRUE(ack.has_value());
    ASSERT_EQ(ack->header.type, static_cast<uint8_t>(MessageType::kHelloAck));
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(c.type), c.message));
    ExpectRefusedAndClosed(s, fb::ErrorCode::AuthenticationFailed,
                           "got " + std::string(c.name));
  }
  EXPECT_EQ(prod.auth_failures(), 1u);
  EXPECT_EQ(prod.requests(), 0u);
  prod.FinishAndCheck();
}

INSTANTIATE_TEST_SUITE_P(EachType, PreAuthMessageTest,
                         ::testing::Range(0, static_cast<int>(PreAuthCases().size())),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(PreAuthCases()[static_cast<size_t>(i.param)].name);
                         });

TEST(HandshakeHostileTest, AuthOffServerStillNeedsTheHelloFirst) {
  Producer prod(/*auth_off=*/true);
  ASSERT_TRUE(prod.env);
  {
    RawSocket s(prod.env->port());
    schema::MessageBuilder b;
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kPartitionRequest),
                            Copy(b.PartitionRequest("p0", 0, 7, 2))));
    ExpectRefusedAndClosed(s, fb::ErrorCode::AuthenticationFailed, "before the Hello");
  }
  EXPECT_EQ(prod.auth_failures(), 1u);
  EXPECT_EQ(prod.requests(), 0u);
  // A consumer with the secret is refused by a server without one: use an auth-off consumer.
  auto cons_cfg = Config("good-consumer", false);
  cons_cfg.auth = auth::AuthConfig{"", true};
  auto cons = StartEnv(cons_cfg);
  ASSERT_TRUE(cons);
  auto gate = cons->CreateInputGate("good", {{"p0", 0, prod.env->endpoint()}});
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  uint64_t got = 0;
  {
    RecordReader reader(gate->get());
    while (true) {
      auto item = reader.Next(10s);
      ASSERT_TRUE(item.ok()) << item.status().ToString();
      ASSERT_NE(item->kind, RecordReader::Kind::kTimeout);
      if (item->kind == RecordReader::Kind::kEndOfInput) break;
      if (item->kind == RecordReader::Kind::kRecord) ++got;
    }
  }
  EXPECT_EQ(got, prod.records);
  (*gate)->Close();
  cons->Stop();
  ExpectNoLeak(cons.get());
  prod.env->ReleasePartition("p0");
  prod.env->Stop();
  ExpectNoLeak(prod.env.get());
}

TEST(HandshakeHostileTest, WrongProofAndMissingNonceAreRefused) {
  Producer prod;
  ASSERT_TRUE(prod.env);
  {
    // A proof made with another secret.
    RawSocket s(prod.env->port());
    const auth::Nonce nonce = SendHello(s);
    auto ack = s.ReadFrame(5s, kHeartbeat);
    ASSERT_TRUE(ack.has_value());
    auto m = schema::ParseHelloAck(ack->metadata);
    ASSERT_TRUE(m.ok());
    ASSERT_NE((*m)->nonce(), nullptr);
    const std::span<const uint8_t> server_nonce((*m)->nonce()->data(), (*m)->nonce()->size());
    const auth::Proof wrong = auth::MakeProof("not-the-cluster-secret!", auth::kClientRole,
                                              server_nonce, nonce);
    schema::MessageBuilder b;
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kAuthResponse),
                            Copy(b.AuthResponse(wrong))));
    ExpectRefusedAndClosed(s, fb::ErrorCode::AuthenticationFailed, "proof does not match");
  }
  {
    // A Hello without a nonce (a client without a secret), then an empty proof.
    RawSocket s(prod.env->port());
    schema::HandshakeFields f;
    f.segment_size = kSegment;
    schema::MessageBuilder b;
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kHello), Copy(b.Hello(f))));
    auto ack = s.ReadFrame(5s, kHeartbeat);
    ASSERT_TRUE(ack.has_value());
    ASSERT_EQ(ack->header.type, static_cast<uint8_t>(MessageType::kHelloAck));
    ASSERT_TRUE(s.SendFrame(static_cast<uint8_t>(MessageType::kAuthResponse),
                            Copy(b.AuthResponse({}))));
    ExpectRefusedAndClosed(s, fb::ErrorCode::AuthenticationFailed, "proof does not match");
  }
  EXPECT_EQ(prod.auth_failures(), 2u);
  prod.FinishAndCheck();
}

TEST(HandshakeHostileTest, StartRefusesAnEmptySecretWithoutAuthOff) {
  EnvironmentConfig c = Config("no-secret", true);
  c.auth = {};
  auto env = ShuffleEnvironment::Start(c);
  ASSERT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(env.status().message().find("auth.secret"), std::string::npos)
      << env.status().message();
  EXPECT_NE(env.status().message().find("auth.off"), std::string::npos);

  auto loop = transport::EventLoop::Start("hostile-io");
  ASSERT_TRUE(loop.ok());
  PartitionRegistry registry;
  ShuffleServerConfig sc;
  sc.node_name = "bare-server";
  auto server = ShuffleServer::Start(loop->get(), &registry, sc);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("ShuffleServer 'bare-server': no shared secret; set "
                                           "auth.secret"),
            std::string::npos)
      << server.status().message();
  EXPECT_NE(server.status().message().find("auth.off"), std::string::npos);
  (*loop)->Stop();
}

// A listening socket that plays a hostile producer for one connection.
class FakeServer {
 public:
  FakeServer() {
    listen_fd_ = testutil::ListenOnLoopback(4, &port_);
    EXPECT_GE(listen_fd_, 0) << "cannot listen on loopback";
  }
  ~FakeServer() {
    if (fd_ >= 0) ::close(fd_);
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }
  bool Accept() {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    fd_ = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    return fd_ >= 0;
  }
  // The next frame's header and metadata (payloads are not expected from a client).
  std::optional<std::pair<uint8_t, Bytes>> ReadFrame() {
    uint8_t head[transport::kFrameHeaderSize];
    if (!ReadExactly(head, sizeof(head))) return std::nullopt;
    const auto h = transport::DecodeFrameHeader(
        std::span<const uint8_t, transport::kFrameHeaderSize>(head, sizeof(head)));
    Bytes meta(h.metadata_length);
    if (!ReadExactly(meta.data(), meta.size())) return std::nullopt;
    return std::make_pair(h.type, std::move(meta));
  }
  bool Send(MessageType type, std::span<const uint8_t> meta, const Bytes& payload = {}) {
    const Bytes frame = EncodeFrame(static_cast<uint8_t>(type), Copy(meta), payload);
    return ::send(fd_, frame.data(), frame.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(frame.size());
  }

 private:
  bool ReadExactly(uint8_t* p, size_t n) {
    while (n > 0) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 5000) != 1) return false;
      const ssize_t r = ::recv(fd_, p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  int listen_fd_ = -1;
  int fd_ = -1;
  uint16_t port_ = 0;
};

enum class FakeScript {
  kDataBeforeHelloAck,          // BufferResponse and BacklogAnnouncement, no HelloAck
  kDataAfterWrongProof,         // HelloAck with a proof made with another secret, then data
  kDataAfterNoProof,            // HelloAck without nonce or proof (auth off), then data
  kChannelErrorBeforeHelloAck,  // ErrorResponse PartitionNotFound for the victim's receiver
};

// Data and a backlog for the victim's receiver id: a well-formed record in a checksummed buffer.
void SendInjectedData(FakeServer& fake, uint64_t receiver_id) {
  schema::MessageBuilder b;
  const Bytes record = testing::MakeRecord(0, 0, 0, 64);
  Bytes payload(4 + record.size());
  StoreRecordLength(payload.data(), static_cast<uint32_t>(record.size()));
  std::memcpy(payload.data() + 4, record.data(), record.size());
  schema::BufferResponseFields f;
  f.receiver_id = receiver_id;
  f.payload_size = static_cast<uint32_t>(payload.size());
  // The consumer may already have closed the connection (it refused the HelloAck): then the
  // sends fail, which is as good. What the test checks is that nothing sent is delivered.
  (void)fake.Send(MessageType::kBufferResponse, b.BufferResponse(f), payload);
  (void)fake.Send(MessageType::kBacklogAnnouncement, b.BacklogAnnouncement(receiver_id, 5));
}

// Runs `script` against a consumer gate; returns the gate's error (ok if none came).
Status RunAgainstFakeServer(FakeScript script, uint64_t* records_delivered) {
  FakeServer fake;
  auto cons = StartEnv(Config("victim-consumer", false));
  if (!cons) return Status(StatusCode::kInternal, "no consumer");
  auto gate = cons->CreateInputGate("victim", {{"p0", 0, transport::Endpoint{"127.0.0.1",
                                                                             fake.port()}}});
  EXPECT_TRUE(gate.ok()) << gate.status().ToString();
  if (!gate.ok()) return gate.status();
  // The attacker knows the receiver id (it is a counter): the injected frames address it.
  const uint64_t receiver =
      dynamic_cast<RemoteInputChannel*>((*gate)->channel(0))->receiver_id();
  EXPECT_TRUE(fake.Accept());
  auto hello = fake.ReadFrame();
  EXPECT_TRUE(hello.has_value());
  EXPECT_EQ(hello ? hello->first : 0, static_cast<uint8_t>(MessageType::kHello));
  schema::MessageBuilder b;
  if (script == FakeScript::kDataBeforeHelloAck) {
    SendInjectedData(fake, receiver);
  } else if (script == FakeScript::kChannelErrorBeforeHelloAck) {
    fake.Send(MessageType::kErrorResponse,
              b.ErrorResponse(fb::ErrorCode::PartitionNotFound, "go away", receiver));
  } else if (script == FakeScript::kDataAfterNoProof) {
    schema::HandshakeFields f;
    f.segment_size = kSegment;
    fake.Send(MessageType::kHelloAck, b.HelloAck(f));
    SendInjectedData(fake, receiver);
  } else {
    const auth::Nonce nonce = auth::MakeNonce();
    const auth::Proof wrong = auth::MakeProof("not-the-cluster-secret!", auth::kServerRole,
                                              nonce, nonce);
    schema::HandshakeFields f;
    f.segment_size = kSegment;
    f.nonce = nonce;
    f.auth_proof = wrong;
    fake.Send(MessageType::kHelloAck, b.HelloAck(f));
    SendInjectedData(fake, receiver);
  }
  Status error;
  {
    RecordReader reader(gate->get());
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto item = reader.Next(1s);
      if (!item.ok()) {
        error = item.status();
        break;
      }
      if (item->kind == RecordReader::Kind::kRecord) ++*records_delivered;
      EXPECT_NE(item->kind, RecordReader::Kind::kEndOfInput);
    }
  }
  EXPECT_FALSE((*gate)->IsFinished());
  // The consumer closed the whole connection itself, before anything here closes it.
  EXPECT_TRUE(testutil::PollUntil([&] { return cons->client().connection_count() == 0; }, 5s,
                                  std::chrono::milliseconds(5)))
      << cons->client().connection_count() << " connection(s) still open after the refusal";
  (*gate)->Close();
  cons->Stop();
  EXPECT_EQ(cons->client().connection_count(), 0u);
  ExpectNoLeak(cons.get());
  return error;
}

// Runs `script` against a consumer: nothing is delivered, the channel fails, and its error
// names `peer` and says `why`.
void ExpectConsumerRefuses(FakeScript script, const std::string& peer, const std::string& why) {
  uint64_t delivered = 0;
  const Status error = RunAgainstFakeServer(script, &delivered);
  EXPECT_EQ(delivered, 0u);
  ASSERT_FALSE(error.ok()) << "the channel did not fail";
  EXPECT_NE(error.message().find(peer), std::string::npos) << error.message();
  EXPECT_NE(error.message().find(why), std::string::npos) << error.message();
}

TEST(HandshakeHostileTest, ConsumerRefusesDataBeforeHelloAck) {
  ExpectConsumerRefuses(FakeScript::kDataBeforeHelloAck, "producer 127.0.0.1:",
                        "sent BufferResponse before it completed the handshake");
}

TEST(HandshakeHostileTest, ConsumerRefusesAServerWithTheWrongProof) {
  ExpectConsumerRefuses(FakeScript::kDataAfterWrongProof, "producer 127.0.0.1:",
                        "failed authentication");
}

TEST(HandshakeHostileTest, ConsumerRefusesAServerThatProvesNoSecret) {
  ExpectConsumerRefuses(FakeScript::kDataAfterNoProof, "producer 127.0.0.1:",
                        "did not prove the shared secret");
}

TEST(HandshakeHostileTest, ErrorResponseBeforeHelloAckClosesTheWholeConnection) {
  // Not a PartitionNotFound retry of one channel: the connection is refused as a whole.
  ExpectConsumerRefuses(FakeScript::kChannelErrorBeforeHelloAck, "127.0.0.1:",
                        "refused the handshake with PartitionNotFound: go away");
}

}  // namespace
}  // namespace sluice::shuffle
