// The SubpartitionView over one subpartition of a read set: the named map outputs' buffers of
// that subpartition, one output after the other (each ends on a record boundary, so one
// RecordDeserializer on the reader's side reads them all), then one end-of-partition event.
#include <algorithm>

#include "store/store_internal.h"

namespace sluice::store {
namespace {

// Live views a read set may have beyond two per subpartition.
constexpr size_t kSpareViewsPerReadSet = 16;

class StoreView final : public shuffle::SubpartitionView {
 public:
  StoreView(std::shared_ptr<PartitionStore::Impl> impl, std::shared_ptr<ReadSet> set, uint32_t sub,
            std::shared_ptr<ViewCore> core)
      : impl_(std::move(impl)), set_(std::move(set)), sub_(sub), core_(std::move(core)) {}
  ~StoreView() override { Release(); }

  Result<std::optional<shuffle::BufferAndBacklog>> PollNext() override;
  bool IsAvailable(int32_t credit) const override;
  uint32_t backlog() const override;
  void Release() override;
  bool IsReleased() const override { return released_.load(); }

 private:
  enum class Next { kNothing, kMemory, kDisk, kEnd, kFailed };
  // Moves past finished outputs and says what comes next. mu held.
  Next PeekLocked(bool advance);
  Next PeekConstLocked() const;
  uint32_t BacklogLocked() const;
  // After an item: the consumer's position moves on (pipelined: memory it passed is trimmed).
  void ConsumedLocked();

