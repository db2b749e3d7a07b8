// NetworkBufferPool: the one fixed slab of network memory of a process, and the admission,
// exclusive and redistribution rules that lend it out.
//
//   total = available (free list) + exclusive (held by remote input channels)
//                                 + pooled (held by LocalBufferPools: queued or lent out)
//   admission: sum(LocalBufferPool min) + sum(exclusive) <= total, always.
//
// Segments are handed out two ways: exclusive (RequestExclusiveSegments: a fixed number owned by
// one channel for its lifetime) and pooled (LocalBufferPools, each guaranteed its min and grown
// towards its max with the spare segments; see redistribution.h). The free list is lock-free;
// the mutex guards only pool creation/destruction, admission, redistribution and waiters.
//
// Thread-safe. Create it with Create() and keep the shared_ptr for as long as any LocalBufferPool,
// exclusive segment or Buffer from it is alive (LocalBufferPools keep a reference themselves).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/redistribution.h"
#include "sluice/buffer/status.h"

namespace sluice::buffer {

class LocalBufferPool;
struct LocalBufferPoolOptions;

struct NetworkBufferPoolOptions {
  uint64_t network_memory = 64ull << 20;  // bytes; a multiple of segment_size
  uint32_t segment_size = 32u << 10;      // power of two, 4 KiB .. 1 MiB
  bool preallocate = false;               // touch every page at start (MAP_POPULATE)
  bool huge_pages = false;                // madvise(MADV_HUGEPAGE) on the slab
  // How spare floating segments are shared among LocalBufferPools (redistribution.h). kUsage:
  // by measured demand, re-run at most every `redistribution_interval` when a pool starves
  // (a request finds it at its size) and on every pool or exclusive change. kStatic: Flink's
  // capacity rule, only on pool or exclusive changes.
  RedistributionPolicy redistribution = RedistributionPolicy::kUsage;
  std::chrono::milliseconds redistribution_interval{10};  // at least 1 ms
  UsagePolicy usage;
};

// Validates options (power of two, range, at least one segment) with actionable messages.
Status ValidateOptions(const NetworkBufferPoolOptions& options);

// Point-in-time counters. At a quiescent point available + exclusive + pooled == total.
struct NetworkBufferPoolStats {
  uint32_t segment_size = 0;
  uint32_t total = 0;
  uint32_t available = 0;   // in the free list
  uint32_t exclusive = 0;   // held as exclusive segments by channels
  uint32_t pooled = 0;      // held by LocalBufferPools (queued there or lent out as Buffers)
  uint32_t required = 0;    // admitted: sum of pool minimums + exclusive reservations
  uint32_t local_pools = 0; // live (not destroyed) LocalBufferPools
  uint64_t rebalances = 0;  // usage-driven redistributions run (starvation or Rebalance())
};

class NetworkBufferPool : public std::enable_shared_from_this<NetworkBufferPool> {
 public:
  static Result<std::shared_ptr<NetworkBufferPool>> Create(const NetworkBufferPoolOptions& options);

  // Segments still out at destruction are a bug in the owner: they are reported on stderr and
  // the slab is deliberately leaked rather than unmapped under live Buffers.
  ~NetworkBufferPool();
  NetworkBufferPool(const NetworkBufferPool&) = delete;
  NetworkBufferPool& operator=(const NetworkBufferPool&) = delete;

  uint32_t segment_size() const { return segment_size_; }
  uint32_t total_segments() const { return total_; }
  uint32_t available_segments() const;
  uint32_t used_segments() const { return total_ - available_segments(); }
  uint32_t required_segments() const;
  NetworkBufferPoolStats Stats() const;

