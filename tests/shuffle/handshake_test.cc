// Both halves of the handshake (shuffle/handshake.h) without sockets: messages are built with
// schema::MessageBuilder, parsed, and handed from one half to the other, with real HMACs.
#include "shuffle/handshake.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "schema/messages.h"
#include "shuffle/auth.h"
#include "shuffle_test_util.h"

namespace sluice::shuffle {
namespace {

using schema::MessageType;

constexpr uint32_t kSegment = 4096;
const auth::AuthConfig kOn = testing::TestAuth();
const auth::AuthConfig kOther{"another-secret-of-the-right-length", false};
const auth::AuthConfig kOff{"", true};

using Bytes = std::vector<uint8_t>;
Bytes Copy(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

Bytes HelloBytes(const schema::HandshakeFields& f) {
  schema::MessageBuilder b;
  return Copy(b.Hello(f));
}
Bytes HelloAckBytes(const schema::HandshakeFields& f) {
  schema::MessageBuilder b;
  return Copy(b.HelloAck(f));
}
Bytes AuthResponseBytes(std::span<const uint8_t> proof) {
  schema::MessageBuilder b;
  return Copy(b.AuthResponse(proof));
}
const fb::Hello& AsHello(const Bytes& b) {
  auto m = schema::ParseHello(b);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return **m;
}
const fb::HelloAck& AsHelloAck(const Bytes& b) {
  auto m = schema::ParseHelloAck(b);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return **m;
}
const fb::AuthResponse& AsAuthResponse(const Bytes& b) {
  auto m = schema::ParseAuthResponse(b);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return **m;
}

// One connection: both halves and the bytes that passed between them.
struct Exchange {
  Exchange(const auth::AuthConfig& client_auth, const auth::AuthConfig& server_auth,
           uint32_t client_segment = kSegment)
      : client(client_auth, client_segment, "consumer", "10.0.0.2:7000"),
        server(server_auth, kSegment, "producer-node", "10.0.0.1:40000") {}

  // Hello to the server; the HelloAck bytes kept when it answers.
  HandshakeResult SendHello() {
    hello = HelloBytes(client.Hello());
    schema::HandshakeFields ack;
    HandshakeResult r = server.OnHello(AsHello(hello), &ack);
    if (!r) hello_ack = HelloAckBytes(ack);
    return r;
  }
  HandshakeResult DeliverAck() { return client.OnHelloAck(AsHelloAck(hello_ack), &response); }
  HandshakeResult SendResponse() {
    EXPECT_TRUE(response.has_value());
    auth_response = AuthResponseBytes(*response);
    return server.OnAuthResponse(AsAuthResponse(auth_response));
  }

  ClientHandshake client;
  ServerHandshake server;
  Bytes hello, hello_ack, auth_response;
  std::optional<auth::Proof> response;
};

void ExpectRefused(const HandshakeResult& r, fb::ErrorCode code, const std::string& text) {
  ASSERT_TRUE(r.has_value()) << "expected " << fb::EnumNameErrorCode(code);
  EXPECT_EQ(r->code, code) << r->message;
  EXPECT_NE(r->message.find(text), std::string::npos) << r->message;
}

const MessageType kAfterHandshake[] = {
    MessageType::kPartitionRequest, MessageType::kAddCredit,
    MessageType::kBufferResponse,   MessageType::kBacklogAnnouncement,
    MessageType::kCancelPartitionRequest, MessageType::kCloseRequest,
    MessageType::kErrorResponse,    MessageType::kSubmitJob,
    MessageType::kJobStatusRequest, MessageType::kCancelJob,
    MessageType::kStatsRequest,     MessageType::kCutConnections,
    MessageType::kHelloAck};

TEST(HandshakeTest, RightSecretAuthenticatesBothWays) {
  Exchange x(kOn, kOn);
  EXPECT_EQ(x.client.Hello().nonce.size(), schema::kNonceLength);
  ASSERT_FALSE(x.SendHello());
  EXPECT_TRUE(x.server.hello_seen());
  EXPECT_FALSE(x.server.authenticated());
  const fb::HelloAck& ack = AsHelloAck(x.hello_ack);
  ASSERT_NE(ack.nonce(), nullptr);
  EXPECT_EQ(ack.nonce()->size(), schema::kNonceLength);
  EXPECT_EQ(ack.segment_size(), kSegment);
  EXPECT_EQ(ack.node_name()->str(), "producer-node");
  ASSERT_FALSE(x.DeliverAck());
  EXPECT_TRUE(x.client.server_proved());
  ASSERT_TRUE(x.response.has_value());
  ASSERT_FALSE(x.SendResponse());
  EXPECT_TRUE(x.server.authenticated());
  for (MessageType t : kAfterHandshake) {
    if (t != MessageType::kHelloAck) {
      EXPECT_FALSE(x.server.Admit(t)) << static_cast<int>(t);
    }
  }
  EXPECT_FALSE(x.client.Admit(MessageType::kBufferResponse));
  EXPECT_FALSE(x.client.Admit(MessageType::kBacklogAnnouncement));
}

TEST(HandshakeTest, ServerWithAnotherSecretIsRefusedByTheClient) {
  Exchange x(kOn, kOther);
  ASSERT_FALSE(x.SendHello());
  ExpectRefused(x.DeliverAck(), fb::ErrorCode::AuthenticationFailed,
                "producer 10.0.0.2:7000 failed authentication");
  EXPECT_FALSE(x.client.server_proved());
  EXPECT_FALSE(x.response.has_value());
  EXPECT_EQ(HandshakeStatus(*x.DeliverAck()).code(), StatusCode::kPermissionDenied);
}

TEST(HandshakeTest, ClientWithAnotherSecretIsRefusedByTheServer) {
  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  // A client holding kOther answers the server's challenge with its own HMAC.
  const fb::HelloAck& ack = AsHelloAck(x.hello_ack);
  const std::span<const uint8_t> server_nonce(ack.nonce()->data(), ack.nonce()->size());
  const auth::Proof wrong = auth::MakeProof(kOther.secret, auth::kClientRole, server_nonce,
                                            x.client.Hello().nonce);
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(AuthResponseBytes(wrong))),
                fb::ErrorCode::AuthenticationFailed,
                "client 10.0.0.1:40000's proof does not match producer-node's shared secret");
  EXPECT_FALSE(x.server.authenticated());
  ExpectRefused(x.server.Admit(MessageType::kPartitionRequest),
                fb::ErrorCode::AuthenticationFailed, "authentication required");
}

TEST(HandshakeTest, RoleSwappedProofIsRefused) {
  // The server's own proof reflected back as the client's does not pass.
  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  const fb::HelloAck& ack = AsHelloAck(x.hello_ack);
  const Bytes reflected(ack.auth_proof()->begin(), ack.auth_proof()->end());
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(AuthResponseBytes(reflected))),
                fb::ErrorCode::AuthenticationFailed, "proof does not match");
}

