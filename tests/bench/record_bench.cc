// Record path microbenchmarks: the serializer's copy into a buffer, the deserializer's walk over
// a buffer, ResultPartition::Emit against EmitBatch (one lock per record against one per
// buffer) and EmitBatch against EmitInPlaceBatch, next to a plain memcpy of the same bytes.
//
//   sluice_record_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// Bytes/s count record bytes (length prefixes excluded); Arg is the record size.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/record_serializer.h"
#include "shuffle/result_partition.h"

namespace sluice::shuffle {
namespace {

constexpr uint32_t kSegment = 32u << 10;

std::shared_ptr<buffer::NetworkBufferPool> MakeGlobal(uint32_t segments) {
  buffer::NetworkBufferPoolOptions o;
  o.segment_size = kSegment;
  o.network_memory = static_cast<uint64_t>(segments) * kSegment;
  o.preallocate = true;
  return buffer::NetworkBufferPool::Create(o).value();
}

buffer::Buffer Segment(buffer::NetworkBufferPool& pool) {
  return buffer::Buffer::Wrap(pool.TryRequestSegment(), pool.direct_recycler());
}

void BM_MemcpySameBytes(benchmark::State& state) {
  const auto size = static_cast<uint32_t>(state.range(0));
  std::vector<uint8_t> record(size, 0x5A);
  std::vector<uint8_t> out(kSegment);
  uint32_t pos = 0;
  for (auto _ : state) {
    if (pos + size > kSegment) pos = 0;
    std::memcpy(out.data() + pos, record.data(), size);
    pos += size + static_cast<uint32_t>(kRecordLengthBytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * size);
}
BENCHMARK(BM_MemcpySameBytes)->Arg(16)->Arg(100)->Arg(1000)->Arg(32764);

// One segment, one record of `size` bytes and a serializer.
struct SerializerFixture {
  explicit SerializerFixture(uint32_t size) : record(size, 0x5A) {}
  std::shared_ptr<buffer::NetworkBufferPool> pool = MakeGlobal(4);
  buffer::Buffer buffer = Segment(*pool);
  std::vector<uint8_t> record;
  RecordSerializer serializer;
};

void BM_SerializerCopyTo(benchmark::State& state) {
  const auto size = static_cast<uint32_t>(state.range(0));
  SerializerFixture f(size);
  for (auto _ : state) {
    (void)f.serializer.Begin(f.record);
    while (f.serializer.CopyTo(f.buffer) != RecordSerializer::Progress::kRecordDoneBufferHasRoom) {
      f.buffer.SetSize(0);
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * size);
}
BENCHMARK(BM_SerializerCopyTo)->Arg(16)->Arg(100)->Arg(1000)->Arg(32764)->Arg(100000);

void BM_DeserializerGetNext(benchmark::State& state) {
  const auto size = static_cast<uint32_t>(state.range(0));
  SerializerFixture f(size);
  buffer::Buffer& full = f.buffer;
  uint64_t per_buffer = 0;
  while (true) {
    (void)f.serializer.Begin(f.record);
    if (f.serializer.CopyTo(full) != RecordSerializer::Progress::kRecordDoneBufferHasRoom) break;
    ++per_buffer;
  }
  full.SetSize(full.size() - (full.size() % (size + static_cast<uint32_t>(kRecordLengthBytes))));
  RecordDeserializer de;
  uint64_t records = 0;
  std::span<const uint8_t> rec;
  for (auto _ : state) {
    de.SetNextBuffer(full.Share());
    while (de.GetNext(&rec).value() == RecordDeserializer::Next::kRecord) {
      benchmark::DoNotOptimize(rec.data());
      ++records;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(records) * size);
  state.counters["records_per_buffer"] = static_cast<double>(per_buffer);
}
BENCHMARK(BM_DeserializerGetNext)->Arg(16)->Arg(100)->Arg(1000);

// A one-subpartition partition (no flusher) and its view, drained on the benchmark's thread.
struct PartitionFixture {
  PartitionFixture() {
    ShuffleOptions o;
    o.credit.segment_size = kSegment;
    o.buffer_timeout = kBufferTimeoutOff;
    partition = ResultPartition::Create("bench", 1, global, o).value();
    view = partition->CreateView(0, nullptr).value();
  }
  ~PartitionFixture() {
    view->Release();
    partition->Release();
  }
  void Drain() {
    while (true) {
      auto item = view->PollNext();
      if (!item.ok() || !item->has_value()) break;
    }
  }
  std::shared_ptr<buffer::NetworkBufferPool> global = MakeGlobal(64);
  std::shared_ptr<ResultPartition> partition;
  std::unique_ptr<SubpartitionView> view;
};

// Emit into a partition while a view drains it on the same thread; Arg(1) is the batch.
void BM_PartitionEmit(benchmark::State& state) {
  const auto batch = static_cast<size_t>(state.range(0));
  constexpr uint32_t kRecord = 100;
  PartitionFixture f;
  std::vector<uint8_t> record(kRecord, 0x5A);
  const std::vector<std::span<const uint8_t>> spans(batch, std::span<const uint8_t>(record));
  for (auto _ : state) {
    if (batch == 1) {
      if (!f.partition->Emit(record, 0).ok()) state.SkipWithError("emit failed");
    } else if (!f.partition->EmitBatch(spans, 0).ok()) {
      state.SkipWithError("emit failed");
    }
    f.Drain();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch * kRecord));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}
BENCHMARK(BM_PartitionEmit)->Arg(1)->Arg(16)->Arg(64)->Arg(256);

// EmitBatch (a copy from the caller's records) against EmitInPlaceBatch for records of Arg(0)
// bytes (32764: one record per segment), batches of 64 (8 for 32 KiB: the output pool holds 10
// buffers and nobody drains mid-batch), a view draining on the same thread. In place, Arg(1)
// says what fill writes: 0 only an 8-byte sequence number (sluice-bench --in-place), 1 the
// whole record (an engine serializing every byte: the write stays, the second copy goes).
enum class EmitMode { kCopy, kInPlaceStamp, kInPlaceWhole };

void RunPartitionEmitRecords(benchmark::State& state, EmitMode mode) {
  const auto size = static_cast<uint32_t>(state.range(0));
  const size_t batch = size > 4096 ? 8 : 64;
  PartitionFixture f;
  std::vector<std::vector<uint8_t>> records(batch, std::vector<uint8_t>(size, 0x5A));
  const std::vector<std::span<const uint8_t>> spans(records.begin(), records.end());
  const std::vector<uint32_t> sizes(batch, size);
  uint64_t seq = 0;
  auto fill = [&](size_t i, std::span<uint8_t> out) {
    if (mode == EmitMode::kInPlaceWhole) {
      std::memcpy(out.data(), records[i].data(), out.size());
    }
    std::memcpy(out.data(), &seq, std::min(sizeof(seq), out.size()));
    ++seq;
  };
  for (auto _ : state) {
    const Status s = mode == EmitMode::kCopy ? f.partition->EmitBatch(spans, 0)
                                             : f.partition->EmitInPlaceBatch(0, sizes, fill);
    if (!s.ok()) state.SkipWithError("emit failed");
    f.Drain();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch * size));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}

void BM_PartitionEmitBatchCopy(benchmark::State& state) {
  RunPartitionEmitRecords(state, EmitMode::kCopy);
}
BENCHMARK(BM_PartitionEmitBatchCopy)->Arg(100)->Arg(32764);

void BM_PartitionEmitInPlaceBatch(benchmark::State& state) {
  RunPartitionEmitRecords(state,
                          state.range(1) == 0 ? EmitMode::kInPlaceStamp : EmitMode::kInPlaceWhole);
}
BENCHMARK(BM_PartitionEmitInPlaceBatch)->ArgsProduct({{100, 32764}, {0, 1}});

}  // namespace
}  // namespace sluice::shuffle
