#include "shuffle/record_writer.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace sluice::shuffle {

namespace {

constexpr uint64_t kMul = 0xc6a4a7935bd1e995ull;
constexpr int kShift = 47;

// Little-endian on every host, so hashes agree between machines.
uint64_t LoadLittleEndian64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

}  // namespace

uint64_t Mix64(uint64_t x) {
  // The MurmurHash3 finalizer.
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

uint64_t HashBytes(std::span<const uint8_t> bytes, uint64_t seed) {
  const size_t n = bytes.size();
  const uint8_t* p = bytes.data();
  uint64_t h = seed ^ (static_cast<uint64_t>(n) * kMul);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t k = LoadLittleEndian64(p + i);
    k *= kMul;
    k ^= k >> kShift;
    k *= kMul;
    h ^= k;
    h *= kMul;
  }
  if (const size_t tail = n - i; tail > 0) {
    uint64_t k = 0;
    for (size_t j = 0; j < tail; ++j) k |= static_cast<uint64_t>(p[i + j]) << (8 * j);
    h ^= k;
    h *= kMul;
  }
  h ^= h >> kShift;
  h *= kMul;
  h ^= h >> kShift;
  return Mix64(h);
}

uint32_t RoundRobinPartitioner::Select(std::span<const uint8_t> /*record*/,
                                       uint32_t num_subpartitions) {
  if (next_ >= num_subpartitions) next_ = 0;
  return next_++;
}

KeyHashPartitioner::KeyHashPartitioner()
    : hash_([](std::span<const uint8_t> record) { return HashBytes(record); }) {}

KeyHashPartitioner KeyHashPartitioner::OnKeyBytes(KeyBytesFn key) {
  return KeyHashPartitioner(
      [key = std::move(key)](std::span<const uint8_t> record) { return HashBytes(key(record)); });
}

KeyHashPartitioner KeyHashPartitioner::OnKey(KeyFn key) {
  return KeyHashPartitioner(
      [key = std::move(key)](std::span<const uint8_t> record) { return Mix64(key(record)); });
}

KeyHashPartitioner KeyHashPartitioner::OnFixedRange(uint32_t offset, uint32_t length) {
  return KeyHashPartitioner([offset, length](std::span<const uint8_t> record) {
    const size_t begin = std::min<size_t>(offset, record.size());
    const size_t len = std::min<size_t>(length, record.size() - begin);
    return HashBytes(record.subspan(begin, len));
  });
}

uint32_t KeyHashPartitioner::Select(std::span<const uint8_t> record, uint32_t num_subpartitions) {
  return HashToSubpartition(hash_(record), num_subpartitions);
}

RecordWriter::RecordWriter(std::shared_ptr<ResultPartition> partition,
                           std::unique_ptr<ChannelSelector> selector)
    : partition_(std::move(partition)),
      selector_(std::move(selector)),
      num_subpartitions_(partition_ != nullptr ? partition_->num_subpartitions() : 0) {
  SLUICE_CHECK(partition_ != nullptr && selector_ != nullptr,
               "RecordWriter needs a partition and a channel selector");
}

Status RecordWriter::Emit(std::span<const uint8_t> record) {
  return partition_->Emit(record, selector_->Select(record, num_subpartitions_));
}

Status RecordWriter::EmitTo(std::span<const uint8_t> record, uint32_t subpartition) {
  return partition_->Emit(record, subpartition);
}

Status RecordWriter::EmitBatch(std::span<const std::span<const uint8_t>> records) {
  const size_t n = records.size();
  targets_.resize(n);
  order_.resize(n);
  grouped_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    targets_[i] = selector_->Select(records[i], num_subpartitions_);
    order_[i] = static_cast<uint32_t>(i);
  }
  std::stable_sort(order_.begin(), order_.end(),
                   [&](uint32_t a, uint32_t b) { return targets_[a] < targets_[b]; });
  for (size_t i = 0; i < n; ++i) grouped_[i] = records[order_[i]];
  const std::span<const std::span<const uint8_t>> all(grouped_);
  size_t begin = 0;
  while (begin < n) {
    const uint32_t target = targets_[order_[begin]];
    size_t end = begin + 1;
    while (end < n && targets_[order_[end]] == target) ++end;
    if (Status s = partition_->EmitBatch(all.subspan(begin, end - begin), target); !s.ok()) {
      return s;
    }
    begin = end;
  }
  return Status::Ok();
}

Status RecordWriter::EmitBatchTo(std::span<const std::span<const uint8_t>> records,
                                 uint32_t subpartition) {
  return partition_->EmitBatch(records, subpartition);
}

Status RecordWriter::EmitInPlaceTo(uint32_t size, uint32_t subpartition,
                                   ResultPartition::FillFn fill) {
  return partition_->EmitInPlace(subpartition, size, fill);
}

Status RecordWriter::EmitInPlaceBatchTo(std::span<const uint32_t> sizes, uint32_t subpartition,
                                        ResultPartition::BatchFillFn fill) {
  return partition_->EmitInPlaceBatch(subpartition, sizes, fill);
}

Status RecordWriter::Broadcast(std::span<const uint8_t> record) {
  return partition_->Broadcast(record);
}

Status RecordWriter::BroadcastEvent(std::span<const uint8_t> payload) {
  return partition_->BroadcastEvent(payload);
}

void RecordWriter::Flush() { partition_->FlushAll(); }

Status RecordWriter::Finish() { return partition_->Finish(); }

}  // namespace sluice::shuffle
