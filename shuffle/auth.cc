#include "shuffle/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

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

bool ProofMatches(const Proof& expected, std::span<const uint8_t> got) {
  if (got.size() != expected.size()) return false;
  return CRYPTO_memcmp(expected.data(), got.data(), expected.size()) == 0;
}

Result<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InvalidArgument("auth secret file '" + path +
                           "' cannot be read; give a readable file with the shared secret");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  if (s.size() < 16) {
    return InvalidArgument("auth secret file '" + path + "' holds " + std::to_string(s.size()) +
                           " bytes; a shared secret needs at least 16 (e.g. `head -c 32 "
                           "/dev/urandom | base64 > " + path + "`)");
  }
  return s;
}

}  // namespace sluice::shuffle::auth
