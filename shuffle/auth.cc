#include "shuffle/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace sluice::shuffle::auth {

Nonce MakeNonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    SLUICE_CHECK(false, "OpenSSL RAND_bytes failed: no entropy for an authentication nonce");
  }
  return n;
}

Proof MakeProof(std::string_view secret, std::string_view role, std::span<const uint8_t> first,
                std::span<const uint8_t> second) {
  std::string data;
  data.reserve(role.size() + first.size() + second.size());
  data.append(role);
  data.append(reinterpret_cast<const char*>(first.data()), first.size());
  data.append(reinterpret_cast<const char*>(second.data()), second.size());
  Proof out{};
  unsigned int len = 0;
  const unsigned char* ok =
      HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  SLUICE_CHECK(ok != nullptr && len == out.size(), "HMAC-SHA256 failed");
  return out;
}

Status ValidateAuthConfig(const AuthConfig& auth, std::string_view who) {
  const std::string w(who);
  if (auth.off) {
    if (auth.secret.empty()) return Status::Ok();
    return InvalidArgument(w + ": auth.secret is set and auth.off is true; choose one (clear "
                               "auth.secret to run unauthenticated, or auth.off = false)");
  }
  if (auth.secret.empty()) {
    return InvalidArgument(w + ": no shared secret; set auth.secret (e.g. from the state "
                               "directory's auth_secret, auth::LoadStateSecret) or set auth.off "
                               "= true to run unauthenticated (loopback experiments only)");
  }
  if (auth.secret.size() < kMinSecretLength) {
    return InvalidArgument(w + ": auth.secret is " + std::to_string(auth.secret.size()) +
                           " bytes; a shared secret needs at least " +
                           std::to_string(kMinSecretLength) + " (or set auth.off = true)");
  }
  return Status::Ok();
}

bool ProofMatches(const Proof& expected, std::span<const uint8_t> got) {
  if (got.size() != expected.size()) return false;
  return CRYPTO_memcmp(expected.data(), got.data(), expected.size()) == 0;
}

bool SecretsMatch(std::string_view expected, std::string_view got) {
  static constexpr std::string_view kRole = "sluice-secret-compare";
  const Proof a = MakeProof(expected, kRole, {}, {});
  const Proof b = MakeProof(got, kRole, {}, {});
  return ProofMatches(a, b) && !expected.empty();
}

std::string MakeJobToken() {
  const Nonce raw = MakeNonce();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (uint8_t b : raw) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

Proof MakePartitionProof(std::string_view job_token, std::string_view partition_id,
                         uint32_t subpartition) {
  const uint8_t sub[4] = {static_cast<uint8_t>(subpartition >> 24),
                          static_cast<uint8_t>(subpartition >> 16),
                          static_cast<uint8_t>(subpartition >> 8),
                          static_cast<uint8_t>(subpartition)};
  return MakeProof(job_token, "sluice-partition",
                   {reinterpret_cast<const uint8_t*>(partition_id.data()), partition_id.size()},
                   sub);
}

Result<std::string> ReadSecretFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    return InvalidArgument("auth secret file '" + path + "' cannot be read (" +
                           std::strerror(errno) + "); give a readable file with the shared secret");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("auth secret file '" + path + "' is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status(StatusCode::kPermissionDenied,
                  "auth secret file '" + path + "' has mode " + mode +
                      ": group or others may read it; run `chmod 600 " + path + "`");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    // Someone else's file: in a directory others can write to, it may have been planted.
    ::close(fd);
    return Status(StatusCode::kPermissionDenied,
                  "auth secret file '" + path + "' belongs to uid " + std::to_string(st.st_uid) +
                      ", not to this process (uid " + std::to_string(::geteuid()) +
                      ") or root; run `chown " + std::to_string(::geteuid()) + " " + path + "`");
  }
  std::string s;
  char chunk[4096];
  while (true) {
    const ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      return InvalidArgument("auth secret file '" + path + "': " + std::strerror(e));
    }
    if (n == 0) break;
    s.append(chunk, static_cast<size_t>(n));
    if (s.size() > 4096) {
      ::close(fd);
      return InvalidArgument("auth secret file '" + path + "' is over 4096 bytes; a secret is short");
    }
  }
  ::close(fd);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  if (s.size() < 16) {
    return InvalidArgument("auth secret file '" + path + "' holds " + std::to_string(s.size()) +
                           " bytes; a shared secret needs at least 16 (e.g. `head -c 32 "
                           "/dev/urandom | base64 > " + path + " && chmod 600 " + path + "`)");
  }
  return s;
}

std::string StateSecretPath(const std::string& state_dir) {
  return state_dir + "/" + std::string(kStateSecretFileName);
}

