// Internal to schema/ (not installed): the structural check every Parse function starts with.
// Runs the FlatBuffers Verifier on one message with the caller's limits; a failure is a
// ProtocolError naming the message. Thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "buffer/status.h"
#include "flatbuffers/flatbuffers.h"

namespace sluice::schema::internal {

// FLATBUFFERS_MIN_BUFFER_SIZE (root offset, vtable offset, two vtable fields); the macro uses
// unqualified names, so it is spelled out here.
inline constexpr size_t kMinMessageSize =
    sizeof(flatbuffers::uoffset_t) + sizeof(flatbuffers::soffset_t) + 2 * sizeof(uint16_t);

template <typename T>
Result<const T*> VerifyRoot(std::span<const uint8_t> md, std::string_view name,
                            const flatbuffers::Verifier::Options& options) {
  if (md.size() < kMinMessageSize) {
    return ProtocolError("malformed " + std::string(name) + " message: " +
                         std::to_string(md.size()) +
                         " bytes, too short for a FlatBuffers table (at least " +
                         std::to_string(kMinMessageSize) +
                         "); the peer does not speak this protocol");
  }
  flatbuffers::Verifier verifier(md.data(), md.size(), options);
  if (!verifier.VerifyBuffer<T>(nullptr)) {
    return ProtocolError("malformed " + std::string(name) + " message (" +
                         std::to_string(md.size()) +
                         " bytes): FlatBuffers verification failed; the peer's encoder or schema "
                         "version is incompatible");
  }
  return flatbuffers::GetRoot<T>(md.data());
}

}  // namespace sluice::schema::internal
