// Test helper (not API): the two sequence-stamped record layouts the suites send through
// partitions and gates, so that a corrupted, lost or reordered record is caught. Both fill the
// payload with PatternByte; fields are host byte order (records never leave the machine).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "shuffle/crc32c.h"

namespace sluice::testutil {

// Byte `i` of the payload of record `seq` from `source`: derived from the header, so a byte
// from another record or another source does not check.
inline uint8_t PatternByte(uint64_t seq, uint32_t i, uint32_t source) {
  return static_cast<uint8_t>((seq * 131 + i * 7 + source) & 0xFF);
}

// Stamped records, CRC-checked, for end-to-end tests:
//   [u32 producer][u32 subpartition][u64 seq][u32 payload_len][u32 0][payload][u32 CRC32C]
// The CRC32C covers everything before it.
namespace stamped {

inline std::vector<uint8_t> MakeRecord(uint32_t producer, uint32_t subpartition, uint64_t seq,
                                       uint32_t payload_len) {
  std::vector<uint8_t> r(24 + payload_len + 4);
  std::memcpy(r.data(), &producer, 4);
  std::memcpy(r.data() + 4, &subpartition, 4);
  std::memcpy(r.data() + 8, &seq, 8);
  std::memcpy(r.data() + 16, &payload_len, 4);
  std::memset(r.data() + 20, 0, 4);
  for (uint32_t i = 0; i < payload_len; ++i) r[24 + i] = PatternByte(seq, i, producer);
  const uint32_t crc = shuffle::Crc32c(r.data(), 24 + payload_len);
  std::memcpy(r.data() + 24 + payload_len, &crc, 4);
  return r;
}

struct ParsedRecord {
  uint32_t producer = 0;
  uint32_t subpartition = 0;
  uint64_t seq = 0;
  bool valid = false;  // the length and the CRC32C check
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
  out.valid = crc == shuffle::Crc32c(p, 24 + payload_len);
  return out;
}

}  // namespace stamped

// Sized records, whose whole size the test chooses (at least 16 bytes), for tests that fill
// buffers exactly:  [u32 subpartition][u64 seq][u32 size][payload to `size` bytes]
namespace sized {

// Writes the record into `r` (its whole size, at least 16 bytes), as EmitInPlace's fill would.
inline void WriteRecord(std::span<uint8_t> r, uint32_t sp, uint64_t seq) {
  const auto size = static_cast<uint32_t>(r.size());
  std::memcpy(r.data(), &sp, 4);
  std::memcpy(r.data() + 4, &seq, 8);
  std::memcpy(r.data() + 12, &size, 4);
  for (uint32_t i = 16; i < size; ++i) r[i] = PatternByte(seq, i, sp);
}

// A record of max(size, 16) bytes.
inline std::vector<uint8_t> MakeRecord(uint32_t sp, uint64_t seq, uint32_t size) {
  std::vector<uint8_t> r(std::max<uint32_t>(size, 16));
  WriteRecord(r, sp, seq);
  return r;
}

// Checks a record of subpartition `sp`; returns its sequence number, or ~0 when corrupt.
inline uint64_t CheckRecord(std::span<const uint8_t> r, uint32_t sp) {
  if (r.size() < 16) return ~0ull;
  uint32_t got_sp, size;
  uint64_t seq;
  std::memcpy(&got_sp, r.data(), 4);
  std::memcpy(&seq, r.data() + 4, 8);
  std::memcpy(&size, r.data() + 12, 4);
  if (got_sp != sp || size != r.size()) return ~0ull;
  for (uint32_t i = 16; i < size; ++i) {
    if (r[i] != PatternByte(seq, i, sp)) return ~0ull;
  }
  return seq;
}

}  // namespace sized
}  // namespace sluice::testutil