TEST(HandshakeTest, MissingProofIsRefusedBothWays) {
  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(AuthResponseBytes({}))),
                fb::ErrorCode::AuthenticationFailed, "proof does not match");
  EXPECT_FALSE(x.server.authenticated());

  // A HelloAck with a nonce but no proof.
  ClientHandshake client(kOn, kSegment, "consumer", "10.0.0.2:7000");
  const auth::Nonce nonce = auth::MakeNonce();
  schema::HandshakeFields f;
  f.segment_size = kSegment;
  f.nonce = nonce;
  std::optional<auth::Proof> response;
  ExpectRefused(client.OnHelloAck(AsHelloAck(HelloAckBytes(f)), &response),
                fb::ErrorCode::AuthenticationFailed, "failed authentication");
  EXPECT_FALSE(response.has_value());
  EXPECT_FALSE(client.server_proved());
}

TEST(HandshakeTest, ProofReplayedFromAnotherConnectionIsRefused) {
  // A recorded connection: Hello, HelloAck, AuthResponse all seen by an eavesdropper.
  Exchange recorded(kOn, kOn);
  ASSERT_FALSE(recorded.SendHello());
  ASSERT_FALSE(recorded.DeliverAck());
  ASSERT_FALSE(recorded.SendResponse());

  // Client side replayed to a new server: same Hello, same AuthResponse; the server's fresh
  // nonce makes the recorded proof worthless.
  ServerHandshake server(kOn, kSegment, "producer-node", "10.0.0.9:1");
  schema::HandshakeFields ack;
  ASSERT_FALSE(server.OnHello(AsHello(recorded.hello), &ack));
  ExpectRefused(server.OnAuthResponse(AsAuthResponse(recorded.auth_response)),
                fb::ErrorCode::AuthenticationFailed, "proof does not match");
  EXPECT_FALSE(server.authenticated());

  // Server side replayed to a new client: the recorded HelloAck answers another nonce.
  ClientHandshake client(kOn, kSegment, "consumer", "10.0.0.2:7000");
  std::optional<auth::Proof> response;
  ExpectRefused(client.OnHelloAck(AsHelloAck(recorded.hello_ack), &response),
                fb::ErrorCode::AuthenticationFailed, "failed authentication");
  EXPECT_FALSE(client.server_proved());
}

