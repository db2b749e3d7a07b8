// ResultPartition flush microbenchmarks (issue 15): FlushAll over its flush list against the
// per-subpartition loop it replaced (Flush of every subpartition, what FlushAll did before),
// measured in the same run on the same partition. Each iteration writes one 100-byte record to
// each of `written` subpartitions (spread over the partition), flushes, and polls what was
// flushed; only the flush differs between the two.
//
//   sluice_flush_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// Args: subpartitions, subpartitions written per flush.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/result_partition.h"

namespace sluice::shuffle {
namespace {

constexpr uint32_t kSegment = 32u << 10;

struct FlushFixture {
  FlushFixture(uint32_t n, uint32_t written) : record(100, 0x5A) {
    buffer::NetworkBufferPoolOptions o;
    o.segment_size = kSegment;
    o.network_memory = static_cast<uint64_t>(n + 4096) * kSegment;
    global = buffer::NetworkBufferPool::Create(o).value();
    ShuffleOptions so;
    so.credit.segment_size = kSegment;
    so.buffer_timeout = kBufferTimeoutOff;
    partition = ResultPartition::Create("flush-bench", n, global, so).value();
    const uint32_t stride = n / written;
    for (uint32_t i = 0; i < written; ++i) targets.push_back(i * stride);
    views.resize(n);
    for (const uint32_t t : targets) views[t] = partition->CreateView(t, nullptr).value();
  }
  ~FlushFixture() {
    views.clear();
    partition->Release();
  }
  // One round: a record to each target, the flush, and the reads.
  template <typename Flush>
  void Round(Flush&& flush) {
    for (const uint32_t t : targets) (void)partition->Emit(record, t);
    flush();
    for (const uint32_t t : targets) {
      Result<std::optional<BufferAndBacklog>> item = views[t]->PollNext();
      benchmark::DoNotOptimize(item);
    }
  }

  std::vector<uint8_t> record;
  std::shared_ptr<buffer::NetworkBufferPool> global;
  std::shared_ptr<ResultPartition> partition;
  std::vector<uint32_t> targets;
  std::vector<std::unique_ptr<SubpartitionView>> views;
};

void BM_FlushAllListed(benchmark::State& state) {
  FlushFixture f(static_cast<uint32_t>(state.range(0)), static_cast<uint32_t>(state.range(1)));
  for (auto _ : state) f.Round([&] { f.partition->FlushAll(); });
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_FlushEverySubpartition(benchmark::State& state) {
  FlushFixture f(static_cast<uint32_t>(state.range(0)), static_cast<uint32_t>(state.range(1)));
  const uint32_t n = f.partition->num_subpartitions();
  for (auto _ : state) {
    f.Round([&] {
      for (uint32_t i = 0; i < n; ++i) f.partition->Flush(i);
    });
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

BENCHMARK(BM_FlushAllListed)->Args({64, 64})->Args({10000, 64})->Args({10000, 10000});
BENCHMARK(BM_FlushEverySubpartition)->Args({64, 64})->Args({10000, 64})->Args({10000, 10000});

}  // namespace
}  // namespace sluice::shuffle
