// Internal state of the PartitionStore, shared by partition_store.cc and store_view.cc. Not
// installed. Everything here is guarded by PartitionStore::Impl::mu_ unless said otherwise.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "store/partition_store.h"
#include "store/spill_dir.h"
#include "store/spill_file.h"

namespace sluice::store {

// Spilled buffers of one subpartition from one spill: header offsets in the data file.
struct Extent {
  std::vector<uint64_t> offsets;  // ordinal first_ordinal + i is at offsets[i]
  std::vector<uint32_t> sizes;    // and has sizes[i] bytes
};

// A deque that allocates nothing until its first element. An empty std::deque allocates
// about 600 bytes, and the store keeps one per subpartition of every map output, most of which
// may never hold a buffer (a writer names how many it has).
template <typename T>
class LazyDeque {
 public:
  using iterator = typename std::deque<T>::iterator;
  using const_iterator = typename std::deque<T>::const_iterator;

  bool empty() const { return !d_ || d_->empty(); }
  size_t size() const { return d_ ? d_->size() : 0; }
  // REQUIRES (front, pop_front, []): an element there.
  T& front() { return d_->front(); }
  T& operator[](size_t i) { return (*d_)[i]; }
  const T& operator[](size_t i) const { return (*d_)[i]; }
  void push_back(T v) {
    if (!d_) d_ = std::make_unique<std::deque<T>>();
    d_->push_back(std::move(v));
  }
  void pop_front() { d_->pop_front(); }
  void clear() { d_.reset(); }  // and its memory
  iterator begin() { return d_ ? d_->begin() : iterator(); }
  iterator end() { return d_ ? d_->end() : iterator(); }
  const_iterator begin() const { return d_ ? d_->cbegin() : const_iterator(); }
  const_iterator end() const { return d_ ? d_->cend() : const_iterator(); }

 private:
  std::unique_ptr<std::deque<T>> d_;
};

struct SubpartitionData {
  std::map<uint64_t, Extent> extents;  // by first ordinal; all below memory_first
  LazyDeque<buffer::Buffer> memory;    // ordinals [memory_first, total)
  uint64_t memory_first = 0;
  uint64_t total = 0;            // buffers appended
  bool pipelined_claimed = false;  // pipelined: its one reader came
  uint64_t consumed = 0;           // pipelined: the reader's cursor; memory below it is trimmed
  uint64_t consumed_seen = 0;      // pipelined: `consumed` when its writer last said it waits
};

// A view's notification state. `mu` is held while its listener runs, so Release can wait for
// a call in flight. `armed` is written under the store's mutex, read anywhere.
struct ViewCore {
  explicit ViewCore(uint32_t sub) : subpartition(sub) {}
  const uint32_t subpartition;  // what the view reads: appends to other subpartitions skip it
  // Held while the listener is called. Recursive: the listener may release its own view from
  // inside the callback (the server's write-through serves the reader on the notifying thread
  // and releases a failed view there).
  std::recursive_mutex mu;
  shuffle::SubpartitionListener* listener = nullptr;  // GUARDED_BY(mu)
  bool released = false;                             // GUARDED_BY(mu)
  std::atomic<bool> armed{true};
  std::atomic<uint32_t> read_held{0};  // read segments this view has out
  std::string failure;  // GUARDED_BY(store mu): an output of its read set failed or was released
};

enum class OutputState : uint8_t { kWriting, kCommitted, kAborted, kReleased };

struct ReadSet;

struct MapOutputData {
  std::string job;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  PartitionMode mode = PartitionMode::kPipelined;
  OutputState state = OutputState::kWriting;
  std::string failure;  // why it was aborted / released
  WriterId writer = 0;
  std::vector<SubpartitionData> subs;
  uint64_t bytes = 0;
  uint64_t records = 0;
  uint64_t memory_bytes = 0;  // capacity of the segments held (the budget's unit)
  uint64_t memory_data_bytes = 0;
  uint64_t disk_bytes = 0;
  std::shared_ptr<SpillFile> spill;  // created at the first spill
  std::string spill_stem;
  bool spilling = false;
  // The read sets that name this output: their views are told of its appends, commit and
  // failure. Weak: a read set goes with its job (or its last view); one entry per set.
  std::vector<std::weak_ptr<ReadSet>> read_sets;

  // Appends the live views of every read set naming this output (store lock held): for its
  // commit and failure.
  void CollectViews(std::vector<std::shared_ptr<ViewCore>>* out) const;
  // The same, only the views reading subpartition `sub`: the ones an append to it concerns.
  void CollectViewsOf(uint32_t sub, std::vector<std::shared_ptr<ViewCore>>* out) const;

  std::string Name() const {
    return "job '" + job + "' partition " + std::to_string(partition) + " attempt " +
           std::to_string(attempt);
  }
};

struct ReadSet {
  std::string partition_id;
  std::vector<std::shared_ptr<MapOutputData>> outputs;
  // Its live views by the subpartition each reads (store lock): registered once per view, not
  // once per output, so a view costs the same whatever the set's size. An append wakes only
  // the views of its subpartition, and releasing a view is O(views of that subpartition).
  std::unordered_map<uint32_t, std::vector<std::shared_ptr<ViewCore>>> views;
  size_t view_count = 0;  // the sum of views' vector sizes