namespace {

// Writes `content` to a new file at `path`, mode 0600, atomically: a private temporary file in
// the same directory, synced, then linked to `path` (a link never replaces a file), so a reader
// never sees half a file. Returns 0, or the errno of the step that failed (EEXIST: `path`
// exists).
int LinkNewFile(const std::string& path, std::string_view content) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = dir + "/." + name + ".XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0) return errno;
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ok && ::fsync(fd) == 0;
  int e = ok ? 0 : (errno != 0 ? errno : EIO);
  ::close(fd);
  if (ok && ::link(tmp.c_str(), path.c_str()) != 0) e = errno;
  ::unlink(tmp.c_str());
  return e;
}

// Creates <path> holding a fresh secret (LinkNewFile). Ok also when another process created
// <path> first.
Status CreateSecretFile(const std::string& path) {
  const int e = LinkNewFile(path, MakeJobToken() + "\n");
  if (e == 0 || e == EEXIST) return Status::Ok();
  return InvalidArgument("secret file '" + path + "' cannot be written (" +
                         std::strerror(e) + "); give a writable --state-dir (state_dir)");
}

// Makes `dir` (mode 0700) unless it exists. `what` names it and `fix` says what to do instead
// in the error.
Status MakePrivateDir(const std::string& dir, const char* what, const char* fix) {
  if (::mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST) return Status::Ok();
  return InvalidArgument(std::string(what) + " '" + dir + "' cannot be created (" +
                         std::strerror(errno) + "); " + fix);
}

constexpr const char* kTokenDirFix =
    "give a writable --state-dir, or the token with --token or --token-file";

}  // namespace

Result<std::string> LoadStateSecret(const std::string& state_dir, bool create) {
  return LoadStateFile(state_dir, kStateSecretFileName, create);
}

Result<std::string> LoadStateFile(const std::string& state_dir, std::string_view name,
                                  bool create) {
  const std::string path = state_dir + "/" + std::string(name);
  if (!create || ::access(path.c_str(), F_OK) == 0) return ReadSecretFile(path);
  if (Status st = MakePrivateDir(state_dir, "state directory",
                                 "give a writable --state-dir (state_dir)");
      !st.ok()) {
    return st;
  }
  if (Status st = CreateSecretFile(path); !st.ok()) return st;
  return ReadSecretFile(path);
}

Result<std::string> JobTokenPath(const std::string& state_dir, const std::string& job) {
  if (job.empty() || job == "." || job == ".." || job.find('/') != std::string::npos) {
    return InvalidArgument("job '" + job + "' cannot name a token file; give --token or "
                           "--token-file");
  }
  return state_dir + "/jobs/" + job + ".token";
}

Result<std::string> FindJobToken(const std::string& token, const std::string& token_file,
                                 const std::string& state_dir, const std::string& job) {
  if (!token.empty()) return token;
  // A token is a secret too: the same checks as a secret file (mode 0600, long enough).
  if (!token_file.empty()) return ReadSecretFile(token_file);
  auto path = JobTokenPath(state_dir, job);
  struct stat st{};
  if (!path.ok() || ::stat(path->c_str(), &st) != 0) return std::string();
  return ReadSecretFile(*path);
}

Status CreateTokenFile(const std::string& path, const std::string& token, bool* existed) {
  const int e = LinkNewFile(path, token);
  if (existed != nullptr) *existed = e == EEXIST;
  if (e == EEXIST) {
    return InvalidArgument("token file '" + path + "' already exists: a job id is used once, "
                           "and its token made once (give another job id, or this token with "
                           "--token-file)");
  }
  if (e != 0) {
    return InvalidArgument("token file '" + path + "' cannot be created (" + std::strerror(e) +
                           "); give a writable --state-dir or --token-file");
  }
  return Status::Ok();
}

Result<std::string> CreateJobTokenFile(const std::string& state_dir, const std::string& job,
                                       const std::string& token, bool* existed) {
  if (existed != nullptr) *existed = false;
  auto path = JobTokenPath(state_dir, job);
  if (!path.ok()) return path.status();
  if (Status st = MakePrivateDir(state_dir, "state directory", kTokenDirFix); !st.ok()) return st;
  if (Status st = MakePrivateDir(state_dir + "/jobs", "job token directory", kTokenDirFix);
      !st.ok()) {
    return st;
  }
  if (Status st = CreateTokenFile(*path, token, existed); !st.ok()) return st;
  return *path;
}

Result<std::string> LoadOrCreateJobToken(const std::string& state_dir, const std::string& job) {
  auto found = FindJobToken("", "", state_dir, job);
  if (!found.ok() || !found->empty()) return found;
  const std::string token = MakeJobToken();
  bool existed = false;
  auto made = CreateJobTokenFile(state_dir, job, token, &existed);
  if (existed) return FindJobToken("", "", state_dir, job);  // another writer stored it first
  if (!made.ok()) return made.status();
  return token;
}

}  // namespace sluice::shuffle::auth
