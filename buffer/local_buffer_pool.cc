#include "buffer/local_buffer_pool.h"

#include <algorithm>

#include "buffer/network_buffer_pool.h"

namespace sluice::buffer {

LocalBufferPool::LocalBufferPool(std::shared_ptr<NetworkBufferPool> global,
                                 const LocalBufferPoolOptions& options)
    : global_(std::move(global)),
      name_(options.name),
      min_(options.min_segments),
      max_(options.max_segments),
      max_per_subpartition_(options.max_buffers_per_subpartition),
      max_overdraft_(options.max_overdraft),
      size_(options.min_segments),
      per_subpartition_(options.num_subpartitions, 0) {
  // Room for every segment this pool can ever hold, so recycling never allocates.
  queue_.reserve(static_cast<size_t>(max_) + max_overdraft_);
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
  if (auto self = weak_from_this().lock()) {
    global_->AddAvailabilityWaiter(std::move(self));
  } else {
    std::lock_guard lock(mu_);
    waiting_for_global_ = false;  // being destroyed: nobody to notify
  }
}

bool LocalBufferPool::AvailableLocked() const {
  return !destroyed_ && !queue_.empty() && capped_subpartitions_ == 0 && overdraft_ == 0;
}

Buffer LocalBufferPool::Request(int32_t subpartition, Take take) {
  MemorySegment* s = nullptr;
  bool must_register = false;
  {
    std::lock_guard lock(mu_);
    if (destroyed_) return Buffer();
    SLUICE_CHECK(subpartition < 0 || static_cast<size_t>(subpartition) < per_subpartition_.size(),
                 "LocalBufferPool::RequestBuffer with a subpartition the pool does not have");
    must_register = RefillLocked();
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
      // Eagerly queue the next segment so that availability means "the next request succeeds".
      must_register = RefillLocked() || must_register;
    }
  }
  if (must_register) RegisterForGlobal();
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
    const bool timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
    --blocked_;
    if (timed_out && queue_.empty()) {
      if (destroyed_) return ClosedError("local buffer pool '" + name_ + "' was destroyed");
      if (cancelled_) return Cancelled("buffer request on pool '" + name_ + "' was cancelled");
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
    ++blocked_;
    const bool timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
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

bool LocalBufferPool::AddBufferListener(BufferListener* listener) {
  bool must_register;
  {
    std::lock_guard lock(mu_);
    if (destroyed_) return false;
    must_register = RefillLocked();
    if (!queue_.empty()) return false;
    listeners_.push_back(listener);
  }
  if (must_register) RegisterForGlobal();
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
  {
    std::lock_guard lock(mu_);
    const int32_t sp = segment->tag_;
    segment->tag_ = -1;
    if (sp >= 0) {
      SLUICE_CHECK(per_subpartition_[sp] > 0, "subpartition buffer count underflow");
      if (per_subpartition_[sp]-- == max_per_subpartition_) {
        --capped_subpartitions_;
        WakeWaitersLocked();
      }
    }
  }
  Give(segment);
}

void LocalBufferPool::Give(MemorySegment* segment) {
  while (true) {
    BufferListener* listener = nullptr;
    bool delete_self = false;
    {
      std::lock_guard lock(mu_);
      if (destroyed_ || owned_ > size_) {
        --owned_;
        if (overdraft_ > 0) {
          --overdraft_;
          WakeWaitersLocked();
        }
        delete_self = orphaned_ && owned_ == 0;
      } else if (!listeners_.empty()) {
        listener = listeners_.front();
        listeners_.pop_front();
      } else {
        queue_.push_back(segment);
        WakeWaitersLocked();
        return;
      }
    }
    if (listener == nullptr) {
      NetworkBufferPool* global = global_.get();
      if (delete_self) {
        // Keep the global pool alive past our own deletion.
        std::shared_ptr<NetworkBufferPool> keep = global_;
        delete this;
        global->RecycleSegment(segment);
      } else {
        global->RecycleSegment(segment);
      }
      return;
    }
    // One-shot listener, called outside every lock; it may take the buffer or decline.
    Buffer offered = Buffer::Wrap(segment, this);
    if (listener->NotifyBufferAvailable(offered) && !offered.valid()) return;
    segment = offered.Detach();
  }
}

void LocalBufferPool::ServeListeners() {
  while (true) {
    MemorySegment* s = nullptr;
    bool must_register = false;
    {
      std::lock_guard lock(mu_);
      if (listeners_.empty() || destroyed_) return;
      must_register = RefillLocked();
      if (!queue_.empty()) {
        s = queue_.back();
        queue_.pop_back();
      }
    }
    if (must_register) RegisterForGlobal();
    if (s == nullptr) return;
    Give(s);  // goes to the first listener that takes it
  }
}

void LocalBufferPool::OnGlobalAvailable() {
  bool must_register;
  bool has_listeners;
  {
    std::lock_guard lock(mu_);
    waiting_for_global_ = false;
    if (destroyed_) return;
    must_register = RefillLocked();
    if (!queue_.empty()) WakeWaitersLocked();
    has_listeners = !listeners_.empty();
  }
  if (must_register) RegisterForGlobal();
  if (has_listeners) ServeListeners();
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
    if (overdraft_ > 0) --overdraft_;
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
  s.lent = owned_ - s.queued;
  s.overdraft = overdraft_;
  s.listeners = static_cast<uint32_t>(listeners_.size());
  s.available = AvailableLocked();
  s.destroyed = destroyed_;
  return s;
}

}  // namespace sluice::buffer