  // --- Exclusive segments (one remote input channel's own buffers) ---
  // Reserves n segments under admission (ResourceExhausted names required, available, total,
  // segment size and the option to raise), shrinks pools to make room, then waits up to
  // `timeout` for n free segments (Timeout error says how many arrived and what to change).
  // On success the caller owns the segments; wrap them with Buffer::Wrap and its own recycler.
  Result<std::vector<MemorySegment*>> RequestExclusiveSegments(
      uint32_t n, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Gives back exclusive segments (no Buffer may hold them) and releases their reservation.
  void RecycleExclusiveSegments(std::span<MemorySegment* const> segments);

  // --- LocalBufferPools ---
  // Admits options.min_segments, creates the pool and redistributes the spare segments.
  Result<std::shared_ptr<LocalBufferPool>> CreateLocalBufferPool(
      const LocalBufferPoolOptions& options);

  // --- Raw free list (used by LocalBufferPool; lock-free) ---
  // A free segment, or nullptr when none is left.
  MemorySegment* TryRequestSegment();
  // Returns a segment to the free list. A segment that is already free aborts (double recycle).
  void RecycleSegment(MemorySegment* segment);

  // A recycler that returns segments straight to the free list (for Buffers a test or a tool
  // wraps around segments taken with TryRequestSegment).
  BufferRecycler* direct_recycler() { return &direct_recycler_; }

  // --- Usage-driven redistribution ---
  RedistributionPolicy redistribution() const { return policy_; }
  // Samples every pool's demand (closing its measurement window) and redistributes the spare
  // segments by usage; with kStatic only recomputes Flink's rule. The owner may call it from a
  // timer; starving pools call it themselves (rate-limited). Any thread, no lock held.
  void Rebalance();

  // Human-readable one-line summary for logs.
  std::string DebugString() const;

 private:
  friend class LocalBufferPool;
  struct DirectRecycler : BufferRecycler {
    NetworkBufferPool* pool = nullptr;
    void Recycle(MemorySegment* segment) override { pool->RecycleSegment(segment); }
  };
  class FreeList;

  NetworkBufferPool(const NetworkBufferPoolOptions& options, uint8_t* slab, uint32_t total);

  // Admission: appends "required N, available M..." text. REQUIRES: mu_ held.
  Status Admit(uint32_t extra, const char* what) const;
  // Recomputes every pool's size. Collects pools that grew (except `created`, sized for the
  // first time) so their waiters and listeners can be served outside the lock.
  // REQUIRES: mu_ held.
  void RedistributeLocked(std::vector<std::shared_ptr<LocalBufferPool>>* grown,
                          const LocalBufferPool* created = nullptr);
  void ServeGrown(std::vector<std::shared_ptr<LocalBufferPool>>& grown);
  void Redistribute();
  // Called by LocalBufferPool::Destroy.
  void Unregister(LocalBufferPool* pool);
  // A LocalBufferPool that found the free list empty asks to be told when it is not (once;
  // registering twice is a no-op). Returns true when segments are free right now: the caller
  // must then try again itself, as the recycler of that segment may have missed it.
  bool AddAvailabilityWaiter(const std::shared_ptr<LocalBufferPool>& pool);
  void NotifyAvailable();
  // A pool found itself at its size with a request waiting (kUsage): Rebalance() unless one
  // ran within the redistribution interval. No lock held.
  void OnPoolStarved();

  const uint32_t segment_size_;
  const uint32_t total_;
  const uint64_t slab_bytes_;
  uint8_t* const slab_;
  std::unique_ptr<MemorySegment[]> segments_;
  std::unique_ptr<FreeList> free_;
  alignas(64) std::atomic<int64_t> available_{0};
  alignas(64) std::atomic<uint32_t> exclusive_out_{0};
  std::atomic<uint32_t> waiters_present_{0};  // exclusive waiters + availability waiters
  DirectRecycler direct_recycler_;
  const RedistributionPolicy policy_ = RedistributionPolicy::kStatic;
  const UsagePolicy usage_;
  const int64_t rebalance_interval_ns_ = 0;
  std::atomic<int64_t> next_rebalance_ns_{0};  // steady clock; starvation rebalances not before
  std::atomic<uint64_t> rebalances_{0};

  mutable std::mutex mu_;
  std::condition_variable segment_freed_;  // exclusive requests wait on it
  uint32_t exclusive_waiting_ = 0;         // GUARDED_BY(mu_)
  uint32_t required_ = 0;                  // GUARDED_BY(mu_)
  std::vector<LocalBufferPool*> pools_;    // GUARDED_BY(mu_), live pools
  std::vector<std::weak_ptr<LocalBufferPool>> availability_waiters_;  // GUARDED_BY(mu_)
  std::vector<MemorySegment*> surplus_;  // GUARDED_BY(mu_): shrunk pools' segments to return
};

// Formats the admission error every layer uses: what was asked, what is left, the totals and
// which option to raise (with the network memory that would fit).
std::string FormatAdmissionError(const char* what, uint32_t extra, uint32_t required,
                                 uint32_t total, uint32_t segment_size);

}  // namespace sluice::buffer
