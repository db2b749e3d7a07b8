#include "buffer/network_buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "buffer/local_buffer_pool.h"
#include "buffer/redistribution.h"

namespace sluice::buffer {

namespace {
constexpr uint32_t kMinSegment = 4u << 10;
constexpr uint32_t kMaxSegment = 1u << 20;

std::string Bytes(uint64_t b) {
  char out[64];
  if (b >= (1ull << 20) && b % (1ull << 20) == 0) {
    std::snprintf(out, sizeof(out), "%llu MiB", static_cast<unsigned long long>(b >> 20));
  } else if (b >= (1ull << 10) && b % (1ull << 10) == 0) {
    std::snprintf(out, sizeof(out), "%llu KiB", static_cast<unsigned long long>(b >> 10));
  } else {
    std::snprintf(out, sizeof(out), "%llu bytes", static_cast<unsigned long long>(b));
  }
  return out;
}
}  // namespace

// The lock-free free list: an intrusive Treiber stack of segment indices. The head packs the
// top index with a tag that changes on every update (no ABA); the links live in a preallocated
// array, so nothing allocates. Every access is atomic (boost::lockfree::stack reads node links
// that a concurrent push writes non-atomically, which ThreadSanitizer rightly reports).
class NetworkBufferPool::FreeList {
 public:
  static constexpr uint32_t kEmpty = MemorySegment::kUnpooled;

  explicit FreeList(uint32_t capacity) : next_(new std::atomic<uint32_t>[capacity]) {}

  void Push(uint32_t index) {
    uint64_t head = head_.load(std::memory_order_relaxed);
    while (true) {
      next_[index].store(Index(head), std::memory_order_relaxed);
      if (head_.compare_exchange_weak(head, Pack(index, Tag(head) + 1), std::memory_order_release,
                                      std::memory_order_relaxed)) {
        return;
      }
    }
  }

  // kEmpty when the stack is empty.
  uint32_t Pop() {
    uint64_t head = head_.load(std::memory_order_acquire);
    while (true) {
      const uint32_t index = Index(head);
      if (index == kEmpty) return kEmpty;
      // May be stale when `index` was popped and pushed again meanwhile; the tag then differs
      // and the exchange fails.
      const uint32_t next = next_[index].load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(head, Pack(next, Tag(head) + 1), std::memory_order_acquire,
                                      std::memory_order_acquire)) {
        return index;
      }
    }
  }

 private:
  static uint64_t Pack(uint32_t index, uint32_t tag) {
    return (static_cast<uint64_t>(tag) << 32) | index;
  }
  static uint32_t Index(uint64_t head) { return static_cast<uint32_t>(head); }
  static uint32_t Tag(uint64_t head) { return static_cast<uint32_t>(head >> 32); }

  alignas(64) std::atomic<uint64_t> head_{Pack(kEmpty, 0)};
  std::unique_ptr<std::atomic<uint32_t>[]> next_;
};

Status ValidateOptions(const NetworkBufferPoolOptions& o) {
  const uint32_t s = o.segment_size;
  if (s < kMinSegment || s > kMaxSegment || (s & (s - 1)) != 0) {
    return InvalidArgument("segment_size " + std::to_string(s) +
                           " is not a power of two between 4096 (4 KiB) and 1048576 (1 MiB); "
                           "set segment_size to e.g. 32768");
  }
  if (o.network_memory < s) {
    return InvalidArgument("network_memory " + std::to_string(o.network_memory) +
                           " bytes is smaller than one segment (" + Bytes(s) +
                           "); set network_memory to at least " + std::to_string(s));
  }
  if (o.network_memory / s >= MemorySegment::kUnpooled) {
    return InvalidArgument("network_memory " + Bytes(o.network_memory) + " makes " +
                           std::to_string(o.network_memory / s) +
                           " segments, more than 2^32-1; use a larger segment_size");
  }
  return Status::Ok();
}