TEST(HandshakeTest, ClientWithoutSecretIsRefusedByAServerWithOne) {
  Exchange x(kOff, kOn);
  EXPECT_TRUE(x.client.Hello().nonce.empty());
  // The server challenges it like any client...
  ASSERT_FALSE(x.SendHello());
  EXPECT_FALSE(x.server.authenticated());
  // ...the client refuses a server that asks for a secret it does not have...
  ExpectRefused(x.DeliverAck(), fb::ErrorCode::AuthenticationFailed,
                "producer 10.0.0.2:7000 requires authentication");
  EXPECT_FALSE(x.client.server_proved());
  EXPECT_FALSE(x.response.has_value());
  // ...and whatever it sends without a proof is refused.
  ExpectRefused(x.server.Admit(MessageType::kPartitionRequest),
                fb::ErrorCode::AuthenticationFailed, "authentication required");
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(AuthResponseBytes({}))),
                fb::ErrorCode::AuthenticationFailed, "proof does not match");
  EXPECT_FALSE(x.server.authenticated());
}

TEST(HandshakeTest, ServerWithoutSecretIsRefusedByAClientWithOne) {
  Exchange x(kOn, kOff);
  ASSERT_FALSE(x.SendHello());
  EXPECT_TRUE(x.server.authenticated());  // the server side is off
  const fb::HelloAck& ack = AsHelloAck(x.hello_ack);
  EXPECT_TRUE(ack.nonce() == nullptr || ack.nonce()->size() == 0);
  ExpectRefused(x.DeliverAck(), fb::ErrorCode::AuthenticationFailed,
                "did not prove the shared secret");
  EXPECT_FALSE(x.client.server_proved());
  EXPECT_FALSE(x.response.has_value());
}

TEST(HandshakeTest, AuthOffOnBothSidesNeedsNoProof) {
  Exchange x(kOff, kOff);
  ASSERT_FALSE(x.SendHello());
  EXPECT_TRUE(x.server.authenticated());
  const fb::HelloAck& ack = AsHelloAck(x.hello_ack);
  EXPECT_TRUE(ack.nonce() == nullptr || ack.nonce()->size() == 0);
  EXPECT_TRUE(ack.auth_proof() == nullptr || ack.auth_proof()->size() == 0);
  ASSERT_FALSE(x.DeliverAck());
  EXPECT_TRUE(x.client.server_proved());
  EXPECT_FALSE(x.response.has_value());
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(AuthResponseBytes({}))),
                fb::ErrorCode::ProtocolViolation, "needs no authentication");
}

