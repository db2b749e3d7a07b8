// LocalBufferPool: the share of network memory one result partition or one input gate uses.
//
// A pool is guaranteed `min_segments` and may grow to `max_segments` when the NetworkBufferPool
// redistributes its spare segments; its current size is set by redistribution. It takes
// segments from the global free list lazily and keeps them: a recycled Buffer goes back to this
// pool's queue (or to a waiting BufferListener), and only segments beyond the current size go
// back to the global pool. "Available" is the backpressure signal and means the next
// RequestBuffer() succeeds: the pool refills eagerly from the global pool.
//
// Optional per-subpartition caps (a result partition's output pool): a subpartition holding
// `max_buffers_per_subpartition` buffers makes the whole pool unavailable, so one slow consumer
// cannot take every segment. Overdraft buffers (up to `max_overdraft`, beyond the pool size, from
// the global free list) let a writer finish a record it already started.
//
// Destroy() is lazy: queued segments go home at once, lent ones when recycled. Dropping the last
// shared_ptr destroys the pool too; the object itself lives on until its last lent Buffer has
// come back, so Buffers may outlive the user's pointer.
//
// Thread-safe. BufferListener callbacks run outside every lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/redistribution.h"
#include "sluice/buffer/status.h"

namespace sluice::buffer {

class NetworkBufferPool;

// One-shot notification that a buffer became available. Register with AddBufferListener after
// a request found none; called at most once per registration, outside every pool lock.
class BufferListener {
 public:
  virtual ~BufferListener() = default;
  // Offers a buffer. Return true after taking it (moving it out of `buffer`); return false to
  // decline, and the pool offers it to the next listener or keeps it.
  virtual bool NotifyBufferAvailable(Buffer& buffer) = 0;
  // The pool was destroyed while this listener waited; no buffer will come.
  virtual void NotifyBufferDestroyed() = 0;
};

// How often a WaitAvailable waiting for a run of `wake_batch` segments looks again anyway.
inline constexpr std::chrono::microseconds kWakeBatchRecheck{1000};

struct LocalBufferPoolOptions {
  std::string name = "local-pool";        // for errors, logs and metrics
  uint32_t min_segments = 1;              // guaranteed (admission)
  uint32_t max_segments = 1;              // ceiling; REQUIRES: max >= min >= 1
  uint32_t num_subpartitions = 0;         // 0: no per-subpartition accounting
  uint32_t max_buffers_per_subpartition = 0;  // 0: no cap
  uint32_t max_overdraft = 0;             // overdraft buffers beyond the pool size
  // A writer blocked in WaitAvailable is woken once this many segments are queued (at most a
  // quarter of the pool's size), not at the first one back: it then fills a run of buffers
  // instead of being switched in and out per buffer. It also looks again every
  // kWakeBatchRecheck, so it never waits for a run that cannot come. 1: woken by every return.
  uint32_t wake_batch = 1;
};

struct LocalBufferPoolStats {
  uint32_t min = 0;
  uint32_t max = 0;
  uint32_t size = 0;       // current size set by redistribution
  uint32_t owned = 0;      // segments taken from the global pool (queued + lent)
  uint32_t queued = 0;     // free in this pool's queue
  uint32_t lent = 0;       // held by Buffers
  uint32_t overdraft = 0;  // overdraft segments lent
  uint32_t listeners = 0;  // registered BufferListeners
  bool available = false;
  bool destroyed = false;
  // Usage-driven redistribution (redistribution.h): the smoothed demand of the last sample,
  // the want it gives, the backlog the owner reported, and the time requests waited at the
  // pool's size.
  uint64_t demand = 0;
  uint32_t want = 0;
  uint32_t backlog = 0;
  uint64_t starved_wait_ns = 0;  // since creation
};

class LocalBufferPool : public BufferRecycler, public std::enable_shared_from_this<LocalBufferPool> {
 public:
  ~LocalBufferPool() override;
  LocalBufferPool(const LocalBufferPool&) = delete;
  LocalBufferPool& operator=(const LocalBufferPool&) = delete;

  const std::string& name() const { return name_; }
  uint32_t segment_size() const;

