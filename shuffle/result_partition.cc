#include "shuffle/result_partition.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <utility>

#include "buffer/memory_estimate.h"
#include "schema/messages.h"

namespace sluice::shuffle {

using buffer::Buffer;
using buffer::DataType;
using Clock = std::chrono::steady_clock;

namespace {

// A blocked writer re-checks Cancel/Fail/Release at least this often (the pool wakes it at
// once for those, this is a second line).
constexpr std::chrono::milliseconds kWaitSlice{100};

// A writer blocked on backpressure is woken by a run of this many returned buffers (see
// LocalBufferPoolOptions::wake_batch): it then fills a run instead of waking per buffer.
constexpr uint32_t kOutputWakeBatch = 8;

// A tail of the current buffer at most this share of a segment is left unused (the buffer is
// finished early) rather than splitting an in-place record through the scratch area.
constexpr uint32_t kInPlaceMaxWasteDivisor = 8;
// A scratch area larger than this is freed after the record that needed it.
constexpr uint32_t kScratchKeepBytes = 1u << 20;

Clock::time_point DeadlineAfter(Clock::time_point now, std::chrono::milliseconds timeout) {
  if (timeout <= std::chrono::milliseconds::zero()) return now;
  if (timeout >=
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + timeout;
}

std::chrono::milliseconds SliceUntil(Clock::time_point now, Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
  return std::clamp(left, std::chrono::milliseconds(1), kWaitSlice);
}

// One queued item: a finished data buffer or an event, with its position in the subpartition.
struct Item {
  Buffer buffer;
  uint32_t sequence = 0;
};

// FIFO on a power-of-two ring: no allocation per item; grows (doubling) only when a consumer
// falls far behind on events, since data buffers are bounded by the output pool.
class ItemQueue {
 public:
  explicit ItemQueue(size_t capacity) : slots_(std::bit_ceil(std::max<size_t>(capacity, 4))) {}
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  const Item& front() const { return slots_[head_]; }
  void push_back(Item item) {
    if (size_ == slots_.size()) Grow();
    slots_[(head_ + size_) & (slots_.size() - 1)] = std::move(item);
    ++size_;
  }
  Item pop_front() {
    Item item = std::move(slots_[head_]);
    head_ = (head_ + 1) & (slots_.size() - 1);
    --size_;
    return item;
  }

 private:
  void Grow() {
    std::vector<Item> bigger(slots_.size() * 2);
    for (size_t i = 0; i < size_; ++i) {
      bigger[i] = std::move(slots_[(head_ + i) & (slots_.size() - 1)]);
    }
    slots_.swap(bigger);
    head_ = 0;
  }
  std::vector<Item> slots_;
  size_t head_ = 0;
  size_t size_ = 0;
};

// How many of `records` (length prefixes included) fit in `room` bytes; at least one, so a
// record larger than a debloated buffer still goes into a fresh one (and ends it).
size_t RecordsWithin(std::span<const std::span<const uint8_t>> records, size_t room) {
  size_t n = 0;
  size_t used = 0;
  for (const std::span<const uint8_t>& r : records) {
    used += kRecordLengthBytes + r.size();
    if (used > room) break;
    ++n;
  }
  return std::max<size_t>(n, std::min<size_t>(1, records.size()));
}

// Fills records sizes[*next..] in place into `out`, after its first `size` bytes, while they
// fit in `capacity` and (after the buffer's first record) in the debloated `limit`. Returns
// the buffer's new size; *next is the first record not filled.
uint32_t FillRecords(uint8_t* out, uint32_t size, uint32_t capacity, uint32_t limit,
                     std::span<const uint32_t> sizes, ResultPartition::BatchFillFn fill,
                     size_t* next) {
  size_t i = *next;
  do {
    const uint32_t n = sizes[i];
    if (capacity - size < kRecordLengthBytes + n) break;
    if (size > 0 && size + kRecordLengthBytes + n > limit) break;  // debloated
    StoreRecordLength(out + size, n);
    fill(i, std::span<uint8_t>(out + size + kRecordLengthBytes, n));
    size += static_cast<uint32_t>(kRecordLengthBytes) + n;
    ++i;
  } while (i < sizes.size());
  *next = i;
  return size;
}

}  // namespace

static_assert(schema::kMinDebloatBufferSize == ResultPartition::kMinBufferSize,
              "the wire's minimum debloated buffer is the partition's");

// One pipelined subpartition: the writer's current buffer and the queue the consumer reads.
// Buffers are never released under mu (recycling may run pool listeners, i.e. foreign code).
class ResultPartition::Subpartition {
 public:
  Subpartition(size_t queue_capacity, uint32_t segment_size)
      : queue(queue_capacity), buffer_size(segment_size) {}