  const std::shared_ptr<PartitionStore::Impl> impl_;
  const std::shared_ptr<ReadSet> set_;
  const uint32_t sub_;
  const std::shared_ptr<ViewCore> core_;
  size_t cur_ = 0;        // GUARDED_BY(impl_->mu): the output being read
  uint64_t ordinal_ = 0;  // GUARDED_BY(impl_->mu): its next buffer
  bool end_sent_ = false;
  uint32_t sequence_ = 0;
  std::atomic<bool> released_{false};
};

StoreView::Next StoreView::PeekConstLocked() const {
  if (!core_->failure.empty()) return Next::kFailed;
  size_t cur = cur_;
  uint64_t ordinal = ordinal_;
  while (cur < set_->outputs.size()) {
    const MapOutputData& o = *set_->outputs[cur];
    if (o.state == OutputState::kAborted || o.state == OutputState::kReleased) return Next::kFailed;
    const uint64_t total = sub_ < o.subpartitions ? o.subs[sub_].total : 0;
    if (o.mode == PartitionMode::kBlocking && o.state != OutputState::kCommitted) {
      return Next::kNothing;
    }
    if (ordinal < total) {
      return ordinal >= o.subs[sub_].memory_first ? Next::kMemory : Next::kDisk;
    }
    if (o.state != OutputState::kCommitted) return Next::kNothing;
    ++cur;
    ordinal = 0;
  }
  return end_sent_ ? Next::kNothing : Next::kEnd;
}

StoreView::Next StoreView::PeekLocked(bool advance) {
  Next n = PeekConstLocked();
  if (!advance || n == Next::kFailed) return n;
  // Move the cursor past the finished outputs PeekConstLocked skipped.
  while (cur_ < set_->outputs.size()) {
    const MapOutputData& o = *set_->outputs[cur_];
    const uint64_t total = sub_ < o.subpartitions ? o.subs[sub_].total : 0;
    if (o.state != OutputState::kCommitted || ordinal_ < total) break;
    ++cur_;
    ordinal_ = 0;
  }
  return n;
}

uint32_t StoreView::BacklogLocked() const {
  if (cur_ >= set_->outputs.size() || !core_->failure.empty()) return 0;
  // The current output's readable buffers, plus the next outputs' (a few, not the whole set:
  // the backlog only sizes the receiver's floating-buffer request).
  uint64_t n = 0;
  const size_t last = std::min(set_->outputs.size(), cur_ + 8);
  for (size_t i = cur_; i < last; ++i) {
    const MapOutputData& o = *set_->outputs[i];
    if (o.mode == PartitionMode::kBlocking && o.state != OutputState::kCommitted) break;
    const uint64_t total = sub_ < o.subpartitions ? o.subs[sub_].total : 0;
    const uint64_t from = i == cur_ ? ordinal_ : 0;
    if (total > from) n += total - from;
    if (o.state != OutputState::kCommitted) break;
  }
  return static_cast<uint32_t>(std::min<uint64_t>(n, INT32_MAX));
}

void StoreView::ConsumedLocked() {
  MapOutputData& o = *set_->outputs[cur_];
  ++ordinal_;
  if (o.mode == PartitionMode::kPipelined) {
    o.subs[sub_].consumed = ordinal_;
    impl_->TrimLocked(o, sub_);
  }
}

Result<std::optional<shuffle::BufferAndBacklog>> StoreView::PollNext() {
  if (released_.load()) return Status(StatusCode::kClosed, set_->partition_id + ": view released");
  std::shared_ptr<SpillFile> file;
  uint64_t offset = 0;
  uint32_t disk_size = 0;
  buffer::Buffer out;
  shuffle::BufferAndBacklog item;
  {
    StoreLock lock(*impl_);
    const Next n = PeekLocked(true);
    switch (n) {
      case Next::kFailed: {
        std::string why = core_->failure;
        if (why.empty()) why = set_->outputs[cur_]->failure;
        return Status(StatusCode::kIoError, why);
      }
      case Next::kNothing:
        core_->armed.store(true);
        return std::optional<shuffle::BufferAndBacklog>();
      case Next::kEnd:
        end_sent_ = true;
        item.buffer = buffer::AllocateUnpooled(0, buffer::DataType::kEndOfPartition);
        item.sequence_number = sequence_++;
        return std::optional<shuffle::BufferAndBacklog>(std::move(item));
      case Next::kMemory: {
        SubpartitionData& s = set_->outputs[cur_]->subs[sub_];
        out = s.memory[ordinal_ - s.memory_first].Share();
        break;
      }
      case Next::kDisk: {
        MapOutputData& o = *set_->outputs[cur_];
        auto ext = o.subs[sub_].extents.upper_bound(ordinal_);
        if (ext == o.subs[sub_].extents.begin() || !o.spill) {
          return Status(StatusCode::kInternal, o.Name() + ": spilled buffer " +
                                                   std::to_string(ordinal_) + " is not indexed");
        }
        --ext;
        const uint64_t i = ordinal_ - ext->first;
        if (i >= ext->second.offsets.size()) {
          return Status(StatusCode::kInternal, o.Name() + ": spilled buffer " +
                                                   std::to_string(ordinal_) + " is not indexed");
        }
        out = impl_->TakeReadBufferLocked(core_);
        if (!out.valid()) {
          core_->armed.store(true);  // Recycle notifies when a read segment comes back
          return std::optional<shuffle::BufferAndBacklog>();
        }
        offset = ext->second.offsets[i];
        disk_size = ext->second.sizes[i];
        file = o.spill;
        break;
      }
    }
    ConsumedLocked();
    PeekLocked(true);
    item.backlog = BacklogLocked();
    item.next_is_event = PeekConstLocked() == Next::kEnd;
    if (item.backlog == 0 && !item.next_is_event) core_->armed.store(true);
  }
  if (file) {
    auto size = file->ReadBuffer(offset, disk_size, out.writable());
    if (!size.ok()) return size.status();  // `out` goes back to the store's read segments
    out.SetSize(*size);
    out.SetType(buffer::DataType::kData);
  }
  item.buffer = std::move(out);
  item.sequence_number = sequence_++;
  return std::optional<shuffle::BufferAndBacklog>(std::move(item));
}

bool StoreView::IsAvailable(int32_t credit) const {
  if (released_.load()) return false;
  StoreLock lock(*impl_);
  switch (PeekConstLocked()) {
    case Next::kFailed:
    case Next::kEnd: return true;
    case Next::kMemory:
    case Next::kDisk: return credit > 0;
    case Next::kNothing:
      core_->armed.store(true);  // the consumer stops here: what comes next notifies it
      return false;
  }
  return false;
}

uint32_t StoreView::backlog() const {
  StoreLock lock(*impl_);
  return BacklogLocked();
}

void StoreView::Release() {
  if (released_.exchange(true)) return;
  {
    // Waits for a notification in flight on another thread (recursive: this thread's own).
    std::lock_guard<std::recursive_mutex> lock(core_->mu);
    core_->released = true;
  }
  StoreLock lock(*impl_);
  set_->RemoveView(core_);
  --impl_->readers;
}

}  // namespace

Result<std::unique_ptr<shuffle::SubpartitionView>> MakeStoreView(
    std::shared_ptr<PartitionStore::Impl> impl, std::shared_ptr<ReadSet> set, uint32_t sub,
    shuffle::SubpartitionListener* listener) {
  auto core = std::make_shared<ViewCore>(sub);
  core->listener = listener;
  {
    StoreLock lock(*impl);
    uint32_t max_subs = 0;
    for (auto& o : set->outputs) {
      max_subs = std::max(max_subs, o->subpartitions);
      if (o->mode == PartitionMode::kPipelined && sub < o->subpartitions &&
          o->subs[sub].pipelined_claimed) {
        return InvalidArgument(o->Name() + " subpartition " + std::to_string(sub) +
                               " is pipelined and already has its one reader");
      }
    }
    if (sub >= max_subs) {
      return NotFound("read set '" + set->partition_id + "' has " + std::to_string(max_subs) +
                      " subpartitions, not " + std::to_string(sub + 1) + " or more");
    }
    // A reducer reads each subpartition once (again after a failure): more live views than
    // that, with room for retries that overlap, are a runaway or hostile reader.
    const size_t max_views = 2 * size_t{max_subs} + kSpareViewsPerReadSet;
    if (set->view_count >= max_views) {
      return ResourceExhausted("read set '" + set->partition_id + "' already has " +
                               std::to_string(set->view_count) + " readers, its limit (" +
                               "twice its " + std::to_string(max_subs) + " subpartitions, +" +
                               std::to_string(kSpareViewsPerReadSet) +
                               "); release readers before opening more");
    }
    for (auto& o : set->outputs) {
      if (o->mode == PartitionMode::kPipelined && sub < o->subpartitions) {
        o->subs[sub].pipelined_claimed = true;
      }
      if (o->state == OutputState::kAborted || o->state == OutputState::kReleased) {
        if (core->failure.empty()) core->failure = o->failure;
      }
    }
    set->AddView(core);
    ++impl->readers;
    if (auto j = impl->jobs.find(set->outputs.front()->job); j != impl->jobs.end()) {
      j->second->last_activity = std::chrono::steady_clock::now();
    }
  }
  auto view = std::make_unique<StoreView>(std::move(impl), std::move(set), sub, core);
  // Items may be readable already: the first notification comes from here.
  if (view->IsAvailable(1)) {
    std::vector<std::shared_ptr<ViewCore>> notify{core};
    NotifyViews(notify, true);
  }
  return std::unique_ptr<shuffle::SubpartitionView>(std::move(view));
}

}  // namespace sluice::store
