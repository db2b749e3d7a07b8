#include "buffer/local_buffer_pool.h"

#include <algorithm>

#include "buffer/network_buffer_pool.h"

namespace sluice::buffer {

namespace {
int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

LocalBufferPool::LocalBufferPool(std::shared_ptr<NetworkBufferPool> global,
                                 const LocalBufferPoolOptions& options)
    : global_(std::move(global)),
      name_(options.name),
      min_(options.min_segments),
      max_(options.max_segments),
      max_per_subpartition_(options.max_buffers_per_subpartition),
      max_overdraft_(options.max_overdraft),
      wake_batch_(std::max<uint32_t>(options.wake_batch, 1)),
      size_(options.min_segments),
      per_subpartition_(options.num_subpartitions, 0) {
  // Room for every segment this pool can ever hold, so recycling never allocates.
  queue_.reserve(static_cast<size_t>(max_) + max_overdraft_);
  want_ = min_;
}

LocalBufferPool::~LocalBufferPool() = default;

void LocalBufferPool::Deleter::operator()(LocalBufferPool* pool) const {
  pool->Destroy();
  bool drained;
  {
    std::lock_guard lock(pool->mu_);
    pool->orphaned_ = true;
    drained = pool->owned_ == 0;
  }
  if (drained) delete pool;
}

uint32_t LocalBufferPool::segment_size() const { return global_->segment_size(); }

bool LocalBufferPool::RefillLocked() {
  if (!queue_.empty() || owned_ >= size_ || destroyed_) return false;
  MemorySegment* s = global_->TryRequestSegment();
  if (s == nullptr) {
    if (waiting_for_global_) return false;
    waiting_for_global_ = true;
    return true;
  }
  ++owned_;
  queue_.push_back(s);
  return false;
}

void LocalBufferPool::RegisterForGlobal() {
  std::shared_ptr<LocalBufferPool> self = weak_from_this().lock();
  if (self == nullptr) {
    std::lock_guard lock(mu_);
    waiting_for_global_ = false;  // being destroyed: nobody to notify
    return;
  }
  // A loop, not a recursion: while segments keep turning up and other pools keep winning
  // them, serve ourselves and register again.
  while (global_->AddAvailabilityWaiter(self) && ServeFromGlobal()) {
  }
}

void LocalBufferPool::MarkLentLocked(MemorySegment* segment) {
  SLUICE_CHECK(segment->holder_.load(std::memory_order_relaxed) == MemorySegment::kHolderTaken,
               "LocalBufferPool lent out a segment it does not hold");
  segment->holder_.store(MemorySegment::kHolderLent, std::memory_order_relaxed);
  peak_lent_ = std::max(peak_lent_, ++lent_);
  if (starved_since_ns_ != 0) {
    starved_wait_ns_ += static_cast<uint64_t>(std::max<int64_t>(SteadyNs() - starved_since_ns_, 0));
    starved_since_ns_ = 0;
  }
}

bool LocalBufferPool::NoteStarvedLocked() {
  if (destroyed_ || !queue_.empty()) return false;
  starved_ = true;
  if (starved_since_ns_ == 0) starved_since_ns_ = SteadyNs();
  // At its max with the global pool serving it, no redistribution can help.
  return size_ < max_ || owned_ < size_;
}

PoolUsage LocalBufferPool::Usage(bool sample, const UsagePolicy& policy) {
  std::lock_guard lock(mu_);
  if (sample) {
    const bool starved = starved_ || starved_since_ns_ != 0;  // still waiting counts
    const uint64_t now = SampleDemand(peak_lent_, backlog_.load(std::memory_order_relaxed),
                                      starved, size_);
    demand_ = SmoothDemand(demand_, now, policy);
    want_ = NextWant(want_, WantFor(demand_, min_, max_, policy), policy);
    peak_lent_ = lent_;
    starved_ = false;
  }
  return PoolUsage{min_, max_, want_};
}

void LocalBufferPool::MarkReturnedLocked(MemorySegment* segment, const char* what) {
  SLUICE_CHECK(segment->holder_.load(std::memory_order_relaxed) == MemorySegment::kHolderLent,
               what);
  segment->holder_.store(MemorySegment::kHolderTaken, std::memory_order_relaxed);
  SLUICE_CHECK(lent_ > 0, "LocalBufferPool lent-buffer count underflow");
  --lent_;
}

bool LocalBufferPool::AvailableLocked() const {
  return !destroyed_ && !queue_.empty() && capped_subpartitions_ == 0 && overdraft_ == 0;
}

Buffer LocalBufferPool::Request(int32_t subpartition, Take take) {
  MemorySegment* s = nullptr;
  bool must_register = false;
  bool starved = false;
  {
    std::lock_guard lock(mu_);
    if (destroyed_) return Buffer();
    SLUICE_CHECK(subpartition < 0 || static_cast<size_t>(subpartition) < per_subpartition_.size(),
                 "LocalBufferPool::RequestBuffer with a subpartition the pool does not have");
    must_register = RefillLocked();
    starved = NoteStarvedLocked();
    if (!queue_.empty()) {
      s = queue_.back();
      queue_.pop_back();
    } else if (take == Take::kOrOverdraft && overdraft_ < max_overdraft_ && owned_ >= size_) {
      s = global_->TryRequestSegment();
      if (s != nullptr) {
        ++owned_;
        ++overdraft_;
      }
    }
    if (s != nullptr) {
      if (subpartition >= 0 &&
          ++per_subpartition_[subpartition] == max_per_subpartition_) {
        ++capped_subpartitions_;
      }
      s->tag_ = subpartition;
      MarkLentLocked(s);
      // Eagerly queue the next segment so that availability means "the next request succeeds".
      must_register = RefillLocked() || must_register;
    }
  }
  if (must_register) RegisterForGlobal();
  if (starved) global_->OnPoolStarved();
  if (s == nullptr) return Buffer();
  return Buffer::Wrap(s, this);
}

Buffer LocalBufferPool::RequestBuffer(int32_t subpartition) {
  return Request(subpartition, Take::kNormal);
}

Buffer LocalBufferPool::RequestBufferOrOverdraft(int32_t subpartition) {
  return Request(subpartition, Take::kOrOverdraft);
}

Result<Buffer> LocalBufferPool::RequestBufferBlocking(int32_t subpartition,
                                                      std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (Buffer b = Request(subpartition, Take::kNormal)) return b;
    std::unique_lock lock(mu_);
    if (destroyed_) return ClosedError("local buffer pool '" + name_ + "' was destroyed");
    if (cancelled_) return Cancelled("buffer request on pool '" + name_ + "' was cancelled");
    if (!queue_.empty() || (owned_ < size_ && !waiting_for_global_)) continue;  // try again
    ++blocked_;
    ++blocked_requests_;
    const bool timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
    --blocked_requests_;
    --blocked_;
    if (timed_out && queue_.empty()) {
      if (destroyed_) return ClosedError("local buffer pool '" + name_ + "' was destroyed");
      if (cancelled_) return Cancelled("buffer request on pool '" + name_ + "' was cancelled");
      if (owned_ < size_) {
        return TimeoutError("no buffer from pool '" + name_ + "' within " +
                            std::to_string(timeout.count()) + " ms: it holds " +
                            std::to_string(owned_) + " of its " + std::to_string(size_) +
                            " segments and the network buffer pool has none free; raise "
                            "network_memory or release buffers sooner");
      }
      return TimeoutError("no buffer from pool '" + name_ + "' within " +
                          std::to_string(timeout.count()) + " ms: all " +
                          std::to_string(owned_) +
                          " of its segments are in use (consumers are not releasing them)");
    }
  }
}

bool LocalBufferPool::IsAvailable() {
  bool must_register;
  bool available;
  {
    std::lock_guard lock(mu_);
    must_register = RefillLocked();
    available = AvailableLocked();
  }
  if (must_register) RegisterForGlobal();
  return available;
}

Status LocalBufferPool::WaitAvailable(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  bool told = false;  // the global pool heard of this wait's starvation
  while (true) {
    if (destroyed_) return ClosedError("local buffer pool '" + name_ + "' was destroyed");
    if (cancelled_) return Cancelled("wait on pool '" + name_ + "' was cancelled");
    if (RefillLocked()) {
      lock.unlock();
      RegisterForGlobal();
      lock.lock();
      continue;
    }
    if (AvailableLocked()) return Status::Ok();
    if (!told && NoteStarvedLocked()) {
      told = true;
      lock.unlock();
      global_->OnPoolStarved();
      lock.lock();
      continue;
    }
    told = false;
    ++blocked_;
    bool timed_out;
    if (wake_batch_ > 1) {
      // Woken by a run of queued segments (WakeOnQueuedLocked) or by the recheck.
      const auto recheck = std::chrono::steady_clock::now() + kWakeBatchRecheck;
      cv_.wait_until(lock, std::min(deadline, recheck));
      timed_out = std::chrono::steady_clock::now() >= deadline;
    } else {
      timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
    }
    --blocked_;
    if (timed_out && !AvailableLocked() && !destroyed_ && !cancelled_) {
      return TimeoutError("pool '" + name_ + "' not available within " +
                          std::to_string(timeout.count()) + " ms (backpressure)");
    }
  }
}

void LocalBufferPool::CancelBlockingRequests() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  cv_.notify_all();
}