  // Non-blocking: a Buffer, or an empty one when none is free now (backpressure, not an
  // error). `subpartition` counts the buffer against that subpartition's cap (-1: none).
  // REQUIRES: subpartition < num_subpartitions when given. After Destroy: always empty.
  Buffer RequestBuffer(int32_t subpartition = -1);
  // Like RequestBuffer, but when none is free takes an overdraft segment from the global pool
  // (at most max_overdraft at a time). For a writer in the middle of a record.
  Buffer RequestBufferOrOverdraft(int32_t subpartition = -1);
  // Waits up to `timeout` for a buffer. Errors: Timeout, Cancelled (CancelBlockingRequests),
  // Closed (destroyed), each naming the pool.
  Result<Buffer> RequestBufferBlocking(int32_t subpartition, std::chrono::milliseconds timeout);

  // The backpressure signal: true when the next RequestBuffer() succeeds (no subpartition at
  // its cap, no overdraft outstanding, a segment queued or obtainable).
  bool IsAvailable();
  // Waits until IsAvailable() or the timeout/cancel/destroy; returns OK when available. With
  // wake_batch > 1 it may return up to kWakeBatchRecheck after the pool became available.
  Status WaitAvailable(std::chrono::milliseconds timeout);
  // Wakes every blocked request and wait with Cancelled, now and from now on.
  void CancelBlockingRequests();

  // Registers a one-shot listener. Returns false (not registered) when a buffer is available
  // now (request it instead) or the pool is destroyed. REQUIRES: the listener outlives its
  // registration (until notified or RemoveBufferListener). A listener may call this pool from
  // inside its callbacks, but one that declines a buffer must not re-register from there (the
  // buffer would be offered to it again and again). A registration may be served before this
  // returns true (the global pool had a segment, or the pool starved and a usage-driven
  // rebalance grew it): set the listener's state before registering.
  bool AddBufferListener(BufferListener* listener);
  // Unregisters; returns false when it was not registered (already notified or never added).
  bool RemoveBufferListener(BufferListener* listener);

  // Lazy destroy; idempotent; also done when the last shared_ptr is dropped. Listeners get NotifyBufferDestroyed, blocked requests Closed.
  void Destroy();
  bool IsDestroyed() const;

  LocalBufferPoolStats Stats() const;
  uint32_t min_segments() const { return min_; }
  uint32_t max_segments() const { return max_; }
  // Buffers currently counted against a subpartition. REQUIRES: valid index.
  uint32_t SubpartitionBuffers(uint32_t subpartition) const;

  // Demand the owner knows of (e.g. an input gate's announced sender backlog, in buffers): added
  // to the pool's measured demand at the next redistribution. Any thread; cheap (one store).
  void SetBacklog(uint32_t buffers) { backlog_.store(buffers, std::memory_order_relaxed); }

  // BufferRecycler: where this pool's Buffers come home. Any thread.
  void Recycle(MemorySegment* segment) override;

 private:
  friend class NetworkBufferPool;
  // The shared_ptr deleter: destroys, and deletes the object once every Buffer is back.
  struct Deleter {
    void operator()(LocalBufferPool* pool) const;
  };
  LocalBufferPool(std::shared_ptr<NetworkBufferPool> global, const LocalBufferPoolOptions& options);

