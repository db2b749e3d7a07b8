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
// The exchange itself is written once in shuffle/handshake.h (ServerHandshake, ClientHandshake).
//
// Thread-safe (pure functions; nonces from OpenSSL's CSPRNG).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "sluice/buffer/status.h"

namespace sluice::shuffle::auth {

using Nonce = std::array<uint8_t, 32>;

// How a server or client authenticates its connections. Authentication is on by default: an
// empty `secret` is an error (ValidateAuthConfig) unless `off` is set explicitly, which is meant
// for experiments on loopback. A plain value; copy it freely.
struct AuthConfig {
  std::string secret;  // the cluster's shared secret (ReadSecretFile, LoadStateSecret)
  bool off = false;    // serve and connect without authentication
};
inline constexpr size_t kMinSecretLength = 16;

// Ok when `auth` is usable: a secret of at least kMinSecretLength bytes, or off without a
// secret. InvalidArgument naming `who`, auth.secret and auth.off otherwise.
Status ValidateAuthConfig(const AuthConfig& auth, std::string_view who);
using Proof = std::array<uint8_t, 32>;

inline constexpr std::string_view kServerRole = "sluice-server";
inline constexpr std::string_view kClientRole = "sluice-client";

Nonce MakeNonce();
// HMAC-SHA256(secret, role | first | second).
Proof MakeProof(std::string_view secret, std::string_view role, std::span<const uint8_t> first,
                std::span<const uint8_t> second);
// Constant-time comparison; false when the lengths differ.
bool ProofMatches(const Proof& expected, std::span<const uint8_t> got);
// Whether `got` equals `expected`, a token or secret, in time independent of both (it compares
// HMACs of the two, so their lengths do not show either). Never true for an empty `expected`.
bool SecretsMatch(std::string_view expected, std::string_view got);

// Job-scoped authority (see schema/messages.fbs PartitionRequest.access_proof): a random
// 32-byte token, hex-encoded (64 characters), made by whoever submits a job.
std::string MakeJobToken();
// A job's token is at least this long: sluiced refuses shorter ones for daemon jobs (SubmitJob)
// and for external store jobs (a local writer's OpenWriter).
inline constexpr size_t kMinJobTokenLength = 32;
// HMAC-SHA256(job_token, "sluice-partition" | partition_id | subpartition as u32 big-endian).
Proof MakePartitionProof(std::string_view job_token, std::string_view partition_id,
                         uint32_t subpartition);

// Reads a secret file: the whole file, one trailing newline removed. InvalidArgument naming the
// path when it cannot be read, is not a regular file, is empty, or is shorter than 16 bytes
// (too weak to be a secret); PermissionDenied, naming the `chmod 600` to run, when group or
// others may read or write it (as ssh refuses such keys).
Result<std::string> ReadSecretFile(const std::string& path);

// The secret's file name inside a state directory (sluiced --state-dir, default
// kDefaultStateDir).
inline constexpr std::string_view kStateSecretFileName = "auth_secret";
inline constexpr std::string_view kDefaultStateDir = "/var/lib/sluice";
// `state_dir`, or kDefaultStateDir when it is empty (a client given no --state-dir).
inline std::string StateDirOrDefault(const std::string& state_dir) {
  return state_dir.empty() ? std::string(kDefaultStateDir) : state_dir;
}
// "<state_dir>/auth_secret".
std::string StateSecretPath(const std::string& state_dir);
// Reads <state_dir>/auth_secret (ReadSecretFile). When it does not exist and `create` is true,
// creates it first: the directory with mode 0700 when missing, the file with O_EXCL and mode
// 0600 holding 32 random bytes as 64 hex characters. Errors name the path and the fix.
Result<std::string> LoadStateSecret(const std::string& state_dir, bool create);
// The same for another private file of the state directory (sluiced's metrics_token):
// "<state_dir>/<name>", read with ReadSecretFile, created as above when missing and `create`.
Result<std::string> LoadStateFile(const std::string& state_dir, std::string_view name,
                                  bool create);

// Job tokens on disk: "<state_dir>/jobs/<job>.token" (mode 0600), written by whoever submits
// the job (sluicectl submit, sluice put) and read by the tools that act for it. InvalidArgument
// naming the job when it cannot name a file there (empty, ".", ".." or with a '/').
Result<std::string> JobTokenPath(const std::string& state_dir, const std::string& job);
// The token a tool uses for `job`: `token` when given, else the file `token_file` when given
// (ReadSecretFile), else the job's token file in `state_dir` when it exists, else an empty
// string (no token: a daemon without auth, or a job that cannot name a token file).
Result<std::string> FindJobToken(const std::string& token, const std::string& token_file,
                                 const std::string& state_dir, const std::string& job);

// Writes a new token file at `path` holding `token`, mode 0600: whole or not at all (written
// to a temporary file in the same directory, synced, then linked to `path`), never following
// or replacing an existing file. InvalidArgument naming the path and the fix when `path`
// exists (then `*existed` is set, when given) or cannot be written.
Status CreateTokenFile(const std::string& path, const std::string& token,
                       bool* existed = nullptr);
// CreateTokenFile at JobTokenPath(state_dir, job), making <state_dir> and <state_dir>/jobs
// (mode 0700) when missing. Returns the path; JobTokenPath's error for a job that cannot name
// a file there, and nothing written.
Result<std::string> CreateJobTokenFile(const std::string& state_dir, const std::string& job,
                                       const std::string& token, bool* existed = nullptr);
// The token in the job's token file in `state_dir`, or a new one (MakeJobToken) stored there
// first. Writers starting together all get the token of the one that stored it first.
Result<std::string> LoadOrCreateJobToken(const std::string& state_dir, const std::string& job);

}  // namespace sluice::shuffle::auth