void LocalBufferPool::WakeWaitersLocked() {
  if (blocked_ > 0) cv_.notify_all();
}

void LocalBufferPool::WakeOnQueuedLocked() {
  if (blocked_ == 0) return;
  const uint32_t run = std::clamp<uint32_t>(size_ / 4, 1, wake_batch_);
  if (blocked_requests_ > 0 || queue_.size() >= run) cv_.notify_all();
}

bool LocalBufferPool::AddBufferListener(BufferListener* listener) {
  bool must_register;
  bool starved;
  {
    std::lock_guard lock(mu_);
    if (destroyed_) return false;
    must_register = RefillLocked();
    if (!queue_.empty()) return false;
    listeners_.push_back(listener);
    starved = NoteStarvedLocked();
  }
  if (must_register) RegisterForGlobal();
  // May serve the listener (the pool grew) before this returns true: listeners allow that.
  if (starved) global_->OnPoolStarved();
  return true;
}

bool LocalBufferPool::RemoveBufferListener(BufferListener* listener) {
  std::lock_guard lock(mu_);
  auto it = std::find(listeners_.begin(), listeners_.end(), listener);
  if (it == listeners_.end()) return false;
  listeners_.erase(it);
  return true;
}

void LocalBufferPool::Recycle(MemorySegment* segment) {
  SLUICE_CHECK(segment->recycler_ == this,
               "segment recycled into a LocalBufferPool that did not lend it");
  SLUICE_CHECK(segment->refs_.load(std::memory_order_acquire) == 0,
               "segment recycled into a LocalBufferPool while a Buffer still holds it");
  std::unique_lock lock(mu_);
  MarkReturnedLocked(segment, "segment recycled twice into a LocalBufferPool");
  const int32_t sp = segment->tag_;
  segment->tag_ = -1;
  if (sp >= 0) {
    SLUICE_CHECK(per_subpartition_[sp] > 0, "subpartition buffer count underflow");
    if (per_subpartition_[sp]-- == max_per_subpartition_) {
      --capped_subpartitions_;
      WakeWaitersLocked();
    }
  }
  GiveLocked(segment, lock);
  // The pool may be gone here (GiveLocked deletes an orphaned pool with its last segment).
}

