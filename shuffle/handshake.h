// The connection handshake, written once for ShuffleServer, ShuffleClient and ControlClient:
// protocol version, segment size, and mutual shared-secret authentication (shuffle/auth.h).
// Both halves are pure state machines over parsed messages: no sockets, no libuv, no
// Connection. The caller sends what they return and closes on a HandshakeError.
//
//   client                                              server
//     | Hello{version, segment_size, nonce_c}             |
//     |-------------------------------------------------->|  version, segment size checked
//     | HelloAck{segment_size, nonce_s,                   |
//     |          proof_s = HMAC(secret, "sluice-server"   |
//     |                         | nonce_c | nonce_s)}     |
//     |<--------------------------------------------------|
//     | client checks proof_s: server_proved()            |
//     | AuthResponse{proof_c = HMAC(secret,               |
//     |   "sluice-client" | nonce_s | nonce_c)}           |
//     |-------------------------------------------------->|  proof_c checked: authenticated()
//     | PartitionRequest, AddCredit, control, ...         |
//     |-------------------------------------------------->|
//
// With auth off on both sides there is no nonce, no proof and no AuthResponse: the server is
// authenticated() right after the Hello, the client server_proved() right after the HelloAck.
// A side with a secret never talks to a side without one (both refuse). Nonces are fresh per
// connection, so a proof recorded on one connection fails on every other.
//
// Before authentication the server accepts only Hello, AuthResponse and Heartbeat; everything
// else is refused with AuthenticationFailed. Until the server has proved the secret the client
// accepts only HelloAck, Heartbeat and ErrorResponse, and an ErrorResponse then closes the
// whole connection (it never fails a single channel by receiver id).
//
// Thread-compatible: one object per connection, used from the connection's thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "schema/messages.h"
#include "shuffle/auth.h"

namespace sluice::shuffle {

// The Hello segment size of a control-only client (sluicectl): it moves no buffers, so it has no
// segment size of its own, and learns the server's from the HelloAck.
inline constexpr uint32_t kControlOnlySegmentSize = 0;

// Why a handshake step refused a message; the connection closes after it. `code` goes into the
// ErrorResponse the server sends; `message` names the peer and the fix.
struct HandshakeError {
  fb::ErrorCode code = fb::ErrorCode::Unknown;
  std::string message;
};
// nullopt: go on.
using HandshakeResult = std::optional<HandshakeError>;

// The server's half, one per accepted connection. Holds a reference to `auth`, which must
// outlive it (the server's config).
class ServerHandshake {
 public:
  // `peer`: the client's address, for messages. `node_name`: this server, for the HelloAck.
  ServerHandshake(const auth::AuthConfig& auth, uint32_t segment_size, std::string node_name,
                  std::string peer);
  ServerHandshake(const ServerHandshake&) = delete;
  ServerHandshake& operator=(const ServerHandshake&) = delete;

  // Whether a message of `type` may be handled now. Before authentication only Hello,
  // AuthResponse and Heartbeat are; anything else gets AuthenticationFailed.
  HandshakeResult Admit(schema::MessageType type) const;
  // The client's Hello. On success *ack holds the HelloAck to send (its spans point into this
  // object). Refuses UnsupportedVersion, SegmentSizeMismatch and a second Hello
  // (ProtocolViolation). A Hello with segment_size 0 is a control-only client (sluicectl): it is
  // accepted, answered with this server's real segment size, and control_only() turns true: such
  // a connection may send control messages but no PartitionRequest. A Hello without a nonce is answered as any other (a client without the
  // secret cannot make the proof either way).
  HandshakeResult OnHello(const fb::Hello& hello, schema::HandshakeFields* ack);
  // The client's proof. AuthenticationFailed when it does not match (or no challenge was made
  // yet: before the Hello); ProtocolViolation when the connection is already authenticated or
  // needs no authentication.
  HandshakeResult OnAuthResponse(const fb::AuthResponse& response);

  bool hello_seen() const { return hello_seen_; }
  bool authenticated() const { return authenticated_; }
  // The client said segment_size 0 in its Hello: it reads no data (see OnHello).
  bool control_only() const { return control_only_; }
  // A PartitionRequest on a control-only connection: ProtocolViolation naming the reason.
  // nullopt on a data connection.
  HandshakeResult AdmitPartitionRequest() const;

 private:
  const auth::AuthConfig& auth_;
  const uint32_t segment_size_;
  const std::string node_name_;
  const std::string peer_;
  bool hello_seen_ = false;
  bool control_only_ = false;
  bool authenticated_ = false;
  auth::Nonce nonce_{};           // ours, sent in the HelloAck (auth on)
  auth::Proof proof_{};           // ours, sent in the HelloAck (auth on)
  auth::Proof expected_proof_{};  // the client's, awaited in the AuthResponse (auth on)
};

// The client's half, one per outgoing connection. Holds a reference to `auth`, which must
// outlive it.
class ClientHandshake {
 public:
  // `peer`: the server's address; `peer_role` names it in messages ("producer", "daemon").
  ClientHandshake(const auth::AuthConfig& auth, uint32_t segment_size, std::string node_name,
                  std::string peer, std::string peer_role = "producer");
  ClientHandshake(const ClientHandshake&) = delete;
  ClientHandshake& operator=(const ClientHandshake&) = delete;

  // The Hello to send (its spans point into this object). With a secret it carries a fresh
  // nonce, made at construction.
  schema::HandshakeFields Hello() const;
  // The server's HelloAck. Refuses (and the connection closes): a second HelloAck or one after
  // the server proved itself (ProtocolViolation), a different segment size
  // (SegmentSizeMismatch), a server that asks for a secret this side does not have, that does
  // not prove the secret this side has, or whose proof is wrong (AuthenticationFailed). On
  // success with auth on, *response holds the AuthResponse proof to send next.
  HandshakeResult OnHelloAck(const fb::HelloAck& ack, std::optional<auth::Proof>* response);
  // Whether a message of `type` may be handled now. Until server_proved() only HelloAck,
  // Heartbeat and ErrorResponse are; anything else gets ProtocolViolation naming the peer.
  HandshakeResult Admit(schema::MessageType type) const;

  // The HelloAck checked out (and, with a secret, carried the right proof).
  bool server_proved() const { return server_proved_; }
  // The segment size the server's HelloAck announced (0 before it). A client constructed with
  // kControlOnlySegmentSize accepts any valid one and learns it here.
  uint32_t server_segment_size() const { return server_segment_size_; }

 private:
  const auth::AuthConfig& auth_;
  const uint32_t segment_size_;
  const std::string node_name_;
  const std::string peer_;
  const std::string peer_role_;
  bool has_secret_ = false;
  bool server_proved_ = false;
  uint32_t server_segment_size_ = 0;
  auth::Nonce nonce_{};
};

// The Status a refused handshake becomes on the refusing side: PermissionDenied for
// AuthenticationFailed, InvalidArgument for a configuration mismatch (version, segment size),
// ProtocolError otherwise.
Status HandshakeStatus(const HandshakeError& error);

}  // namespace sluice::shuffle
