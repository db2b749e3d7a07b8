// The machine's ceiling for the remote data path: a raw libuv socket pump between two processes
// over loopback TCP, with no framing, no pools and no credit. The receiver is a forked child that
// reads into one 64 KiB buffer and counts; the sender (the calling process) keeps `inflight`
// uv_writes queued, each gathering `bufs_per_write` views of one block of `block_size` bytes
// (the transport's gathered-write pattern; 1 = a plain pump). Also the memcpy ceiling.
// Thread-compatible; call only from a process with no other threads (it forks).
#pragma once

#include <cstdint>

namespace sluice::bench {

struct RawPumpOptions {
  double seconds = 2;
  uint32_t block_size = 32 * 1024;
  int inflight = 4;
  int bufs_per_write = 8;
};

struct PumpResult {
  uint64_t bytes = 0;
  double seconds = 0;  // receiver: first byte to EOF
  double mib_per_second() const { return seconds > 0 ? bytes / seconds / (1 << 20) : 0; }
};

// Runs one pump for options.seconds. Exits the process with a message if a socket call fails.
PumpResult RunRawPump(const RawPumpOptions& options);

// memcpy of `piece`-byte pieces from a source block into a working set of `working_set` bytes
// (cycled through block after block), for `seconds`: the copy every record needs at least once.
PumpResult RunMemcpy(double seconds, uint32_t piece, uint64_t working_set);

}  // namespace sluice::bench