  void AddView(std::shared_ptr<ViewCore> core) {
    views[core->subpartition].push_back(std::move(core));
    ++view_count;
  }
  void RemoveView(const std::shared_ptr<ViewCore>& core) {
    auto it = views.find(core->subpartition);
    if (it == views.end()) return;
    view_count -= std::erase(it->second, core);
    if (it->second.empty()) views.erase(it);
  }
};

inline void MapOutputData::CollectViews(std::vector<std::shared_ptr<ViewCore>>* out) const {
  for (const std::weak_ptr<ReadSet>& w : read_sets) {
    if (std::shared_ptr<ReadSet> set = w.lock()) {
      for (const auto& [sub, cores] : set->views) {
        out->insert(out->end(), cores.begin(), cores.end());
      }
    }
  }
}

inline void MapOutputData::CollectViewsOf(uint32_t sub,
                                          std::vector<std::shared_ptr<ViewCore>>* out) const {
  for (const std::weak_ptr<ReadSet>& w : read_sets) {
    std::shared_ptr<ReadSet> set = w.lock();
    if (!set) continue;
    auto it = set->views.find(sub);
    if (it != set->views.end()) out->insert(out->end(), it->second.begin(), it->second.end());
  }
}

struct Job {
  std::string name;
  std::string token;
  uint64_t seq = 0;
  std::chrono::seconds retention{0};
  std::chrono::steady_clock::time_point last_activity;
  std::map<std::pair<uint32_t, uint32_t>, std::shared_ptr<MapOutputData>> outputs;
  std::map<std::string, std::shared_ptr<ReadSet>> read_sets;  // by partition id
};

class PartitionStore::Impl final : public buffer::BufferRecycler,
                                   public std::enable_shared_from_this<Impl> {
 public:
  explicit Impl(PartitionStoreOptions o) : options(std::move(o)) {}
  ~Impl() override;

  // BufferRecycler of the read segments: back to the pool, waiting views notified.
  void Recycle(buffer::MemorySegment* segment) override;
  // Views waiting for a read segment try again (maintenance tick). Takes mu.
  void NotifyReadWaiters();
  // A read buffer for `core` (at most kMaxReadBuffersPerView out per view), or an empty one
  // after registering `core` to be notified when one comes back. mu held.
  buffer::Buffer TakeReadBufferLocked(const std::shared_ptr<ViewCore>& core);

  // Spills the map outputs with the most bytes in memory until the store is under budget, the
  // quota stops it, or nothing is left to spill; `forced` (non-zero): that writer's output
  // first, whatever the budget. Takes mu. Runs on the store's thread only. Returns the error of
  // the spill that failed, if one did (FinishSpillLocked has dealt with it).
  Status SpillIfNeeded(WriterId forced);
  // Under the memory budget, copies a starved writer's buffers into segments the store reserves
  // from options.read_pool, so its credit comes back without a spill. False (spill it) when over
  // the budget, without a pool, when the pool has no segments to spare now, or when the output
  // was spilled before (it outgrew the budget once; more copies would be spilled too). Takes mu.
  bool CopyUnderBudget(const std::shared_ptr<MapOutputData>& o);
  // A starved pipelined writer whose reader is streaming its output (it read on since the
  // writer last said it waits): it is backpressured, not kept. mu held.
  bool ReaderStreamingLocked(MapOutputData& o);
  // The spillable output with the most bytes in memory, or null. mu held.
  std::shared_ptr<MapOutputData> LargestInMemoryLocked();

  // One spill: the victim's buffers (shares) per subpartition region, written outside mu.
  struct SpillBatch {
    std::shared_ptr<MapOutputData> victim;
    std::vector<SpillRegion> regions;
    std::vector<uint64_t> taken;  // per region: memory buffers skipped (already read)
    uint64_t bytes = 0;           // data + index bytes the batch adds on disk
    std::shared_ptr<SpillFile> file;
  };
  // Fills the batch within the quota; false when nothing fits. mu held.
  bool TakeBatchLocked(SpillBatch* batch);
  // Creates the file if needed and appends the regions. Without mu.
  Status WriteBatch(SpillBatch& batch);
  // Indexes the spilled buffers and drops them from memory. mu held.
  void CommitBatchLocked(SpillBatch& batch);
  void FinishSpillLocked(SpillBatch& batch, const Status& st,
                           std::vector<std::shared_ptr<ViewCore>>* notify);
  // Marks the output aborted/released, drops its memory and notifies its views. mu held;
  // `notify` collects the views to notify outside the lock.
  void FailLocked(MapOutputData& o, OutputState state, const std::string& why,
                  std::vector<std::shared_ptr<ViewCore>>* notify);
  void ReleaseJobLocked(Job& job, const std::string& why,
                        std::vector<std::shared_ptr<ViewCore>>* notify);
  // Pipelined: drops memory buffers every reader has passed. mu held.
  void TrimLocked(MapOutputData& o, uint32_t sub);
  // The store's thread: runs `tick` every maintenance_interval and the spills asked for with
  // RequestSpill as soon as they are asked, until stopping. Spills never run on a caller's
  // thread, so the local writer service's loop does no disk IO.
  void MaintenanceLoop(const std::function<void()>& tick);
  // Any thread: asks the store's thread to spill (`forced`: that writer's output first, whatever
  // the budget; 0: only down to the budget). Does not wait. Takes maintenance_mu.
  void RequestSpill(WriterId forced);
  // The error an unknown writer gets: why it was failed, if the store failed it. mu held.
  Status WriterGoneLocked(WriterId writer) const;

  const PartitionStoreOptions options;
  mutable std::mutex mu;
  std::map<std::string, std::unique_ptr<Job>> jobs;
  std::unordered_map<WriterId, std::shared_ptr<MapOutputData>> writers;
  // Writers the store failed (a spill that failed) and why, until they Abort: their next Append
  // or Commit names the reason. At most kMaxWriterFailures are kept.
  std::unordered_map<WriterId, std::string> writer_failures;
  WriterId next_writer = 1;
  uint64_t next_job_seq = 1;
  uint64_t memory_bytes = 0;
  uint64_t memory_data_bytes = 0;
  uint64_t disk_bytes = 0;
  uint64_t spill_files = 0;
  uint64_t map_outputs = 0;
  uint64_t held_subpartitions = 0;  // of map_outputs, against options.max_held_subpartitions
  uint64_t held_read_set_entries = 0;  // of all jobs' read sets, against its option
  uint64_t readers = 0;
  bool quota_blocked = false;
  std::atomic<uint64_t> spill_bytes_total{0};
  // Read segments out (taken from options.read_pool's free list, at most read_segments).
  uint32_t read_out = 0;
  std::vector<std::weak_ptr<ViewCore>> read_waiters;
  std::unordered_map<buffer::MemorySegment*, std::weak_ptr<ViewCore>> read_owner;

  // Gives a copy's segment back to options.read_pool (outside mu) and forgets it.
  struct CopyRecycler final : buffer::BufferRecycler {
    explicit CopyRecycler(Impl* i) : impl(i) {}
    void Recycle(buffer::MemorySegment* segment) override;
    Impl* const impl;
  };
  CopyRecycler copy_recycler{this};
  std::unordered_set<const buffer::MemorySegment*> copies;  // GUARDED_BY(mu): segments out
  std::atomic<uint64_t> copied_bytes_total{0};

  SpillDirClaim spill_claim;  // <spill dir>/lock's flock, held for the store's life
  // Buffers the store let go of under mu: released only after mu is unlocked (StoreLock), so a
  // writer's recycler never runs under the store's lock.
  std::vector<buffer::Buffer> dropped;

  std::mutex maintenance_mu;
  std::condition_variable maintenance_cv;
  bool stopping = false;  // GUARDED_BY(maintenance_mu)
  bool spill_wanted = false;               // GUARDED_BY(maintenance_mu)
  uint64_t spill_asked = 0;                // GUARDED_BY(maintenance_mu); requests made
  uint64_t spill_done = 0;                 // GUARDED_BY(maintenance_mu); requests served
  std::condition_variable spill_done_cv;
  std::vector<WriterId> spill_requests;    // GUARDED_BY(maintenance_mu); forced writers
  std::thread maintenance;
};

inline constexpr uint32_t kMaxReadBuffersPerView = 2;
inline constexpr size_t kMaxWriterFailures = 4096;

// Holds the store's mutex; on destruction unlocks it first and then releases the buffers
// dropped meanwhile (their recyclers may take locks of their own).
class StoreLock {
 public:
  explicit StoreLock(PartitionStore::Impl& impl) : impl_(impl), lock_(impl.mu) {}
  explicit StoreLock(const PartitionStore::Impl& impl)
      : StoreLock(const_cast<PartitionStore::Impl&>(impl)) {}
  ~StoreLock() {
    std::vector<buffer::Buffer> trash;
    trash.swap(impl_.dropped);
    lock_.unlock();
  }
  StoreLock(const StoreLock&) = delete;
  StoreLock& operator=(const StoreLock&) = delete;

 private:
  PartitionStore::Impl& impl_;
  std::unique_lock<std::mutex> lock_;
};

// Calls the listeners of `cores` (outside the store's lock). `force`: also the ones not armed
// (failures).
void NotifyViews(std::vector<std::shared_ptr<ViewCore>>& cores, bool force);

// The view over one subpartition of a read set (store_view.cc).
Result<std::unique_ptr<shuffle::SubpartitionView>> MakeStoreView(
    std::shared_ptr<PartitionStore::Impl> impl, std::shared_ptr<ReadSet> set, uint32_t sub,
    shuffle::SubpartitionListener* listener);

}  // namespace sluice::store