  enum class Take { kNormal, kOrOverdraft };
  Buffer Request(int32_t subpartition, Take take);
  // Makes sure one segment is queued if the size allows. Returns true when the global pool was
  // empty and this pool must register for its availability (after unlocking: lock order is
  // global before local). REQUIRES: mu_ held.
  bool RefillLocked();
  // Registers with the global pool; serves itself when segments turned up meanwhile. Outside
  // every lock.
  void RegisterForGlobal();
  bool AvailableLocked() const;
  // Bookkeeping of a segment handed out as a Buffer / coming back. REQUIRES: mu_ held.
  void MarkLentLocked(MemorySegment* segment);
  void MarkReturnedLocked(MemorySegment* segment, const char* what);
  // Redistribution set a new size: surplus queued segments are moved to `surplus` for the
  // caller to return after it unlocks. Returns true when the pool grew. Called under the
  // NetworkBufferPool's mutex.
  bool Resize(uint32_t size, std::vector<MemorySegment*>* surplus);
  // The pool's usage for RedistributeByUsage. With `sample`, first folds this window's demand
  // (peak in use, backlog, starvation) into the smoothed demand and opens a new window. Called
  // under the NetworkBufferPool's mutex.
  PoolUsage Usage(bool sample, const UsagePolicy& policy);
  // A request found no segment with the pool at its size: marks the window starved. Returns
  // true when the caller should tell the global pool (after unlocking). REQUIRES: mu_ held.
  bool NoteStarvedLocked();
  // The global free list has segments again, or the pool grew: refill, wake waiters and serve
  // listeners. Outside every lock.
  void OnGlobalAvailable();
  // OnGlobalAvailable without registering again; returns true when the refill failed and the
  // pool must register (again).
  bool ServeFromGlobal();
  // Gives a segment that is neither queued nor lent to the first listener that takes it, else
  // to the queue or (over size, destroyed) to the global pool. REQUIRES: `lock` holds mu_.
  // Listeners are called with the lock released; returns with `lock` released or held (check
  // owns_lock()). May delete this pool (orphaned, last segment home): the caller must not touch
  // the pool afterwards unless it holds a shared_ptr to it.
  void GiveLocked(MemorySegment* segment, std::unique_lock<std::mutex>& lock);
  // Offers queued buffers to waiting listeners. Same lock contract as GiveLocked; the caller
  // holds a shared_ptr. Returns true when the pool must register for the global pool.
  bool ServeListenersLocked(std::unique_lock<std::mutex>& lock);
  void WakeWaitersLocked();
  // A segment was queued: wakes blocked requests, and WaitAvailable callers once the run of
  // queued segments reaches the wake batch.
  void WakeOnQueuedLocked();

  const std::shared_ptr<NetworkBufferPool> global_;
  const std::string name_;
  const uint32_t min_;
  const uint32_t max_;
  const uint32_t max_per_subpartition_;
  const uint32_t max_overdraft_;
  const uint32_t wake_batch_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint32_t size_;                        // GUARDED_BY(mu_)
  uint32_t owned_ = 0;                   // GUARDED_BY(mu_): taken from global, incl. overdraft
  uint32_t lent_ = 0;                    // GUARDED_BY(mu_): held by Buffers, incl. overdraft
  // GUARDED_BY(mu_). Overdraft segments are lent beyond the size: overdraft_ <= owned_ - size_.
  uint32_t overdraft_ = 0;
  std::vector<MemorySegment*> queue_;    // GUARDED_BY(mu_): LIFO of free segments
  std::vector<uint32_t> per_subpartition_;  // GUARDED_BY(mu_)
  uint32_t capped_subpartitions_ = 0;    // GUARDED_BY(mu_): at their cap
  std::deque<BufferListener*> listeners_;  // GUARDED_BY(mu_)
  uint32_t blocked_ = 0;                 // GUARDED_BY(mu_): threads in blocking calls
  uint32_t blocked_requests_ = 0;        // GUARDED_BY(mu_): of those, in RequestBufferBlocking
  bool waiting_for_global_ = false;      // GUARDED_BY(mu_)
  bool cancelled_ = false;               // GUARDED_BY(mu_)
  bool destroyed_ = false;               // GUARDED_BY(mu_)
  bool orphaned_ = false;                // GUARDED_BY(mu_): no shared_ptr left; delete when drained
  // Demand measurement (usage-driven redistribution).
  std::atomic<uint32_t> backlog_{0};
  uint32_t peak_lent_ = 0;               // GUARDED_BY(mu_): this window
  bool starved_ = false;                 // GUARDED_BY(mu_): this window
  int64_t starved_since_ns_ = 0;         // GUARDED_BY(mu_): 0 when not waiting
  uint64_t starved_wait_ns_ = 0;         // GUARDED_BY(mu_): in all
  uint64_t demand_ = 0;                  // GUARDED_BY(mu_): smoothed
  uint32_t want_ = 0;                    // GUARDED_BY(mu_): NextWant of the demand
};

}  // namespace sluice::buffer
