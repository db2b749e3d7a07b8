// Request+recycle cost of the buffer module, next to the allocator it replaces.
//
//   sluice_buffer_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// Every benchmark touches one byte of the buffer so the comparison with malloc is fair.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>

#include "buffer/buffer.h"
#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"

namespace sluice::buffer {
namespace {

constexpr uint32_t kSegment = 32u << 10;

std::shared_ptr<NetworkBufferPool> MakeGlobal(uint32_t segments) {
  NetworkBufferPoolOptions o;
  o.segment_size = kSegment;
  o.network_memory = static_cast<uint64_t>(segments) * kSegment;
  o.preallocate = true;
  return NetworkBufferPool::Create(o).value();
}

std::shared_ptr<LocalBufferPool> MakePool(NetworkBufferPool& global, uint32_t n) {
  LocalBufferPoolOptions o;
  o.name = "bench";
  o.min_segments = n;
  o.max_segments = n;
  return global.CreateLocalBufferPool(o).value();
}

// Minimal single-producer single-consumer ring for move-only Buffers (boost 1.74's spsc_queue
// copies its elements).
template <size_t N>
class SpscRing {
 public:
  bool Push(Buffer&& b) {
    const size_t t = tail_.load(std::memory_order_relaxed);
    if (t - head_.load(std::memory_order_acquire) == N) return false;
    slots_[t % N] = std::move(b);
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }
  bool Pop(Buffer& out) {
    const size_t h = head_.load(std::memory_order_relaxed);
    if (h == tail_.load(std::memory_order_acquire)) return false;
    out = std::move(slots_[h % N]);
    head_.store(h + 1, std::memory_order_release);
    return true;
  }

 private:
  alignas(64) std::atomic<size_t> head_{0};
  alignas(64) std::atomic<size_t> tail_{0};
  alignas(64) Buffer slots_[N];
};

void Touch(const Buffer& b) {
  b.data()[0] = 1;
  benchmark::DoNotOptimize(b.data());
}

// One thread: RequestBuffer + release through a LocalBufferPool.
void BM_LocalPool_RequestRecycle_1Thread(benchmark::State& state) {
  auto global = MakeGlobal(256);
  auto pool = MakePool(*global, 64);
  for (auto _ : state) {
    Buffer b = pool->RequestBuffer();
    Touch(b);
    b.Release();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LocalPool_RequestRecycle_1Thread);

// Same, with a subpartition tag (the output-pool path with per-subpartition accounting).
void BM_LocalPool_RequestRecycle_Subpartition_1Thread(benchmark::State& state) {
  auto global = MakeGlobal(256);
  LocalBufferPoolOptions o;
  o.min_segments = o.max_segments = 64;
  o.num_subpartitions = 8;
  o.max_buffers_per_subpartition = 10;
  auto pool = global->CreateLocalBufferPool(o).value();
  int32_t sp = 0;
  for (auto _ : state) {
    Buffer b = pool->RequestBuffer(sp);
    Touch(b);
    b.Release();
    sp = (sp + 1) & 7;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LocalPool_RequestRecycle_Subpartition_1Thread);

// Two threads both request and recycle on one shared pool (contention on its mutex).
struct SharedPool {
  std::shared_ptr<NetworkBufferPool> global = MakeGlobal(256);
  std::shared_ptr<LocalBufferPool> pool = MakePool(*global, 64);
};
SharedPool* g_shared = nullptr;

void BM_LocalPool_RequestRecycle_2ThreadsShared(benchmark::State& state) {
  if (state.thread_index() == 0) g_shared = new SharedPool();
  // Google Benchmark starts the timed loop of all threads together after setup.
  for (auto _ : state) {
    Buffer b = g_shared->pool->RequestBuffer();
    while (!b) b = g_shared->pool->RequestBuffer();
    Touch(b);
    b.Release();
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    // Teardown after every thread left the loop (the loop end is a barrier).
    delete g_shared;
    g_shared = nullptr;
  }
}
BENCHMARK(BM_LocalPool_RequestRecycle_2ThreadsShared)->Threads(2)->UseRealTime();

// Hand-off: this thread requests and passes each buffer through an SPSC queue to a second
// thread that releases it, so every recycle crosses cores. Time is per buffer.
void BM_LocalPool_HandOff_2Threads(benchmark::State& state) {
  auto global = MakeGlobal(256);
  auto pool = MakePool(*global, 64);
  SpscRing<32> queue;
  std::atomic<bool> done{false};
  std::thread recycler([&] {
    Buffer b;
    while (true) {
      if (queue.Pop(b)) {
        b.Release();
      } else if (done.load(std::memory_order_acquire)) {
        while (queue.Pop(b)) b.Release();
        return;
      } else {
        std::this_thread::yield();  // two cores: let the producer run
      }
    }
  });
  for (auto _ : state) {
    Buffer b = pool->RequestBuffer();
    while (!b) {  // the recycler is behind
      std::this_thread::yield();
      b = pool->RequestBuffer();
    }
    Touch(b);
    while (!queue.Push(std::move(b))) std::this_thread::yield();
  }
  done.store(true, std::memory_order_release);
  recycler.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LocalPool_HandOff_2Threads)->UseRealTime();

// The raw lock-free global free list.
void BM_Global_TryRequestRecycle_1Thread(benchmark::State& state) {
  auto global = MakeGlobal(256);
  for (auto _ : state) {
    MemorySegment* s = global->TryRequestSegment();
    s->data()[0] = 1;
    benchmark::DoNotOptimize(s->data());
    global->RecycleSegment(s);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Global_TryRequestRecycle_1Thread);

std::shared_ptr<NetworkBufferPool>* g_global2 = nullptr;

void BM_Global_TryRequestRecycle_2Threads(benchmark::State& state) {
  if (state.thread_index() == 0)
    g_global2 = new std::shared_ptr<NetworkBufferPool>(MakeGlobal(256));
  for (auto _ : state) {
    MemorySegment* s = (*g_global2)->TryRequestSegment();
    s->data()[0] = 1;
    benchmark::DoNotOptimize(s->data());
    (*g_global2)->RecycleSegment(s);
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    delete g_global2;
    g_global2 = nullptr;
  }
}
BENCHMARK(BM_Global_TryRequestRecycle_2Threads)->Threads(2)->UseRealTime();

// Handles only: Share + release of a second handle on a held buffer (atomic refcount).
void BM_Buffer_ShareRelease(benchmark::State& state) {
  auto global = MakeGlobal(16);
  auto pool = MakePool(*global, 4);
  Buffer b = pool->RequestBuffer();
  for (auto _ : state) {
    Buffer s = b.Share();
    benchmark::DoNotOptimize(s.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Buffer_ShareRelease);

// Baselines: the allocator, for a segment-sized block.
void BM_Malloc_Free_32KiB(benchmark::State& state) {
  for (auto _ : state) {
    auto* p = static_cast<uint8_t*>(std::malloc(kSegment));
    benchmark::DoNotOptimize(p);
    p[0] = 1;
    benchmark::ClobberMemory();
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Malloc_Free_32KiB);

void BM_NewDelete_32KiB(benchmark::State& state) {
  for (auto _ : state) {
    auto* p = new uint8_t[kSegment];
    benchmark::DoNotOptimize(p);
    p[0] = 1;
    benchmark::ClobberMemory();
    delete[] p;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NewDelete_32KiB);

}  // namespace
}  // namespace sluice::buffer
