// SpillFile: the on-disk form of one map output (sort-merge layout). One data file and one index
// file per map output, whatever its number of subpartitions:
//
//   <stem>.data:  | spill 1: region sp0 | region sp1 | ... | spill 2: region sp0 | ... |
//                  a region is the subpartition's buffers of that spill, in order:
//                  | size u32 LE | crc32c of stripes 0..3, 4 x u32 LE | bytes ... | size | ...
//                  (stripe k: bytes [k*q, (k+1)*q), q = size/4 rounded up to a multiple of 8)
//   <stem>.index: one 32-byte record per region: subpartition u32, buffers u32,
//                 first ordinal u64, data offset u64, length u64 (all little-endian).
//
// Each spill appends one region per subpartition that had buffers (pwritev, in order). Reads
// verify the checksums of every buffer and name the file and offset when one does not match.
// Files are named "<kSpillFilePrefix><stem>.{data,index}" so a starting daemon can remove
// what a crashed one left (RemoveLeftovers).
//
// Thread-safety: AppendRegions is for one thread at a time (the store serializes spills of a
// map output); ReadBuffer may run concurrently with it and with other reads (pread on data
// already written). Remove() after every reader is done.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/status.h"

namespace sluice::store {

inline constexpr std::string_view kSpillFilePrefix = "sluice-spill-";
// size u32 + CRC32C of each of the buffer's four stripes (see spill_file.cc).
inline constexpr uint32_t kSpillBufferHeaderBytes = 20;
inline constexpr uint32_t kSpillIndexRecordBytes = 32;

struct SpillRegion {
  uint32_t subpartition = 0;
  uint64_t first_ordinal = 0;  // ordinal of the region's first buffer in its subpartition
  std::vector<buffer::Buffer> buffers;  // handles (shares) on the bytes to write
  // Filled by AppendRegions: each buffer's header offset in the data file.
  std::vector<uint64_t> offsets;
};

class SpillFile {
 public:
  // Creates (O_EXCL) the two files in `dir`. IoError naming the path.
  static Result<std::unique_ptr<SpillFile>> Create(const std::string& dir, const std::string& stem);
  ~SpillFile();  // closes; does not remove (Remove does)
  SpillFile(const SpillFile&) = delete;
  SpillFile& operator=(const SpillFile&) = delete;

  // Bytes the regions take on disk (data + index).
  static uint64_t DiskBytes(std::span<const SpillRegion> regions);
  // Appends the regions (data, then index records) and fills their offsets. On failure the
  // files are cut back to their previous length and IoError names the file and errno text
  // (ENOSPC: "No space left on device").
  Status AppendRegions(std::span<SpillRegion> regions);
  // Reads the buffer whose header is at `offset` into `dst` (one preadv of header and bytes),
  // verifying its size (`size`, from the store's index) and CRC32C; returns its size. IoError
  // naming the data file and offset on a short read, a size that differs or exceeds `dst`, or
  // a checksum mismatch.
  Result<uint32_t> ReadBuffer(uint64_t offset, uint32_t size, std::span<uint8_t> dst) const;
  // Unlinks both files (idempotent).
  void Remove();

  const std::string& data_path() const { return data_path_; }
  const std::string& index_path() const { return index_path_; }
  uint64_t bytes_on_disk() const { return data_bytes_ + index_bytes_; }

  // Testing hook: the next appends fail as if write(2) returned this errno (0: off).
  static void SetWriteFaultForTesting(int err);

  // Removes every "<kSpillFilePrefix>*" file in `dir`; returns how many.
  static uint32_t RemoveLeftovers(const std::string& dir);

 private:
  SpillFile(std::string data_path, std::string index_path, int data_fd, int index_fd);
  const std::string data_path_;
  const std::string index_path_;
  int data_fd_;
  int index_fd_;
  uint64_t data_bytes_ = 0;
  uint64_t index_bytes_ = 0;
  bool removed_ = false;
};

}  // namespace sluice::store
