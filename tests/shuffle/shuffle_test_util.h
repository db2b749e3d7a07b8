// Helpers for the shuffle tests: sequence-stamped records and their verification.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/crc32c.h"

namespace sluice::shuffle::testing {

// The shared secret networking tests run with (authentication is on by default).
inline constexpr std::string_view kTestSecret = "sluice-test-secret-0123456789abcdef";
inline auth::AuthConfig TestAuth() { return auth::AuthConfig{std::string(kTestSecret), false}; }

// A record: producer id, subpartition, sequence number, payload length, payload, CRC32C.
// Payload bytes are derived from the header so corruption is caught.
inline std::vector<uint8_t> MakeRecord(uint32_t producer, uint32_t subpartition, uint64_t seq,
                                       uint32_t payload_len) {
  std::vector<uint8_t> r(24 + payload_len + 4);
  std::memcpy(r.data(), &producer, 4);
  std::memcpy(r.data() + 4, &subpartition, 4);
  std::memcpy(r.data() + 8, &seq, 8);
  std::memcpy(r.data() + 16, &payload_len, 4);
  std::memset(r.data() + 20, 0, 4);
  for (uint32_t i = 0; i < payload_len; ++i) {
    r[24 + i] = static_cast<uint8_t>((seq * 131 + i * 7 + producer) & 0xFF);
  }
  const uint32_t crc = Crc32c(r.data(), 24 + payload_len);
  std::memcpy(r.data() + 24 + payload_len, &crc, 4);
  return r;
}

struct ParsedRecord {
  uint32_t producer = 0;
  uint32_t subpartition = 0;
  uint64_t seq = 0;
  bool valid = false;
};

inline ParsedRecord ParseRecord(const uint8_t* p, size_t n) {
  ParsedRecord out;
  if (n < 28) return out;
  uint32_t payload_len;
  std::memcpy(&out.producer, p, 4);
  std::memcpy(&out.subpartition, p + 4, 4);
  std::memcpy(&out.seq, p + 8, 8);
  std::memcpy(&payload_len, p + 16, 4);
  if (n != 28 + static_cast<size_t>(payload_len)) return out;
  uint32_t crc;
  std::memcpy(&crc, p + 24 + payload_len, 4);
  out.valid = crc == Crc32c(p, 24 + payload_len);
  return out;
}

}  // namespace sluice::shuffle::testing
