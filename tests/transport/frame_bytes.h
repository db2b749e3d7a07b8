// Frame bytes for transport tests (not API): whole frames and raw headers with any field
// values, so tests can write well-formed and corrupt streams byte by byte.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "transport/frame_codec.h"

namespace sluice::transport::testutil {

using Bytes = std::vector<uint8_t>;

inline Bytes EncodeFrame(uint8_t type, const Bytes& metadata, const Bytes& payload = {}) {
  Bytes out(kFrameHeaderSize);
  EncodeFrameHeader(std::span<uint8_t, kFrameHeaderSize>(out.data(), kFrameHeaderSize), type,
                    static_cast<uint16_t>(metadata.size()), static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), metadata.begin(), metadata.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// A header with arbitrary field values (for corrupt frames).
inline Bytes RawHeader(uint32_t length, uint32_t magic, uint8_t version, uint8_t type, uint16_t h) {
  return {static_cast<uint8_t>(length >> 24),
          static_cast<uint8_t>(length >> 16),
          static_cast<uint8_t>(length >> 8),
          static_cast<uint8_t>(length),
          static_cast<uint8_t>(magic >> 24),
          static_cast<uint8_t>(magic >> 16),
          static_cast<uint8_t>(magic >> 8),
          static_cast<uint8_t>(magic),
          version,
          type,
          static_cast<uint8_t>(h >> 8),
          static_cast<uint8_t>(h)};
}

}  // namespace sluice::transport::testutil