TEST(HandshakeTest, UnsupportedVersion) {
  ServerHandshake server(kOn, kSegment, "producer-node", "10.0.0.1:40000");
  ClientHandshake client(kOn, kSegment, "consumer", "10.0.0.2:7000");
  schema::HandshakeFields f = client.Hello();
  f.protocol_version = 2;
  schema::HandshakeFields ack;
  ExpectRefused(server.OnHello(AsHello(HelloBytes(f)), &ack), fb::ErrorCode::UnsupportedVersion,
                "protocol version 2 is not supported; producer-node speaks version 1");
  EXPECT_FALSE(server.authenticated());
}

TEST(HandshakeTest, SegmentSizeMismatchBothWays) {
  Exchange x(kOn, kOn, 8192);
  const HandshakeResult r = x.SendHello();
  ExpectRefused(r, fb::ErrorCode::SegmentSizeMismatch,
                "client 10.0.0.1:40000 segment size 8192 differs from producer-node's 4096");
  EXPECT_EQ(HandshakeStatus(*r).code(), StatusCode::kInvalidArgument);

  Exchange y(kOn, kOn);
  ASSERT_FALSE(y.SendHello());
  ClientHandshake client(kOn, 8192, "consumer", "10.0.0.2:7000");
  std::optional<auth::Proof> response;
  ExpectRefused(client.OnHelloAck(AsHelloAck(y.hello_ack), &response),
                fb::ErrorCode::SegmentSizeMismatch, "uses segment size 4096, this side 8192");
}

TEST(HandshakeTest, ControlOnlyClientLearnsTheSegmentSizeAndMayNotRequestPartitions) {
  Exchange x(kOn, kOn, kControlOnlySegmentSize);
  EXPECT_EQ(x.client.Hello().segment_size, 0u);
  ASSERT_FALSE(x.SendHello());
  EXPECT_TRUE(x.server.control_only());
  EXPECT_EQ(AsHelloAck(x.hello_ack).segment_size(), kSegment);
  ASSERT_FALSE(x.DeliverAck());
  EXPECT_EQ(x.client.server_segment_size(), kSegment);
  ASSERT_FALSE(x.SendResponse());
  EXPECT_TRUE(x.server.authenticated());
  ExpectRefused(x.server.AdmitPartitionRequest(), fb::ErrorCode::ProtocolViolation,
                "PartitionRequest from control-only client 10.0.0.1:40000");

  // A data client (a real segment size) may request partitions.
  Exchange d(kOn, kOn);
  ASSERT_FALSE(d.SendHello());
  EXPECT_FALSE(d.server.control_only());
  EXPECT_FALSE(d.server.AdmitPartitionRequest().has_value());
  ASSERT_FALSE(d.DeliverAck());
  EXPECT_EQ(d.client.server_segment_size(), kSegment);
}

TEST(HandshakeTest, SecondHelloAndSecondHelloAck) {
  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  schema::HandshakeFields ack;
  ExpectRefused(x.server.OnHello(AsHello(x.hello), &ack), fb::ErrorCode::ProtocolViolation,
                "second Hello");
  ASSERT_FALSE(x.DeliverAck());
  ExpectRefused(x.client.Admit(MessageType::kHelloAck), fb::ErrorCode::ProtocolViolation,
                "second HelloAck");
  ExpectRefused(x.DeliverAck(), fb::ErrorCode::ProtocolViolation, "second HelloAck");
}

