// CRC32C (Castagnoli) of a byte range: the optional per-buffer checksum. Uses the SSE4.2
// instruction when the CPU has it, a table otherwise. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sluice::shuffle {

uint32_t Crc32c(const uint8_t* data, size_t size, uint32_t crc = 0);

}  // namespace sluice::shuffle