  // Queues an item; returns true when the listener must be notified (outside mu).
  // REQUIRES: mu held.
  bool EnqueueLocked(Buffer b) {
    const uint32_t bytes = b.size();
    if (b.type() == DataType::kData) {
      ++backlog;
      ++buffers_out;
      bytes_out += bytes;
    } else {
      ++events;
    }
    queued_bytes += bytes;
    queue.push_back(Item{std::move(b), next_sequence++});
    return TakeNotificationLocked();
  }
  // Queues the current buffer if it holds anything. REQUIRES: mu held.
  bool FinishCurrentLocked() {
    current_flushed = false;
    if (!current.valid() || current.size() == 0) return false;
    return EnqueueLocked(std::move(current));
  }
  // Flush: the current buffer becomes readable as it is; the writer keeps appending to it
  // until the reader takes it (or it is full). Returns true when the listener must be
  // notified. REQUIRES: mu held, !claimed.
  bool MarkFlushedLocked() {
    if (!current.valid() || current.size() == 0) return false;
    current_flushed = true;
    return TakeNotificationLocked();
  }
  // The reader may take the current buffer now. REQUIRES: mu held.
  bool CurrentReadableLocked() const {
    return current_flushed && current.valid() && current.size() > 0;
  }
  // The data buffers the reader sees: the finished ones and a flushed current one (also while
  // the writer fills it in place: the backlog a consumer was told never shrinks behind it).
  // REQUIRES: mu held.
  uint32_t ReaderBacklogLocked() const {
    const bool flushed = current_flushed && (claimed || (current.valid() && current.size() > 0));
    return backlog + (flushed ? 1 : 0);
  }
  // Takes the flushed current buffer as the next item (the writer starts a new one).
  // REQUIRES: mu held, CurrentReadableLocked().
  Item TakeCurrentLocked() {
    current_flushed = false;
    ++buffers_out;
    bytes_out += current.size();
    return Item{std::move(current), next_sequence++};
  }
  // Something became readable: notify once per "nothing readable -> readable" transition.
  // REQUIRES: mu held.
  bool TakeNotificationLocked() {
    if (!armed || listener == nullptr) return false;
    armed = false;
    return true;
  }
  // Moves every buffer out (to be released after unlocking). REQUIRES: mu held.
  void DrainLocked(std::vector<Buffer>* garbage) {
    if (current.valid()) garbage->push_back(std::move(current));
    current_flushed = false;
    while (!queue.empty()) garbage->push_back(queue.pop_front().buffer);
    backlog = 0;
    queued_bytes = 0;
    room_cv.notify_all();  // a writer waiting for queue room sees the drop
  }

  // Calls the listener outside mu. notify_mu is held during the call so that a view's
  // Release() can wait for a notification in flight (recursive: the listener may release its
  // own view from inside the callback).
  void Notify() {
    std::lock_guard<std::recursive_mutex> in_flight(notify_mu);
    SubpartitionListener* l;
    {
      std::lock_guard lock(mu);
      if (view_released || listener == nullptr) return;
      l = listener;
    }
    l->NotifyDataAvailable();
  }

  std::mutex mu;
  std::recursive_mutex notify_mu;  // held while the listener runs; lock order notify_mu -> mu

  // Everything below: GUARDED_BY(mu).
  Buffer current;  // the writer's partly filled buffer (only whole records when unlocked)
  // EmitInPlace took `current` out to fill it without the lock: the writer alone holds it, so
  // no other thread can queue (publish) or recycle it half written. A Flush meanwhile sets
  // flush_requested and the writer finishes the buffer when it puts it back.
  bool claimed = false;
  bool flush_requested = false;
  // A flush made `current` readable (Flink's flushRequested): the reader takes it as it is
  // when the queue before it is empty, the writer appends to it until then.
  bool current_flushed = false;
  // The subpartition is on the partition's flush list (it holds unflushed data, or did when
  // it was listed): FlushAll visits only listed subpartitions.
  bool in_flush_list = false;
  ItemQueue queue;
  uint32_t backlog = 0;  // data buffers in queue
  uint64_t queued_bytes = 0;
  uint32_t next_sequence = 0;
  SubpartitionListener* listener = nullptr;
  bool has_view = false;
  bool view_released = false;
  bool armed = false;     // the consumer saw nothing readable: notify on the next item
  bool consumed = false;  // end of partition was polled
  uint64_t buffers_out = 0;
  uint64_t bytes_out = 0;
  uint64_t records = 0;
  uint64_t events = 0;
  uint64_t dropped_records = 0;
  uint64_t polled = 0;
  // Buffer debloating (SetBufferSize): the writer finishes data buffers at about buffer_size
  // bytes (the segment size: not debloated) and waits before starting a record while
  // `queue_cap` finished buffers are queued, so the subpartition holds fewer segments.
  uint32_t buffer_size;
  uint32_t queue_cap = kNoQueueCap;
  bool room_waiter = false;         // the writer waits on room_cv
  std::condition_variable room_cv;  // signalled when backlog drops below queue_cap
  static constexpr uint32_t kNoQueueCap = 0xFFFFFFFFu;
};

// The view handed to a consumer. Keeps the partition alive.
class ResultPartition::View final : public SubpartitionView {
 public:
  View(std::shared_ptr<ResultPartition> partition, uint32_t index)
      : partition_(std::move(partition)), index_(index), sp_(*partition_->subpartitions_[index]) {}
  ~View() override { Release(); }

  Result<std::optional<BufferAndBacklog>> PollNext() override {
    bool consumed_now = false;
    Result<std::optional<BufferAndBacklog>> out = Poll(&consumed_now);
    if (consumed_now) partition_->NoteConsumerEvent();  // outside sp_.mu
    return out;
  }

  Result<std::optional<BufferAndBacklog>> Poll(bool* consumed_now) {
    std::lock_guard lock(sp_.mu);
    if (sp_.view_released) return ViewReleasedError();
    if (sp_.consumed) return std::optional<BufferAndBacklog>();
    if (const uint32_t state = partition_->state_.load(std::memory_order_acquire);
        (state & (kFailed | kReleased)) != 0) {
      return ClosedStatus(state);
    }
    Item item;
    if (!sp_.queue.empty()) {
      item = sp_.queue.pop_front();
      if (item.buffer.type() == DataType::kData) --sp_.backlog;
      if (sp_.room_waiter && sp_.backlog < sp_.queue_cap) sp_.room_cv.notify_one();
      sp_.queued_bytes -= item.buffer.size();
    } else if (sp_.CurrentReadableLocked()) {
      item = sp_.TakeCurrentLocked();  // flushed: what the writer wrote so far
    } else {
      sp_.armed = true;
      return std::optional<BufferAndBacklog>();
    }
    const DataType type = item.buffer.type();
    ++sp_.polled;
    if (type == DataType::kEndOfPartition) {
      sp_.consumed = true;
      *consumed_now = true;
    }
    std::optional<BufferAndBacklog> out(std::in_place);
    out->buffer = std::move(item.buffer);
    out->sequence_number = item.sequence;
    out->backlog = sp_.ReaderBacklogLocked();
    out->next_is_event = !sp_.queue.empty() && buffer::IsEvent(sp_.queue.front().buffer.type());
    // The consumer can tell from this item that nothing else is readable: re-arm.
    if (sp_.queue.empty() && !sp_.CurrentReadableLocked() && !sp_.consumed) sp_.armed = true;
    return out;
  }