TEST(HandshakeTest, ServerRefusesEverythingButTheHandshakeBeforeAuthentication) {
  for (const auth::AuthConfig* a : {&kOn, &kOff}) {
    ServerHandshake server(*a, kSegment, "producer-node", "10.0.0.1:40000");
    EXPECT_FALSE(server.Admit(MessageType::kHello));
    EXPECT_FALSE(server.Admit(MessageType::kAuthResponse));
    EXPECT_FALSE(server.Admit(MessageType::kHeartbeat));
    for (MessageType t : kAfterHandshake) {
      ExpectRefused(server.Admit(t), fb::ErrorCode::AuthenticationFailed, "before the Hello");
    }
  }
  // Between the Hello and the proof.
  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  for (MessageType t : kAfterHandshake) {
    ExpectRefused(x.server.Admit(t), fb::ErrorCode::AuthenticationFailed,
                  "authentication required: producer-node serves nothing but the handshake to "
                  "client 10.0.0.1:40000");
  }
}

TEST(HandshakeTest, AuthResponseBeforeHelloOrAfterAuthentication) {
  ServerHandshake server(kOn, kSegment, "producer-node", "10.0.0.1:40000");
  ExpectRefused(server.OnAuthResponse(AsAuthResponse(AuthResponseBytes({}))),
                fb::ErrorCode::AuthenticationFailed, "before the Hello");
  EXPECT_FALSE(server.authenticated());

  Exchange x(kOn, kOn);
  ASSERT_FALSE(x.SendHello());
  ASSERT_FALSE(x.DeliverAck());
  ASSERT_FALSE(x.SendResponse());
  ExpectRefused(x.server.OnAuthResponse(AsAuthResponse(x.auth_response)),
                fb::ErrorCode::ProtocolViolation, "already authenticated");
  EXPECT_TRUE(x.server.authenticated());
}

TEST(HandshakeTest, ClientAcceptsOnlyHandshakeHeartbeatAndErrorsBeforeTheProof) {
  for (const auth::AuthConfig* a : {&kOn, &kOff}) {
    ClientHandshake client(*a, kSegment, "consumer", "10.0.0.2:7000");
    EXPECT_FALSE(client.Admit(MessageType::kHelloAck));
    EXPECT_FALSE(client.Admit(MessageType::kHeartbeat));
    EXPECT_FALSE(client.Admit(MessageType::kErrorResponse));
    for (MessageType t : {MessageType::kBufferResponse, MessageType::kBacklogAnnouncement,
                          MessageType::kPartitionRequest, MessageType::kAddCredit,
                          MessageType::kCloseRequest, MessageType::kStatsResponse}) {
      const HandshakeResult r = client.Admit(t);
      ExpectRefused(r, fb::ErrorCode::ProtocolViolation,
                    "producer 10.0.0.2:7000 sent " +
                        std::string(schema::MessageTypeName(t)) + " before it completed");
      EXPECT_EQ(HandshakeStatus(*r).code(), StatusCode::kProtocolError);
    }
  }
}

TEST(HandshakeTest, ValidateAuthConfig) {
  EXPECT_TRUE(auth::ValidateAuthConfig(kOn, "node 'a'").ok());
  EXPECT_TRUE(auth::ValidateAuthConfig(kOff, "node 'a'").ok());
  const Status empty = auth::ValidateAuthConfig({}, "node 'a'");
  EXPECT_EQ(empty.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("node 'a': no shared secret; set auth.secret"),
            std::string::npos)
      << empty.message();
  EXPECT_NE(empty.message().find("auth.off = true"), std::string::npos);
  const Status weak = auth::ValidateAuthConfig({"short", false}, "node 'a'");
  EXPECT_EQ(weak.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(weak.message().find("auth.secret is 5 bytes; a shared secret needs at least 16"),
            std::string::npos)
      << weak.message();
  const Status both = auth::ValidateAuthConfig({kOn.secret, true}, "node 'a'");
  EXPECT_EQ(both.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(both.message().find("auth.secret is set and auth.off is true"), std::string::npos)
      << both.message();
}

}  // namespace
}  // namespace sluice::shuffle