std::string FormatAdmissionError(const char* what, uint32_t extra, uint32_t required,
                                 uint32_t total, uint32_t segment_size) {
  const uint64_t need = static_cast<uint64_t>(required) + extra;
  const uint32_t unreserved = total > required ? total - required : 0;
  std::string m = "insufficient network memory for ";
  m += what;
  m += ": required " + std::to_string(extra) + " segments, but only " + std::to_string(unreserved) +
       " of " + std::to_string(total) + " segments are available (unreserved; " +
       std::to_string(required) +
       " are already reserved as pool minimums and exclusive buffers); segment size " +
       Bytes(segment_size) + ", network_memory " +
       Bytes(static_cast<uint64_t>(total) * segment_size) + ". Raise network_memory to at least " +
       Bytes(need * segment_size) + " (" + std::to_string(need * segment_size) +
       " bytes), or lower buffers_per_channel, floating_per_gate or the number of channels";
  return m;
}

Result<std::shared_ptr<NetworkBufferPool>> NetworkBufferPool::Create(
    const NetworkBufferPoolOptions& options) {
  if (Status st = ValidateOptions(options); !st.ok()) return st;
  const auto total = static_cast<uint32_t>(options.network_memory / options.segment_size);
  const uint64_t bytes = static_cast<uint64_t>(total) * options.segment_size;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  if (options.preallocate) flags = (flags & ~MAP_NORESERVE) | MAP_POPULATE;
  void* slab = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (slab == MAP_FAILED) {
    return ResourceExhausted("could not reserve " + Bytes(bytes) + " of network memory: " +
                             std::strerror(errno) + "; lower network_memory");
  }
  if (options.huge_pages) ::madvise(slab, bytes, MADV_HUGEPAGE);  // advice only
  return std::shared_ptr<NetworkBufferPool>(
      new NetworkBufferPool(options, static_cast<uint8_t*>(slab), total));
}

NetworkBufferPool::NetworkBufferPool(const NetworkBufferPoolOptions& options, uint8_t* slab,
                                     uint32_t total)
    : segment_size_(options.segment_size),
      total_(total),
      slab_bytes_(static_cast<uint64_t>(total) * options.segment_size),
      slab_(slab),
      segments_(new MemorySegment[total]),
      free_(std::make_unique<FreeList>(total)),
      policy_(options.redistribution),
      usage_(options.usage),
      // At least 1 ms: a rebalance serves listeners, which may starve again (no recursion).
      rebalance_interval_ns_(std::max<int64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(options.redistribution_interval)
              .count(),
          1000000)) {
  direct_recycler_.pool = this;
  // Push in reverse so that the lowest segments are handed out first.
  for (uint32_t i = total; i-- > 0;) {
    MemorySegment& s = segments_[i];
    s.data_ = slab_ + static_cast<uint64_t>(i) * segment_size_;
    s.capacity_ = segment_size_;
    s.index_ = i;
    s.holder_.store(MemorySegment::kHolderFree, std::memory_order_relaxed);
    free_->Push(i);
  }
  available_.store(total, std::memory_order_seq_cst);
}

NetworkBufferPool::~NetworkBufferPool() {
  const uint32_t avail = available_segments();
  if (avail != total_) {
    std::fprintf(stderr,
                 "sluice: NetworkBufferPool destroyed with %u of %u segments still out; the "
                 "slab is leaked instead of unmapped under live buffers\n",
                 total_ - avail, total_);
    // Live Buffers still point at their control blocks and the free list: leak those too.
    (void)segments_.release();
    (void)free_.release();
    return;
  }
  ::munmap(slab_, slab_bytes_);
}

uint32_t NetworkBufferPool::available_segments() const {
  const int64_t a = available_.load(std::memory_order_acquire);
  return a < 0 ? 0 : static_cast<uint32_t>(std::min<int64_t>(a, total_));
}

uint32_t NetworkBufferPool::required_segments() const {
  std::lock_guard lock(mu_);
  return required_;
}

