// Shared-secret authentication of shuffle and control connections (DESIGN.md "Errors and
// faults"): a mutual challenge/response with HMAC-SHA256 over both sides' random nonces.
//
//   client -> server  Hello{nonce_c}
//   server -> client  HelloAck{nonce_s, proof_s = HMAC(secret, "sluice-server" nonce_c nonce_s)}
//   client -> server  AuthResponse{proof_c = HMAC(secret, "sluice-client" nonce_s nonce_c)}
//
// The server serves nothing but heartbeats until proof_c checks out; the client sends nothing
// but the proof until proof_s checks out. Proofs are compared in constant time. The secret never
// travels. A server without a secret sends no nonce and accepts every client.
//
// Thread-safe (pure functions; nonces from OpenSSL's CSPRNG).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "buffer/status.h"

namespace sluice::shuffle::auth {

using Nonce = std::array<uint8_t, 32>;
using Proof = std::array<uint8_t, 32>;

inline constexpr std::string_view kServerRole = "sluice-server";
inline constexpr std::string_view kClientRole = "sluice-client";

Nonce MakeNonce();
// HMAC-SHA256(secret, role | first | second).
Proof MakeProof(std::string_view secret, std::string_view role, std::span<const uint8_t> first,
                std::span<const uint8_t> second);
// Constant-time comparison; false when the lengths differ.
bool ProofMatches(const Proof& expected, std::span<const uint8_t> got);

// Reads a secret file: the whole file, one trailing newline removed. InvalidArgument naming the
// path when it cannot be read, is empty, or is shorter than 16 bytes (too weak to be a secret).
Result<std::string> ReadSecretFile(const std::string& path);

}  // namespace sluice::shuffle::auth
