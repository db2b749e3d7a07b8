// RecordWriter: the writer's handle on a ResultPartition, with a ChannelSelector (Flink's name)
// that picks the subpartition of each record: RoundRobinPartitioner or KeyHashPartitioner.
//
// The writer shares the partition (shared_ptr); the selector is owned by the writer.
// Thread-compatible: one writer thread at a time, like the partition's writer API. Partitioners
// are thread-compatible too (RoundRobinPartitioner keeps a counter).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "sluice/buffer/status.h"
#include "sluice/shuffle/result_partition.h"

namespace sluice::shuffle {

// Picks the subpartition of a record. REQUIRES: num_subpartitions >= 1; returns a value below it.
class ChannelSelector {
 public:
  virtual ~ChannelSelector() = default;
  virtual uint32_t Select(std::span<const uint8_t> record, uint32_t num_subpartitions) = 0;
};

// 0, 1, ..., n-1, 0, 1, ...
class RoundRobinPartitioner final : public ChannelSelector {
 public:
  uint32_t Select(std::span<const uint8_t> record, uint32_t num_subpartitions) override;

 private:
  uint32_t next_ = 0;
};

// A stable 64-bit hash of bytes (MurmurHash64A-style multiply/rotate mixing, explicit
// little-endian reads, and a final avalanche): the same bytes give the same value on every
// host, build and run, so keys land in the same subpartition everywhere.
inline constexpr uint64_t kDefaultHashSeed = 0x5354554345ull;  // arbitrary, fixed forever
uint64_t HashBytes(std::span<const uint8_t> bytes, uint64_t seed = kDefaultHashSeed);
// A 64-bit avalanche (every input bit affects every output bit), for integer keys.
uint64_t Mix64(uint64_t x);

// Records with equal keys go to the same subpartition; distinct keys spread evenly.
class KeyHashPartitioner final : public ChannelSelector {
 public:
  // Returns the key bytes of a record (a view into the record or into memory that outlives
  // the call).
  using KeyBytesFn = std::function<std::span<const uint8_t>(std::span<const uint8_t> record)>;
  // Extracts an integer key from a record; it is mixed with Mix64 before use.
  using KeyFn = std::function<uint64_t(std::span<const uint8_t> record)>;

  // The whole record is the key.
  KeyHashPartitioner();
  static KeyHashPartitioner OnKeyBytes(KeyBytesFn key);
  static KeyHashPartitioner OnKey(KeyFn key);
  // The key is record[offset, offset + length), cut short at the end of the record.
  static KeyHashPartitioner OnFixedRange(uint32_t offset, uint32_t length);

  uint32_t Select(std::span<const uint8_t> record, uint32_t num_subpartitions) override;
  // The 64-bit hash that Select maps to a subpartition.
  uint64_t Hash(std::span<const uint8_t> record) const { return hash_(record); }

 private:
  explicit KeyHashPartitioner(std::function<uint64_t(std::span<const uint8_t>)> hash)
      : hash_(std::move(hash)) {}
  std::function<uint64_t(std::span<const uint8_t>)> hash_;
};

// Maps a 64-bit hash to [0, n) without division (uses the high bits; unbiased enough for
// n far below 2^32).
inline uint32_t HashToSubpartition(uint64_t hash, uint32_t n) {
  return static_cast<uint32_t>(((hash >> 32) * n) >> 32);
}

class RecordWriter {
 public:
  // REQUIRES: partition and selector are not null.
  RecordWriter(std::shared_ptr<ResultPartition> partition,
               std::unique_ptr<ChannelSelector> selector);
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  // To the subpartition the selector picks. Errors as ResultPartition::Emit.
  Status Emit(std::span<const uint8_t> record);
  Status EmitTo(std::span<const uint8_t> record, uint32_t subpartition);
  // Many records at once, each to the subpartition the selector picks: records are grouped by
  // subpartition (keeping their order within each, the only order a consumer sees) and each
  // group is one ResultPartition::EmitBatch, so the lock is taken once per group and buffer
  // instead of once per record. Errors as EmitBatch; on an error, groups before the failing
  // one were written. Allocates only when a batch is larger than every one before it.
  Status EmitBatch(std::span<const std::span<const uint8_t>> records);
  // Many records to one subpartition: ResultPartition::EmitBatch.
  Status EmitBatchTo(std::span<const std::span<const uint8_t>> records, uint32_t subpartition);
  // A record of `size` bytes that `fill` writes in place: ResultPartition::EmitInPlace. Only
  // to a named subpartition: the selector would need the record's bytes before they exist.
  Status EmitInPlaceTo(uint32_t size, uint32_t subpartition, ResultPartition::FillFn fill);
  // Records of `sizes` filled in place by fill(i, span): ResultPartition::EmitInPlaceBatch.
  Status EmitInPlaceBatchTo(std::span<const uint32_t> sizes, uint32_t subpartition,
                            ResultPartition::BatchFillFn fill);
  Status Broadcast(std::span<const uint8_t> record);
  Status BroadcastEvent(std::span<const uint8_t> payload);
  void Flush();
  Status Finish();

  ResultPartition& partition() const { return *partition_; }

 private:
  const std::shared_ptr<ResultPartition> partition_;
  const std::unique_ptr<ChannelSelector> selector_;
  const uint32_t num_subpartitions_;
  // EmitBatch scratch, reused between calls.
  std::vector<uint32_t> targets_;
  std::vector<uint32_t> order_;
  std::vector<std::span<const uint8_t>> grouped_;
};

}  // namespace sluice::shuffle