NetworkBufferPoolStats NetworkBufferPool::Stats() const {
  NetworkBufferPoolStats s;
  s.segment_size = segment_size_;
  s.total = total_;
  s.available = available_segments();
  s.exclusive = exclusive_out_.load(std::memory_order_acquire);
  const uint32_t out = total_ - s.available;
  s.pooled = out > s.exclusive ? out - s.exclusive : 0;
  std::lock_guard lock(mu_);
  s.required = required_;
  s.local_pools = static_cast<uint32_t>(pools_.size());
  s.rebalances = rebalances_.load(std::memory_order_relaxed);
  return s;
}

std::string NetworkBufferPool::DebugString() const {
  const NetworkBufferPoolStats s = Stats();
  char out[256];
  std::snprintf(out, sizeof(out),
                "NetworkBufferPool{segment=%u total=%u available=%u exclusive=%u pooled=%u "
                "required=%u pools=%u}",
                s.segment_size, s.total, s.available, s.exclusive, s.pooled, s.required,
                s.local_pools);
  return out;
}

// available_ counts segments in the free list that nobody has claimed: a request first claims
// one (so available_ never overstates the list), then pops; a recycle pushes, then counts. The
// operations on available_ and waiters_present_ are sequentially consistent: a recycler either
// sees a waiter that registered, or the waiter sees the recycled segment (Dekker).
MemorySegment* NetworkBufferPool::TryRequestSegment() {
  int64_t a = available_.load(std::memory_order_seq_cst);
  do {
    if (a <= 0) return nullptr;
  } while (!available_.compare_exchange_weak(a, a - 1, std::memory_order_seq_cst));
  const uint32_t index = free_->Pop();
  SLUICE_CHECK(index != FreeList::kEmpty, "free list empty although a segment was claimed");
  MemorySegment* s = &segments_[index];
  const uint8_t prev = s->holder_.exchange(MemorySegment::kHolderTaken, std::memory_order_acq_rel);
  SLUICE_CHECK(prev == MemorySegment::kHolderFree, "free list held a segment that was not free");
  return s;
}

void NetworkBufferPool::RecycleSegment(MemorySegment* s) {
  SLUICE_CHECK(s != nullptr && s >= &segments_[0] && s < &segments_[0] + total_,
               "segment recycled into a NetworkBufferPool it does not belong to");
  SLUICE_CHECK(s->refs_.load(std::memory_order_acquire) == 0,
               "segment returned to the NetworkBufferPool while a Buffer still holds it");
  const uint8_t prev = s->holder_.exchange(MemorySegment::kHolderFree, std::memory_order_acq_rel);
  SLUICE_CHECK(prev != MemorySegment::kHolderFree,
               "segment recycled twice into the NetworkBufferPool");
  SLUICE_CHECK(prev != MemorySegment::kHolderLent,
               "segment returned to the NetworkBufferPool while a LocalBufferPool lends it out");
  s->tag_ = -1;
  free_->Push(s->index_);
  available_.fetch_add(1, std::memory_order_seq_cst);
  // Every recycle looks (one load of a rarely written line): notifying only on the transition
  // from empty loses wake-ups, because a claimed-but-not-yet-popped segment hides the emptiness.
  if (waiters_present_.load(std::memory_order_seq_cst) > 0) NotifyAvailable();
}

void NetworkBufferPool::NotifyAvailable() {
  std::vector<std::weak_ptr<LocalBufferPool>> waiters;
  {
    std::lock_guard lock(mu_);
    if (exclusive_waiting_ > 0) segment_freed_.notify_all();
    waiters.swap(availability_waiters_);
    waiters_present_.fetch_sub(static_cast<uint32_t>(waiters.size()), std::memory_order_acq_rel);
  }
  for (auto& w : waiters) {
    if (std::shared_ptr<LocalBufferPool> pool = w.lock()) pool->OnGlobalAvailable();
  }
}