void LocalBufferPool::GiveLocked(MemorySegment* segment, std::unique_lock<std::mutex>& lock) {
  while (true) {
    if (destroyed_ || owned_ > size_) {
      --owned_;
      if (overdraft_ > 0) {
        --overdraft_;
        WakeWaitersLocked();
      }
      const bool delete_self = orphaned_ && owned_ == 0;
      // Copied under the lock: once it is released another thread may delete this pool, and
      // the global pool must outlive the segment's return.
      std::shared_ptr<NetworkBufferPool> global = global_;
      lock.unlock();
      if (delete_self) delete this;
      global->RecycleSegment(segment);
      return;
    }
    if (listeners_.empty()) {
      queue_.push_back(segment);
      WakeOnQueuedLocked();
      return;
    }
    // One-shot listener, called outside every lock; it may take the buffer or decline. A lent
    // segment keeps the pool alive (owned_ > 0) while the listener runs.
    BufferListener* listener = listeners_.front();
    listeners_.pop_front();
    MarkLentLocked(segment);
    lock.unlock();
    {
      Buffer offered = Buffer::Wrap(segment, this);
      listener->NotifyBufferAvailable(offered);
      if (!offered.valid()) return;  // taken
      segment = offered.Detach();
    }
    lock.lock();
    MarkReturnedLocked(segment, "declined buffer was recycled");
  }
}

