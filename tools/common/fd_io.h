// Whole-buffer reads and writes on file descriptors (sockets and pipes), retrying EINTR and
// short transfers. Sockets are written with MSG_NOSIGNAL, so a closed peer is an error, not a
// SIGPIPE. Thread-compatible: one caller per descriptor at a time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sluice::tools {

// Writes all `len` bytes, or returns false (errno says why; 0 bytes written is EPIPE-like).
bool WriteAll(int fd, const void* data, size_t len);
// Reads exactly `len` bytes, or returns false: errno says why, or 0 at end of stream
// (check `*got` for how many bytes arrived before that, when not null).
bool ReadAll(int fd, void* data, size_t len, size_t* got = nullptr);

}  // namespace sluice::tools