bool NetworkBufferPool::AddAvailabilityWaiter(const std::shared_ptr<LocalBufferPool>& pool) {
  {
    std::lock_guard lock(mu_);
    const bool present = std::any_of(availability_waiters_.begin(), availability_waiters_.end(),
                                     [&](const std::weak_ptr<LocalBufferPool>& w) {
                                       return !w.owner_before(pool) && !pool.owner_before(w);
                                     });
    if (!present) {
      availability_waiters_.push_back(pool);
      waiters_present_.fetch_add(1, std::memory_order_seq_cst);
    }
  }
  // A segment freed between the pool's failed request and the registration above may have
  // seen no waiter: the caller must look again itself (not through NotifyAvailable, which
  // would recurse into the caller while the free list stays contended).
  return available_.load(std::memory_order_seq_cst) > 0;
}

Status NetworkBufferPool::Admit(uint32_t extra, const char* what) const {
  if (static_cast<uint64_t>(required_) + extra > total_) {
    return ResourceExhausted(FormatAdmissionError(what, extra, required_, total_, segment_size_));
  }
  return Status::Ok();
}

void NetworkBufferPool::RedistributeLocked(std::vector<std::shared_ptr<LocalBufferPool>>* grown,
                                           const LocalBufferPool* created) {
  std::vector<uint32_t> sizes;
  if (policy_ == RedistributionPolicy::kUsage) {
    std::vector<PoolUsage> usage;
    usage.reserve(pools_.size());
    for (LocalBufferPool* p : pools_) usage.push_back(p->Usage(/*sample=*/false, usage_));
    sizes = RedistributeByUsage(usage, total_ - required_);
  } else {
    std::vector<PoolBounds> bounds;
    bounds.reserve(pools_.size());
    for (LocalBufferPool* p : pools_) bounds.push_back({p->min_, p->max_});
    sizes = RedistributeSpare(bounds, total_ - required_);
  }
  std::vector<MemorySegment*> surplus;
  for (size_t i = 0; i < pools_.size(); ++i) {
    // A pool just created did not grow: it has nobody waiting, and takes segments lazily.
    if (pools_[i]->Resize(sizes[i], &surplus) && pools_[i] != created) {
      if (auto p = pools_[i]->weak_from_this().lock()) grown->push_back(std::move(p));
    }
  }
  // Returning segments may notify waiters, which takes mu_: hand them over after unlocking.
  surplus_.insert(surplus_.end(), surplus.begin(), surplus.end());
}

void NetworkBufferPool::ServeGrown(std::vector<std::shared_ptr<LocalBufferPool>>& grown) {
  std::vector<MemorySegment*> surplus;
  {
    std::lock_guard lock(mu_);
    surplus.swap(surplus_);
  }
  for (MemorySegment* s : surplus) RecycleSegment(s);
  for (auto& p : grown) p->OnGlobalAvailable();
  grown.clear();
}

void NetworkBufferPool::Redistribute() {
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    RedistributeLocked(&grown);
  }
  ServeGrown(grown);
}

void NetworkBufferPool::Rebalance() {
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    if (policy_ == RedistributionPolicy::kUsage) {
      // Closes every pool's window; RedistributeLocked then reads the new smoothed demand.
      for (LocalBufferPool* p : pools_) p->Usage(/*sample=*/true, usage_);
      rebalances_.fetch_add(1, std::memory_order_relaxed);
    }
    RedistributeLocked(&grown);
  }
  ServeGrown(grown);
}

void NetworkBufferPool::OnPoolStarved() {
  if (policy_ != RedistributionPolicy::kUsage) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t next = next_rebalance_ns_.load(std::memory_order_relaxed);
  // One thread wins the window; the others (and nested calls from listeners) return.
  if (now < next || !next_rebalance_ns_.compare_exchange_strong(next, now + rebalance_interval_ns_,
                                                                std::memory_order_relaxed)) {
    return;
  }
  Rebalance();
}