  bool IsAvailable(int32_t credit) const override {
    std::lock_guard lock(sp_.mu);
    if (sp_.view_released || sp_.consumed) return false;
    if ((partition_->state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) {
      return true;  // PollNext returns the error
    }
    if (sp_.queue.empty()) {
      if (sp_.CurrentReadableLocked()) return credit > 0;
      // Nothing readable (the writer may hold the flushed buffer, filling it in place): the
      // consumer stops here, so the next readable item must notify it, as after a poll that
      // found nothing. Without this a reader notified for a flushed buffer that the writer
      // claimed before the reader looked was never woken again (issue-15 in-place hang).
      sp_.armed = true;
      return false;
    }
    return credit > 0 || buffer::IsEvent(sp_.queue.front().buffer.type());
  }

  uint32_t backlog() const override {
    std::lock_guard lock(sp_.mu);
    return sp_.ReaderBacklogLocked();
  }

  void Release() override {
    std::vector<Buffer> garbage;
    {
      std::lock_guard lock(sp_.mu);
      if (sp_.view_released) return;
      sp_.view_released = true;
      sp_.armed = false;
      sp_.listener = nullptr;
      sp_.DrainLocked(&garbage);
    }
    // Waits for a notification in flight on another thread: after Release() returns the
    // listener is never called again.
    { std::lock_guard<std::recursive_mutex> in_flight(sp_.notify_mu); }
    garbage.clear();  // recycled outside every lock
    partition_->NoteConsumerEvent();
  }

  bool IsReleased() const override {
    std::lock_guard lock(sp_.mu);
    return sp_.view_released;
  }

  uint32_t SetBufferSize(uint32_t bytes) override {
    return partition_->SetBufferSize(index_, bytes);
  }

 private:
  Status ViewReleasedError() const {
    return ClosedError("the view of subpartition " + std::to_string(index_) + " of partition '" +
                       partition_->id_ + "' was released");
  }
  Status ClosedStatus(uint32_t state) const {
    if ((state & kFailed) != 0) {
      std::lock_guard lock(partition_->state_mu_);
      return partition_->failure_;
    }
    return ClosedError("partition '" + partition_->id_ + "' was released (subpartition " +
                       std::to_string(index_) + ")");
  }

  const std::shared_ptr<ResultPartition> partition_;
  const uint32_t index_;
  Subpartition& sp_;
};

struct ResultPartition::FlusherControl {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;  // GUARDED_BY(mu)
};

// ---------------------------------------------------------------------------------------------

Result<std::shared_ptr<ResultPartition>> ResultPartition::Create(
    std::string id, uint32_t num_subpartitions, std::shared_ptr<buffer::NetworkBufferPool> global,
    const ShuffleOptions& options) {
  if (global == nullptr) {
    return InvalidArgument("result partition '" + id + "' needs a NetworkBufferPool");
  }
  if (num_subpartitions == 0) {
    return InvalidArgument("result partition '" + id + "' needs at least one subpartition");
  }
  const buffer::PoolBounds bounds = buffer::PartitionPoolBounds(num_subpartitions, options.credit);
  buffer::LocalBufferPoolOptions po;
  po.name = "partition " + id;
  po.min_segments = bounds.min;
  po.max_segments = bounds.max;
  po.num_subpartitions = num_subpartitions;
  po.max_buffers_per_subpartition = options.credit.max_buffers_per_channel;
  po.max_overdraft = options.credit.overdraft;
  po.wake_batch = kOutputWakeBatch;
  Result<std::shared_ptr<buffer::LocalBufferPool>> pool = global->CreateLocalBufferPool(po);
  if (!pool.ok()) {
    return Status(pool.status().code(),
                  "result partition '" + id + "' (" + std::to_string(num_subpartitions) +
                      " subpartitions, output pool min " + std::to_string(bounds.min) + " max " +
                      std::to_string(bounds.max) + "): " + pool.status().message());
  }
  std::shared_ptr<ResultPartition> p(
      new ResultPartition(std::move(id), num_subpartitions, std::move(pool).value(), options));
  if (options.buffer_timeout > std::chrono::milliseconds::zero()) p->StartFlusher();
  return p;
}

ResultPartition::ResultPartition(std::string id, uint32_t num_subpartitions,
                                 std::shared_ptr<buffer::LocalBufferPool> pool,
                                 const ShuffleOptions& options)
    : id_(std::move(id)),
      num_subpartitions_(num_subpartitions),
      options_(options),
      flush_every_record_(options.buffer_timeout == std::chrono::milliseconds::zero()),
      pool_(std::move(pool)) {
  // Room for a subpartition at its cap plus overdraft and a few events before any growth; a
  // wide partition's queues start small (most hold a buffer or two: the pool is shared by
  // thousands) and double when a consumer falls behind.
  const size_t capacity =
      IsWide() ? 4
               : static_cast<size_t>(options.credit.max_buffers_per_channel) +
                     options.credit.overdraft + 4;
  subpartitions_.reserve(num_subpartitions);
  for (uint32_t i = 0; i < num_subpartitions; ++i) {
    subpartitions_.push_back(std::make_unique<Subpartition>(capacity, pool_->segment_size()));
  }
}

ResultPartition::~ResultPartition() { Release(); }

bool ResultPartition::IsWide() const { return num_subpartitions_ > pool_->min_segments(); }

Status ResultPartition::WritableStatus() const {
  const uint32_t state = state_.load(std::memory_order_acquire);
  if ((state & kFailed) != 0) {
    std::lock_guard lock(state_mu_);
    return failure_;
  }
  if ((state & kReleased) != 0) return ClosedError("partition '" + id_ + "' was released");
  if ((state & kCancelled) != 0) {
    return Cancelled("the writer of partition '" + id_ + "' was cancelled");
  }
  if ((state & kFinished) != 0) {
    return ClosedError("partition '" + id_ + "' is finished: no more records or events");
  }
  return Status::Ok();
}

Status ResultPartition::BadSubpartition(const char* what, uint32_t subpartition) const {
  return InvalidArgument(std::string(what) + " to subpartition " + std::to_string(subpartition) +
                         " of partition '" + id_ + "', which has " +
                         std::to_string(num_subpartitions_) + " subpartitions");
}

Status ResultPartition::CheckWritable(uint32_t subpartition, const char* what) const {
  if (subpartition >= num_subpartitions_) return BadSubpartition(what, subpartition);
  if (state_.load(std::memory_order_acquire) != 0) return WritableStatus();
  return Status::Ok();
}

Status ResultPartition::RecordTooLarge(size_t size) const {
  const Status s = RecordSerializer::CheckSize(size);
  return Status(s.code(), "partition '" + id_ + "': " + s.message());
}

Status ResultPartition::Emit(std::span<const uint8_t> record, uint32_t subpartition) {
  return EmitBatch(std::span<const std::span<const uint8_t>>(&record, 1), subpartition);
}

Status ResultPartition::EmitBatch(std::span<const std::span<const uint8_t>> records,
                                  uint32_t subpartition, size_t* written) {
  if (written != nullptr) *written = 0;
  if (Status s = CheckWritable(subpartition, records.size() == 1 ? "Emit" : "EmitBatch"); !s.ok()) {
    return s;
  }
  for (const std::span<const uint8_t>& record : records) {
    if (record.size() > kMaxRecordLength) return RecordTooLarge(record.size());
  }
  return WriteRecords(subpartition, records, written);
}

Status ResultPartition::EmitInPlace(uint32_t subpartition, uint32_t size, FillFn fill) {
  return EmitInPlaceBatch(subpartition, std::span<const uint32_t>(&size, 1),
                          [&fill](size_t, std::span<uint8_t> record) { fill(record); });
}

Status ResultPartition::EmitInPlaceBatch(uint32_t subpartition, std::span<const uint32_t> sizes,
                                         BatchFillFn fill, size_t* written) {
  if (written != nullptr) *written = 0;
  if (Status s =
          CheckWritable(subpartition, sizes.size() == 1 ? "EmitInPlace" : "EmitInPlaceBatch");
      !s.ok()) {
    return s;
  }
  for (const uint32_t size : sizes) {
    if (size > kMaxRecordLength) return RecordTooLarge(size);
  }
  return WriteInPlace(subpartition, sizes, fill, written);
}

Status ResultPartition::WriteRecords(uint32_t index,
                                     std::span<const std::span<const uint8_t>> records,
                                     size_t* written) {
  Subpartition& sp = *subpartitions_[index];
  Buffer fresh;     // a new buffer for sp.current, obtained outside the lock
  size_t done = 0;  // records complete (or dropped)
  auto report = [&] {
    if (written != nullptr) *written = done;
  };
  while (true) {
    Buffer garbage;  // released after the lock
    bool notify = false;
    enum class Outcome { kNeedBuffer, kDone, kDropped, kClosed } outcome = Outcome::kNeedBuffer;
    {
      // One lock for as many records as the current buffer takes.
      std::lock_guard lock(sp.mu);
      if ((state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) {
        garbage = std::move(fresh);
        outcome = Outcome::kClosed;
      } else if (sp.view_released) {
        garbage = std::move(fresh);
        sp.dropped_records += records.size() - done;
        done = records.size();
        outcome = Outcome::kDropped;
      } else {
        if (!sp.current.valid() && fresh.valid()) sp.current = std::move(fresh);
        // Debloated: buffers end at about this size (a segment otherwise).
        const uint32_t limit = sp.buffer_size;
        while (sp.current.valid()) {
          if (!serializer_.HasPending()) {
            // Whole records first, in one tight loop. Flushing per record, they go into the
            // same (flushed) buffer as long as the reader has not taken it: a writer that
            // fell behind catches up a buffer at a time, not a buffer per record.
            auto rest = records.subspan(done);
            if (limit < sp.current.capacity()) {
              rest = rest.first(RecordsWithin(rest, limit - std::min(limit, sp.current.size())));
            }
            if (const size_t n = serializer_.AppendWhole(sp.current, rest); n > 0) {
              done += n;
              sp.records += n;
              if (sp.current.size() >= limit) notify = sp.FinishCurrentLocked() || notify;
              if (done == records.size()) break;
              continue;
            }
            if (done == records.size()) break;
            serializer_.BeginChecked(records[done]);
          }
          const RecordSerializer::Progress p = serializer_.CopyTo(sp.current);
          if (p != RecordSerializer::Progress::kRecordDoneBufferHasRoom ||
              sp.current.size() >= limit) {
            notify = sp.FinishCurrentLocked() || notify;
          }
          if (p != RecordSerializer::Progress::kBufferFullRecordPending) {
            ++sp.records;
            ++done;
          }
        }
        if (done == records.size()) outcome = Outcome::kDone;
        // The current buffer ends on a record boundary here (a split record's first part went
        // out with its full buffer): readable at once, or listed for the next flush.
        notify = AfterAppendLocked(index, sp) || notify;
      }
    }
    if (notify) sp.Notify();
    switch (outcome) {
      case Outcome::kDone:
        report();
        return Status::Ok();
      case Outcome::kDropped:
        serializer_ = RecordSerializer();
        report();
        return Status::Ok();
      case Outcome::kClosed:
        serializer_ = RecordSerializer();
        report();
        return WritableStatus();
      case Outcome::kNeedBuffer:
        break;
    }
    // A record with bytes in a buffer already is pending in the serializer (a record is begun
    // only with a buffer at hand, and copied into it at once).
    const bool started = serializer_.HasPending();
    Result<Buffer> b =
        RequestOutputBuffer(index, started ? RecordPosition::kMiddle : RecordPosition::kStart);
    if (!b.ok()) {
      serializer_ = RecordSerializer();
      report();
      if (!started) return b.status();
      // Part of the record is queued already: the stream of this subpartition is broken.
      Status cut(b.status().code(), "a record for subpartition " + std::to_string(index) +
                                        " of partition '" + id_ +
                                        "' was cut short: " + b.status().message());
      Fail(cut);
      return WritableStatus();
    }
    fresh = std::move(b).value();
  }
}

Status ResultPartition::WriteInPlace(uint32_t index, std::span<const uint32_t> sizes,
                                     BatchFillFn fill, size_t* written) {
  Subpartition& sp = *subpartitions_[index];
  const uint32_t capacity = pool_->segment_size();
  const uint32_t max_waste = capacity / kInPlaceMaxWasteDivisor;
  Buffer fresh;               // a new buffer for sp.current, obtained outside the lock
  Buffer claimed;             // sp.current, taken out to be filled outside the lock
  uint32_t claimed_size = 0;  // claimed's size with the records filled into it
  size_t filled = 0;          // records filled into `claimed`, not yet put back
  size_t done = 0;            // records complete (or dropped)
  uint32_t limit = capacity;  // debloated buffer size (sp.buffer_size), read under the lock
  auto report = [&] {
    if (written != nullptr) *written = done;
  };
  while (true) {
    Buffer garbage;  // released after the lock
    bool notify = false;
    enum class Step { kFill, kNeedBuffer, kScratch, kDone, kDropped, kClosed } step;
    {
      std::lock_guard lock(sp.mu);
      sp.claimed = false;
      limit = sp.buffer_size;
      const bool flush_requested = std::exchange(sp.flush_requested, false);
      if ((state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) {
        garbage = claimed.valid() ? std::move(claimed) : std::move(fresh);
        step = Step::kClosed;  // records filled into `claimed` go with the partition
      } else if (sp.view_released) {
        garbage = claimed.valid() ? std::move(claimed) : std::move(fresh);
        sp.dropped_records += sizes.size() - done;
        done = sizes.size();
        step = Step::kDropped;
      } else {
        if (claimed.valid()) {
          // Put back what was filled: from here on the records are readable after a flush.
          claimed.SetSize(claimed_size);
          sp.current = std::move(claimed);
          sp.records += filled;
          done += filled;
          if (claimed_size >= limit) {
            notify = sp.FinishCurrentLocked();
          } else {
            if (flush_requested) sp.current_flushed = true;  // a Flush() during the fill
            notify = AfterAppendLocked(index, sp);
          }
        } else if (fresh.valid()) {
          sp.current = std::move(fresh);  // sp.current is empty: only the writer fills it
        }
        if (done == sizes.size()) {
          step = Step::kDone;
        } else if (const uint32_t need = static_cast<uint32_t>(kRecordLengthBytes) + sizes[done];
                   need > capacity) {
          step = Step::kScratch;
        } else if (!sp.current.valid()) {
          step = Step::kNeedBuffer;
        } else if (const uint32_t used = sp.current.size(), tail = capacity - used;
                   tail >= need && (used == 0 || used + need <= limit)) {
          claimed = std::move(sp.current);
          sp.claimed = true;
          step = Step::kFill;
        } else if (tail <= max_waste || limit < capacity) {
          // The tail stays unused; debloated, the buffer ends here rather than split a record.
          notify = sp.FinishCurrentLocked() || notify;
          step = Step::kNeedBuffer;
        } else {
          step = Step::kScratch;  // split across the tail and the next buffer
        }
      }
    }
    if (notify) sp.Notify();
    switch (step) {
      case Step::kDone:
      case Step::kDropped:
        report();
        return Status::Ok();
      case Step::kClosed:
        report();
        return WritableStatus();
      case Step::kFill: {
        // No lock: `claimed` is not reachable from the subpartition (see Subpartition::claimed),
        // and its new bytes are published only when it is put back under the lock.
        size_t next = done;
        claimed_size = FillRecords(claimed.data(), claimed.size(), capacity, limit, sizes,
                                   fill, &next);
        filled = next - done;
        break;
      }
      case Step::kNeedBuffer: {
        Result<Buffer> b = RequestOutputBuffer(index, RecordPosition::kStart);
        if (!b.ok()) {
          report();
          return b.status();
        }
        fresh = std::move(b).value();
        break;
      }
      case Step::kScratch: {
        size_t n = 0;
        const Status s = WriteFromScratch(index, sizes[done], done, fill, &n);
        done += n;
        if (!s.ok()) {
          report();
          return s;
        }
        break;
      }
    }
  }
}

Status ResultPartition::WriteFromScratch(uint32_t index, uint32_t size, size_t at,
                                         BatchFillFn fill, size_t* written) {
  const std::span<uint8_t> area = Scratch(size);
  fill(at, area);
  const std::span<const uint8_t> record(area);
  const Status s = WriteRecords(index, std::span(&record, 1), written);
  if (scratch_capacity_ > kScratchKeepBytes) {
    scratch_.reset();
    scratch_capacity_ = 0;
  }
  return s;
}

std::span<uint8_t> ResultPartition::Scratch(uint32_t size) {
  if (scratch_capacity_ < size) {
    scratch_.reset();  // the old area goes first: never two large ones at once
    scratch_ = std::make_unique_for_overwrite<uint8_t[]>(size);
    scratch_capacity_ = size;
  }
  return {scratch_.get(), size};
}

Result<Buffer> ResultPartition::RequestOutputBuffer(uint32_t index, RecordPosition position) {
  const auto sp = static_cast<int32_t>(index);
  const bool mid_record = position == RecordPosition::kMiddle;
  // A record not started waits for the pool to be available; a started one may overdraw.
  auto try_request = [&]() -> Buffer {
    if (mid_record) return pool_->RequestBufferOrOverdraft(sp);
    if (pool_->IsAvailable()) return pool_->RequestBuffer(sp);
    return Buffer();
  };
  Clock::time_point start{};
  Clock::time_point deadline{};
  if (!mid_record && QueueCapped(index)) {
    start = Clock::now();
    deadline = DeadlineAfter(start, options_.emit_timeout);
    if (Status s = WaitQueueRoom(index, deadline); !s.ok()) {
      backpressure_ns_.fetch_add(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count(),
          std::memory_order_relaxed);
      return s;
    }
  }
  if (Buffer b = try_request()) {
    if (start != Clock::time_point{}) {
      backpressure_ns_.fetch_add(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count(),
          std::memory_order_relaxed);
    }
    return b;
  }
  if (start == Clock::time_point{}) {
    start = Clock::now();
    deadline = DeadlineAfter(start, options_.emit_timeout);
  }
  // A partition with more subpartitions than its pool's minimum (a wide one) can have every
  // segment parked as a partly filled buffer of some subpartition: send those now (they go out
  // as credit allows and come back) rather than wait for the output flusher's next round.
  if (IsWide()) FlushAll();
  Result<Buffer> result = InternalError("unreachable");
  while (true) {
    if (Status s = WritableStatus(); !s.ok()) {
      result = s;
      break;
    }
    if (Buffer b = try_request()) {
      result = std::move(b);
      break;
    }
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      result = BackpressureTimeout(
          index, mid_record ? "in the middle of a record" : "before the record started");
      break;
    }
    Status waited;
    if (mid_record) {
      Result<Buffer> r = pool_->RequestBufferBlocking(sp, SliceUntil(now, deadline));
      if (r.ok()) {
        result = std::move(r);
        break;
      }
      waited = r.status();
    } else {
      waited = pool_->WaitAvailable(SliceUntil(now, deadline));
    }
    if (!waited.ok() && waited.code() != StatusCode::kTimeout) {
      Status s = WritableStatus();
      result = s.ok() ? waited : s;
      break;
    }
  }
  backpressure_ns_.fetch_add(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count(),
      std::memory_order_relaxed);
  return result;
}

bool ResultPartition::QueueCapped(uint32_t index) const {
  Subpartition& sp = *subpartitions_[index];
  std::lock_guard lock(sp.mu);
  return sp.backlog >= sp.queue_cap;
}

Status ResultPartition::WaitQueueRoom(uint32_t index, Clock::time_point deadline) {
  Subpartition& sp = *subpartitions_[index];
  {
    std::unique_lock lock(sp.mu);
    while (sp.backlog >= sp.queue_cap && !sp.view_released &&
           (state_.load(std::memory_order_acquire) & (kFailed | kReleased | kCancelled)) == 0) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) {
        sp.room_waiter = false;
        lock.unlock();
        return BackpressureTimeout(index,
                                   "before the record started (its debloated queue is full)");
      }
      sp.room_waiter = true;
      sp.room_cv.wait_for(lock, SliceUntil(now, deadline));
    }
    sp.room_waiter = false;
  }
  return WritableStatus();
}

uint32_t ResultPartition::SetBufferSize(uint32_t subpartition, uint32_t bytes) {
  const uint32_t segment = pool_->segment_size();
  if (subpartition >= num_subpartitions_) return segment;
  const uint32_t size = std::clamp(bytes, std::min(kMinBufferSize, segment), segment);
  const uint32_t per_channel = std::max<uint32_t>(options_.credit.max_buffers_per_channel, 1);
  // The bytes Flink's debloated queue would hold (per_channel buffers of `size`), in whole
  // segments: the subpartition keeps that many, the rest stay in (or go back to) the pools.
  const uint64_t cap = (uint64_t{per_channel} * size + segment - 1) / segment;
  Subpartition& sp = *subpartitions_[subpartition];
  std::lock_guard lock(sp.mu);
  sp.buffer_size = size;
  sp.queue_cap = size == segment ? Subpartition::kNoQueueCap
                                 : static_cast<uint32_t>(std::clamp<uint64_t>(
                                       cap, kMinDebloatQueue, per_channel));
  sp.room_cv.notify_all();
  return size;
}

uint32_t ResultPartition::buffer_size(uint32_t subpartition) const {
  if (subpartition >= num_subpartitions_) return pool_->segment_size();
  std::lock_guard lock(subpartitions_[subpartition]->mu);
  return subpartitions_[subpartition]->buffer_size;
}

Status ResultPartition::BackpressureTimeout(uint32_t index, const char* when) const {
  std::string backlogs;
  for (uint32_t i = 0; i < num_subpartitions_ && i < 16; ++i) {
    std::lock_guard lock(subpartitions_[i]->mu);
    if (i > 0) backlogs += ",";
    backlogs += std::to_string(subpartitions_[i]->backlog);
  }
  if (num_subpartitions_ > 16) backlogs += ",...";
  const buffer::LocalBufferPoolStats ps = pool_->Stats();
  return TimeoutError("emit to subpartition " + std::to_string(index) + " of partition '" + id_ +
                      "' got no buffer within " + std::to_string(options_.emit_timeout.count()) +
                      " ms " + when + " (backpressure): the output pool holds " +
                      std::to_string(ps.owned) + " of its " + std::to_string(ps.size) +
                      " segments, " + std::to_string(ps.lent) +
                      " in use; backlog per subpartition [" + backlogs +
                      "]. The consumers are not reading: check them, or raise emit_timeout");
}

Status ResultPartition::Broadcast(std::span<const uint8_t> record) {
  for (uint32_t i = 0; i < num_subpartitions_; ++i) {
    if (Status s = Emit(record, i); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ResultPartition::EmitEvent(std::span<const uint8_t> payload, uint32_t subpartition) {
  if (subpartition >= num_subpartitions_) return BadSubpartition("EmitEvent", subpartition);
  if (Status s = WritableStatus(); !s.ok()) return s;
  if (payload.size() > pool_->segment_size()) {
    return InvalidArgument("event of " + std::to_string(payload.size()) + " bytes for partition '" +
                           id_ + "' is larger than a segment (" +
                           std::to_string(pool_->segment_size()) + " bytes)");
  }
  return AddEvent(subpartition, DataType::kEvent, payload);
}

Status ResultPartition::BroadcastEvent(std::span<const uint8_t> payload) {
  for (uint32_t i = 0; i < num_subpartitions_; ++i) {
    if (Status s = EmitEvent(payload, i); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ResultPartition::AddEvent(uint32_t index, DataType type, std::span<const uint8_t> payload) {
  Buffer event = buffer::AllocateUnpooled(static_cast<uint32_t>(payload.size()), type);
  if (!payload.empty()) std::memcpy(event.data(), payload.data(), payload.size());
  event.SetSize(static_cast<uint32_t>(payload.size()));
  Subpartition& sp = *subpartitions_[index];
  bool notify = false;
  bool closed = false;
  {
    std::lock_guard lock(sp.mu);
    if ((state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) {
      closed = true;
    } else if (!sp.view_released) {
      // Ordered after every record written so far.
      notify = sp.FinishCurrentLocked();
      notify = sp.EnqueueLocked(std::move(event)) || notify;
    }
  }
  event.Release();  // dropped (unpooled) if it was not queued
  if (notify) sp.Notify();
  return closed ? WritableStatus() : Status::Ok();
}

Status ResultPartition::Finish() {
  {
    const uint32_t state = state_.load(std::memory_order_acquire);
    if ((state & (kFailed | kReleased | kCancelled)) != 0) return WritableStatus();
    if ((state & kFinished) != 0) return Status::Ok();
  }
  for (uint32_t i = 0; i < num_subpartitions_; ++i) {
    if (Status s = AddEvent(i, DataType::kEndOfPartition, {}); !s.ok()) return s;
  }
  {
    std::lock_guard lock(state_mu_);
    state_.fetch_or(kFinished, std::memory_order_acq_rel);
  }
  StopFlusher();
  return Status::Ok();
}

void ResultPartition::Flush(uint32_t subpartition) {
  if (subpartition >= num_subpartitions_) return;
  Subpartition& sp = *subpartitions_[subpartition];
  bool notify = false;
  {
    std::lock_guard lock(sp.mu);
    notify = FlushLocked(sp);
  }
  if (notify) sp.Notify();
}

bool ResultPartition::FlushLocked(Subpartition& sp) {
  if (sp.claimed) {
    sp.flush_requested = true;  // the writer is filling it in place: it flushes it after
    return false;
  }
  if (sp.view_released || (state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) {
    return false;
  }
  return sp.MarkFlushedLocked();
}

bool ResultPartition::AfterAppendLocked(uint32_t index, Subpartition& sp) {
  if (!sp.current.valid() || sp.current.size() == 0) return false;
  if (flush_every_record_ || sp.current_flushed) return sp.MarkFlushedLocked();
  if (!sp.in_flush_list) {
    sp.in_flush_list = true;
    std::lock_guard lock(flush_list_mu_);  // lock order: sp.mu -> flush_list_mu_
    flush_list_.push_back(index);
  }
  return false;
}

void ResultPartition::FlushAll() {
  std::vector<uint32_t> listed;
  {
    std::lock_guard lock(flush_list_mu_);
    listed.swap(flush_list_);
  }
  // Only the subpartitions that wrote since they were last flushed by this list: the flush
  // costs what it flushes, not the partition's width.
  for (const uint32_t i : listed) {
    Subpartition& sp = *subpartitions_[i];
    bool notify;
    {
      std::lock_guard lock(sp.mu);
      sp.in_flush_list = false;  // data appended from now on lists it again
      notify = FlushLocked(sp);
    }
    if (notify) sp.Notify();
  }
  if (!listed.empty()) {
    listed.clear();
    std::lock_guard lock(flush_list_mu_);
    if (flush_list_.empty()) flush_list_.swap(listed);  // keep the capacity
  }
}

bool ResultPartition::IsAvailable() {
  if ((state_.load(std::memory_order_acquire) & (kFailed | kReleased)) != 0) return false;
  return pool_->IsAvailable();
}

void ResultPartition::Fail(Status error) {
  if (error.ok()) error = InternalError("partition '" + id_ + "' failed with an OK status");
  {
    std::lock_guard lock(state_mu_);
    if ((state_.load(std::memory_order_relaxed) & (kFailed | kReleased)) != 0) return;
    failure_ = std::move(error);
    state_.fetch_or(kFailed, std::memory_order_acq_rel);
  }
  pool_->CancelBlockingRequests();  // the writer wakes and sees the failure
  DropAll();
  NoteConsumerEvent();
}

void ResultPartition::Cancel() {
  {
    std::lock_guard lock(state_mu_);
    state_.fetch_or(kCancelled, std::memory_order_acq_rel);
  }
  pool_->CancelBlockingRequests();
  for (const std::unique_ptr<Subpartition>& sp : subpartitions_) {
    std::lock_guard lock(sp->mu);
    sp->room_cv.notify_all();  // a writer waiting for debloated queue room
  }
}

void ResultPartition::Release() {
  {
    std::lock_guard lock(state_mu_);
    if ((state_.load(std::memory_order_relaxed) & kReleased) != 0) return;
    state_.fetch_or(kReleased, std::memory_order_acq_rel);
  }
  StopFlusher();
  pool_->Destroy();  // a blocked writer wakes with Closed; buffers coming back go home
  DropAll();
  NoteConsumerEvent();
}

void ResultPartition::NoteConsumerEvent() {
  {
    std::lock_guard lock(consumer_mu_);
    ++consumer_events_;
  }
  consumer_cv_.notify_all();
}

uint64_t ResultPartition::consumer_events() const {
  std::lock_guard lock(consumer_mu_);
  return consumer_events_;
}

uint64_t ResultPartition::WaitConsumerEvent(uint64_t seen,
                                            std::chrono::milliseconds timeout) const {
  std::unique_lock lock(consumer_mu_);
  consumer_cv_.wait_for(lock, timeout, [&] { return consumer_events_ != seen; });
  return consumer_events_;
}

void ResultPartition::DropAll() {
  std::vector<Buffer> garbage;
  for (const std::unique_ptr<Subpartition>& sp : subpartitions_) {
    bool notify = false;
    {
      std::lock_guard lock(sp->mu);
      sp->DrainLocked(&garbage);
      if (!sp->consumed) notify = sp->TakeNotificationLocked();
    }
    garbage.clear();
    if (notify) sp->Notify();
  }
}

Result<std::unique_ptr<SubpartitionView>> ResultPartition::CreateView(
    uint32_t subpartition, SubpartitionListener* listener) {
  if (subpartition >= num_subpartitions_) return BadSubpartition("CreateView", subpartition);
  Subpartition& sp = *subpartitions_[subpartition];
  bool readable;
  {
    std::lock_guard lock(sp.mu);
    const uint32_t state = state_.load(std::memory_order_acquire);
    if ((state & (kFailed | kReleased)) != 0) return WritableStatus();
    if (sp.view_released) {
      return ClosedError("subpartition " + std::to_string(subpartition) + " of partition '" + id_ +
                         "' was released by its previous consumer and cannot be read again");
    }
    if (sp.has_view) {
      return InvalidArgument("subpartition " + std::to_string(subpartition) + " of partition '" +
                             id_ + "' already has a consumer (one view per subpartition)");
    }
    sp.has_view = true;
    sp.listener = listener;
    readable = !sp.queue.empty() || sp.CurrentReadableLocked();
    sp.armed = !readable;
  }
  std::unique_ptr<SubpartitionView> view = std::make_unique<View>(shared_from_this(), subpartition);
  if (readable && listener != nullptr) sp.Notify();
  return view;
}

ResultPartitionStats ResultPartition::Stats() const {
  ResultPartitionStats out;
  out.subpartitions.reserve(num_subpartitions_);
  for (const std::unique_ptr<Subpartition>& sp : subpartitions_) {
    SubpartitionStats s;
    {
      std::lock_guard lock(sp->mu);
      s.backlog = sp->backlog;
      s.queued_items = static_cast<uint32_t>(sp->queue.size());
      s.queued_bytes = sp->queued_bytes;
      s.buffers_out = sp->buffers_out;
      s.bytes_out = sp->bytes_out;
      s.records = sp->records;
      s.events = sp->events;
      s.dropped_records = sp->dropped_records;
      s.polled = sp->polled;
      s.has_view = sp->has_view;
      s.view_released = sp->view_released;
      s.consumed = sp->consumed;
      s.buffer_size = sp->buffer_size;
      s.queue_cap = sp->queue_cap == Subpartition::kNoQueueCap ? 0 : sp->queue_cap;
    }
    out.buffers_out += s.buffers_out;
    out.bytes_out += s.bytes_out;
    out.records += s.records;
    out.events += s.events;
    out.dropped_records += s.dropped_records;
    out.subpartitions.push_back(s);
  }
  out.backpressure_ns = backpressure_ns_.load(std::memory_order_relaxed);
  out.pool = pool_->Stats();
  const uint32_t state = state_.load(std::memory_order_acquire);
  out.finished = (state & kFinished) != 0;
  out.failed = (state & kFailed) != 0;
  out.released = (state & kReleased) != 0;
  return out;
}

void ResultPartition::StartFlusher() {
  std::lock_guard lock(flusher_mu_);
  flusher_ = std::make_shared<FlusherControl>();
  // The thread holds only a weak reference between ticks, so dropping the last shared_ptr
  // destroys the partition; if that happens during a tick (a listener held it), the
  // destructor runs on this thread, detaches it, and the loop exits without touching it.
  flusher_thread_ =
      std::thread([weak = weak_from_this(), control = flusher_, period = options_.buffer_timeout] {
        std::unique_lock control_lock(control->mu);
        while (!control->cv.wait_for(control_lock, period, [&] { return control->stop; })) {
          control_lock.unlock();
          if (std::shared_ptr<ResultPartition> self = weak.lock()) {
            self->FlushAll();
          } else {
            return;
          }
          control_lock.lock();
        }
      });
}

void ResultPartition::StopFlusher() {
  std::lock_guard lock(flusher_mu_);
  if (!flusher_thread_.joinable()) return;
  {
    std::lock_guard control_lock(flusher_->mu);
    flusher_->stop = true;
  }
  flusher_->cv.notify_all();
  if (flusher_thread_.get_id() == std::this_thread::get_id()) {
    flusher_thread_.detach();
  } else {
    flusher_thread_.join();
  }
}

}  // namespace sluice::shuffle