bool LocalBufferPool::ServeListenersLocked(std::unique_lock<std::mutex>& lock) {
  bool must_register = false;
  while (!destroyed_ && !listeners_.empty()) {
    must_register = RefillLocked() || must_register;
    if (queue_.empty()) break;
    MemorySegment* s = queue_.back();
    queue_.pop_back();
    GiveLocked(s, lock);  // goes to the first listener that takes it
    if (!lock.owns_lock()) lock.lock();
  }
  return must_register;
}

bool LocalBufferPool::ServeFromGlobal() {
  std::unique_lock lock(mu_);
  waiting_for_global_ = false;
  if (destroyed_) return false;
  bool must_register = RefillLocked();
  if (!queue_.empty()) WakeWaitersLocked();
  if (!listeners_.empty()) must_register = ServeListenersLocked(lock) || must_register;
  return must_register;
}

void LocalBufferPool::OnGlobalAvailable() {
  if (ServeFromGlobal()) RegisterForGlobal();
}

bool LocalBufferPool::Resize(uint32_t size, std::vector<MemorySegment*>* surplus) {
  std::lock_guard lock(mu_);
  if (destroyed_) return false;
  const uint32_t old = size_;
  size_ = std::clamp(size, min_, max_);
  while (owned_ > size_ && !queue_.empty()) {
    surplus->push_back(queue_.back());
    queue_.pop_back();
    --owned_;
  }
  // Overdraft is what is lent beyond the size. A pool that grew under its overdraft turns it
  // into ordinary buffers (as Flink does); otherwise it would stay unavailable for good.
  const uint32_t beyond = owned_ > size_ ? owned_ - size_ : 0;
  if (overdraft_ > beyond) {
    overdraft_ = beyond;
    WakeWaitersLocked();
  }
  return size_ > old;
}

void LocalBufferPool::Destroy() {
  std::vector<MemorySegment*> queued;
  std::deque<BufferListener*> listeners;
  {
    std::lock_guard lock(mu_);
    if (destroyed_) return;
    destroyed_ = true;
    queued.swap(queue_);
    owned_ -= static_cast<uint32_t>(queued.size());
    listeners.swap(listeners_);
    cv_.notify_all();
  }
  for (BufferListener* l : listeners) l->NotifyBufferDestroyed();
  for (MemorySegment* s : queued) global_->RecycleSegment(s);
  global_->Unregister(this);
}

bool LocalBufferPool::IsDestroyed() const {
  std::lock_guard lock(mu_);
  return destroyed_;
}

uint32_t LocalBufferPool::SubpartitionBuffers(uint32_t subpartition) const {
  std::lock_guard lock(mu_);
  SLUICE_CHECK(subpartition < per_subpartition_.size(), "no such subpartition");
  return per_subpartition_[subpartition];
}

LocalBufferPoolStats LocalBufferPool::Stats() const {
  std::lock_guard lock(mu_);
  LocalBufferPoolStats s;
  s.min = min_;
  s.max = max_;
  s.size = size_;
  s.owned = owned_;
  s.queued = static_cast<uint32_t>(queue_.size());
  s.lent = lent_;
  s.overdraft = overdraft_;
  s.listeners = static_cast<uint32_t>(listeners_.size());
  s.available = AvailableLocked();
  s.destroyed = destroyed_;
  s.demand = demand_;
  s.want = want_;
  s.backlog = backlog_.load(std::memory_order_relaxed);
  s.starved_wait_ns = starved_wait_ns_;
  return s;
}

}  // namespace sluice::buffer