Result<std::vector<MemorySegment*>> NetworkBufferPool::RequestExclusiveSegments(
    uint32_t n, std::chrono::milliseconds timeout) {
  std::vector<MemorySegment*> got;
  if (n == 0) return got;
  got.reserve(n);
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    if (Status st = Admit(n, "exclusive buffers of an input channel"); !st.ok()) return st;
    required_ += n;
    RedistributeLocked(&grown);  // pools shrink to make room
  }
  ServeGrown(grown);

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto take_all = [&] {
    while (got.size() < n) {
      MemorySegment* s = TryRequestSegment();
      if (s == nullptr) break;
      got.push_back(s);
    }
  };
  {
    std::unique_lock lock(mu_);
    take_all();
    if (got.size() < n) {
      // Registered before looking again, under mu_: a recycler that misses the registration
      // left its segment where take_all() finds it; one that sees it notifies under mu_.
      ++exclusive_waiting_;
      waiters_present_.fetch_add(1, std::memory_order_seq_cst);
      while (true) {
        take_all();
        if (got.size() == n) break;
        if (segment_freed_.wait_until(lock, deadline) == std::cv_status::timeout) {
          take_all();
          break;
        }
      }
      --exclusive_waiting_;
      waiters_present_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
  if (got.size() == n) {
    exclusive_out_.fetch_add(n, std::memory_order_acq_rel);
    return got;
  }
  const size_t arrived = got.size();
  for (MemorySegment* s : got) RecycleSegment(s);
  {
    std::lock_guard lock(mu_);
    required_ -= n;
    RedistributeLocked(&grown);
  }
  ServeGrown(grown);
  return TimeoutError("timed out after " + std::to_string(timeout.count()) +
                      " ms waiting for " + std::to_string(n) + " exclusive segments (" +
                      std::to_string(arrived) +
                      " became free); the rest are lent out by local buffer pools and were not "
                      "returned in time. Raise network_memory or the exclusive request timeout");
}

void NetworkBufferPool::RecycleExclusiveSegments(std::span<MemorySegment* const> segments) {
  if (segments.empty()) return;
  const auto n = static_cast<uint32_t>(segments.size());
  const uint32_t out = exclusive_out_.fetch_sub(n, std::memory_order_acq_rel);
  SLUICE_CHECK(out >= n, "more exclusive segments returned than were requested");
  for (MemorySegment* s : segments) RecycleSegment(s);
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    SLUICE_CHECK(required_ >= segments.size(), "exclusive segments returned twice");
    required_ -= static_cast<uint32_t>(segments.size());
    RedistributeLocked(&grown);
  }
  ServeGrown(grown);
}

Result<std::shared_ptr<LocalBufferPool>> NetworkBufferPool::CreateLocalBufferPool(
    const LocalBufferPoolOptions& options) {
  if (options.min_segments < 1 || options.max_segments < options.min_segments) {
    return InvalidArgument("local buffer pool '" + options.name + "': min_segments " +
                           std::to_string(options.min_segments) + " and max_segments " +
                           std::to_string(options.max_segments) +
                           " must satisfy 1 <= min <= max");
  }
  std::shared_ptr<LocalBufferPool> pool;
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    const std::string what = "local buffer pool '" + options.name + "'";
    if (Status st = Admit(options.min_segments, what.c_str()); !st.ok()) return st;
    required_ += options.min_segments;
    pool = std::shared_ptr<LocalBufferPool>(new LocalBufferPool(shared_from_this(), options),
                                            LocalBufferPool::Deleter{});
    pools_.push_back(pool.get());
    RedistributeLocked(&grown, pool.get());
  }
  ServeGrown(grown);
  return pool;
}

void NetworkBufferPool::Unregister(LocalBufferPool* pool) {
  std::vector<std::shared_ptr<LocalBufferPool>> grown;
  {
    std::lock_guard lock(mu_);
    auto it = std::find(pools_.begin(), pools_.end(), pool);
    SLUICE_CHECK(it != pools_.end(), "LocalBufferPool unregistered twice");
    pools_.erase(it);
    required_ -= pool->min_;
    RedistributeLocked(&grown);
  }
  ServeGrown(grown);
}

}  // namespace sluice::buffer
