#include "shuffle/handshake.h"

#include <utility>

#include "transport/frame_codec.h"

namespace sluice::shuffle {

using schema::MessageType;

namespace {

HandshakeError Error(fb::ErrorCode code, std::string message) {
  return HandshakeError{code, std::move(message)};
}

std::span<const uint8_t> Bytes(const flatbuffers::Vector<uint8_t>* v) {
  if (v == nullptr) return {};
  return {v->data(), v->size()};
}

std::string TypeName(MessageType type) { return std::string(schema::MessageTypeName(type)); }

}  // namespace

ServerHandshake::ServerHandshake(const auth::AuthConfig& auth, uint32_t segment_size,
                                 std::string node_name, std::string peer)
    : auth_(auth),
      segment_size_(segment_size),
      node_name_(std::move(node_name)),
      peer_(std::move(peer)) {}

HandshakeResult ServerHandshake::Admit(MessageType type) const {
  if (authenticated_) return std::nullopt;
  if (type == MessageType::kHello || type == MessageType::kAuthResponse ||
      type == MessageType::kHeartbeat) {
    return std::nullopt;
  }
  return Error(fb::ErrorCode::AuthenticationFailed,
               "authentication required: " + node_name_ + " serves nothing but the handshake " +
                   "to client " + peer_ + " before it authenticates (got " + TypeName(type) +
                   (hello_seen_ ? ")" : " before the Hello)") +
                   "; give the client the cluster's shared secret (auth.secret)");
}

HandshakeResult ServerHandshake::OnHello(const fb::Hello& hello, schema::HandshakeFields* ack) {
  if (hello_seen_) {
    return Error(fb::ErrorCode::ProtocolViolation,
                 "second Hello from client " + peer_ + " on one connection");
  }
  hello_seen_ = true;
  if (hello.protocol_version() != transport::kProtocolVersion) {
    return Error(fb::ErrorCode::UnsupportedVersion,
                 "protocol version " + std::to_string(hello.protocol_version()) +
                     " is not supported; " + node_name_ + " speaks version " +
                     std::to_string(transport::kProtocolVersion));
  }
  control_only_ = hello.segment_size() == kControlOnlySegmentSize;
  if (!control_only_ && hello.segment_size() != segment_size_) {
    return Error(fb::ErrorCode::SegmentSizeMismatch,
                 "client " + peer_ + " segment size " + std::to_string(hello.segment_size()) +
                     " differs from " + node_name_ + "'s " + std::to_string(segment_size_) +
                     "; every node must use the same segment_size");
  }
  *ack = schema::HandshakeFields{};
  ack->segment_size = segment_size_;
  ack->node_name = node_name_;
  if (auth_.off) {
    authenticated_ = true;
    return std::nullopt;
  }
  const std::span<const uint8_t> client_nonce = Bytes(hello.nonce());
  // Challenge the client; prove that we hold the secret too (mutual).
  nonce_ = auth::MakeNonce();
  expected_proof_ = auth::MakeProof(auth_.secret, auth::kClientRole, nonce_, client_nonce);
  proof_ = auth::MakeProof(auth_.secret, auth::kServerRole, client_nonce, nonce_);
  ack->nonce = nonce_;
  ack->auth_proof = proof_;
  return std::nullopt;
}

HandshakeResult ServerHandshake::AdmitPartitionRequest() const {
  if (!control_only_) return std::nullopt;
  return Error(fb::ErrorCode::ProtocolViolation,
               "PartitionRequest from control-only client " + peer_ +
                   " (its Hello said segment_size 0): a client that reads partitions must send "
                   "its segment size (" + std::to_string(segment_size_) + " on " + node_name_ +
                   ") in the Hello");
}

HandshakeResult ServerHandshake::OnAuthResponse(const fb::AuthResponse& response) {
  if (authenticated_) {
    return Error(fb::ErrorCode::ProtocolViolation,
                 "unexpected AuthResponse from client " + peer_ +
                     ": the connection is already authenticated or needs no authentication");
  }
  if (!hello_seen_) {
    return Error(fb::ErrorCode::AuthenticationFailed,
                 "AuthResponse from client " + peer_ + " before the Hello: nothing to answer");
  }
  if (!auth::ProofMatches(expected_proof_, Bytes(response.auth_proof()))) {
    return Error(fb::ErrorCode::AuthenticationFailed,
                 "authentication failed: client " + peer_ + "'s proof does not match " +
                     node_name_ + "'s shared secret; give both sides the same secret");
  }
  authenticated_ = true;
  return std::nullopt;
}

ClientHandshake::ClientHandshake(const auth::AuthConfig& auth, uint32_t segment_size,
                                 std::string node_name, std::string peer, std::string peer_role)
    : auth_(auth),
      segment_size_(segment_size),
      node_name_(std::move(node_name)),
      peer_(std::move(peer)),
      peer_role_(std::move(peer_role)),
      has_secret_(!auth.off && !auth.secret.empty()) {
  if (has_secret_) nonce_ = auth::MakeNonce();
}

schema::HandshakeFields ClientHandshake::Hello() const {
  schema::HandshakeFields f;
  f.segment_size = segment_size_;
  f.node_name = node_name_;
  if (has_secret_) f.nonce = nonce_;
  return f;
}

HandshakeResult ClientHandshake::OnHelloAck(const fb::HelloAck& ack,
                                            std::optional<auth::Proof>* response) {
  response->reset();
  const std::string who = peer_role_ + " " + peer_;
  if (server_proved_) {
    return Error(fb::ErrorCode::ProtocolViolation, "second HelloAck from " + who);
  }
  if (segment_size_ != kControlOnlySegmentSize && ack.segment_size() != segment_size_) {
    return Error(fb::ErrorCode::SegmentSizeMismatch,
                 who + " uses segment size " + std::to_string(ack.segment_size()) +
                     ", this side " + std::to_string(segment_size_) +
                     "; every node must use the same segment_size");
  }
  server_segment_size_ = ack.segment_size();
  const std::span<const uint8_t> server_nonce = Bytes(ack.nonce());
  const bool challenged = !server_nonce.empty();
  if (!has_secret_) {
    if (!challenged) {
      server_proved_ = true;
      return std::nullopt;
    }
    return Error(fb::ErrorCode::AuthenticationFailed,
                 who + " requires authentication; configure the cluster's shared secret on "
                       "this side (--auth-secret-file or --state-dir)");
  }
  if (!challenged) {
    return Error(fb::ErrorCode::AuthenticationFailed,
                 who + " did not prove the shared secret (it runs without authentication); "
                       "configure the same secret there");
  }
  const auth::Proof expected =
      auth::MakeProof(auth_.secret, auth::kServerRole, nonce_, server_nonce);
  if (!auth::ProofMatches(expected, Bytes(ack.auth_proof()))) {
    return Error(fb::ErrorCode::AuthenticationFailed,
                 who + " failed authentication: its proof does not match our shared secret");
  }
  server_proved_ = true;
  *response = auth::MakeProof(auth_.secret, auth::kClientRole, server_nonce, nonce_);
  return std::nullopt;
}

HandshakeResult ClientHandshake::Admit(MessageType type) const {
  if (server_proved_) {
    if (type != MessageType::kHelloAck) return std::nullopt;
    return Error(fb::ErrorCode::ProtocolViolation, "second HelloAck from " + peer_role_ + " " +
                                                       peer_);
  }
  if (type == MessageType::kHelloAck || type == MessageType::kHeartbeat ||
      type == MessageType::kErrorResponse) {
    return std::nullopt;
  }
  return Error(fb::ErrorCode::ProtocolViolation,
               peer_role_ + " " + peer_ + " sent " + TypeName(type) +
                   " before it completed the handshake (proved the shared secret); refusing "
                   "the connection");
}

Status HandshakeStatus(const HandshakeError& error) {
  switch (error.code) {
    case fb::ErrorCode::AuthenticationFailed:
      return Status(StatusCode::kPermissionDenied, error.message);
    case fb::ErrorCode::UnsupportedVersion:
    case fb::ErrorCode::SegmentSizeMismatch:
      return InvalidArgument(error.message);
    default:
      return ProtocolError(error.message);
  }
}

}  // namespace sluice::shuffle
