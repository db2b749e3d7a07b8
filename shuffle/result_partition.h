// ResultPartition: the producer side of a shuffle (Flink's BufferWritingResultPartition with
// PipelinedSubpartitions). One writer thread packs records into per-subpartition buffers taken
// from the partition's own output LocalBufferPool; finished buffers and events queue in order in
// their subpartition, where one consumer per subpartition reads them through a SubpartitionView
// (a local input channel, or the network server's reader of a remote one).
//
//   writer --Emit(rec, k)--> [current buffer of k] --full / Flush--> queue of k --PollNext--> view
//   writer --EmitInPlace(k, size, fill)--^ (fill writes the record into the buffer itself)
//   writer --EmitEvent(k)--------(finishes the current buffer first)--^
//
// Backpressure: a record that needs a new buffer waits until the output pool is available (no
// subpartition at its cap max_buffers_per_channel, a segment free); a record already started
// takes an overdraft buffer instead, so it is never left half written. IsAvailable() is the
// signal. A wait longer than ShuffleOptions::emit_timeout gives Timeout.
//
// Ownership: Create() returns a shared_ptr; every view keeps the partition alive. Release()
// drops every queued buffer and destroys the output pool (segments still held by a consumer go
// home when it releases them); it is idempotent and also run by the destructor. The output
// flusher thread (buffer_timeout > 0) belongs to the partition and is stopped by Finish/Release.
//
// Thread-safety: the writer calls (Emit*, Broadcast, EmitEvent, BroadcastEvent, Finish) are for
// one thread at a time. Everything else (Flush, FlushAll, Fail, Cancel, Release, CreateView,
// IsAvailable, Stats) is safe from any thread, also while the writer runs. SubpartitionListener
// callbacks run outside every lock and must not call Release(), Fail() or Finish() of the
// partition (they may poll or release their own view).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/local_buffer_pool.h"
#include "sluice/buffer/network_buffer_pool.h"
#include "sluice/buffer/status.h"
#include "sluice/shuffle/function_ref.h"
#include "sluice/shuffle/record_serializer.h"
#include "sluice/shuffle/shuffle_options.h"
#include "sluice/shuffle/subpartition_view.h"

namespace sluice::shuffle {

struct SubpartitionStats {
  uint32_t backlog = 0;          // finished data buffers queued
  uint32_t queued_items = 0;     // data buffers + events queued
  uint64_t queued_bytes = 0;     // bytes of everything queued
  uint64_t buffers_out = 0;      // data buffers finished by the writer (queued for a consumer)
  uint64_t bytes_out = 0;        // bytes of those buffers
  uint64_t records = 0;          // records written
  uint64_t events = 0;           // events queued, end of partition included
  uint64_t dropped_records = 0;  // records emitted after the consumer released its view
  uint64_t polled = 0;           // items handed to the consumer
  bool has_view = false;         // a consumer is attached
  bool view_released = false;    // the consumer released its view: writes here are dropped
  bool consumed = false;         // the consumer has polled the end-of-partition event
  // Buffer debloating (SetBufferSize): the size data buffers are cut at (the segment size when
  // not debloated) and the most finished data buffers queued before the writer waits (0: no
  // bound beyond the pool's max_buffers_per_channel).
  uint32_t buffer_size = 0;
  uint32_t queue_cap = 0;
};

struct ResultPartitionStats {
  std::vector<SubpartitionStats> subpartitions;
  // Sums over the subpartitions.
  uint64_t buffers_out = 0;
  uint64_t bytes_out = 0;
  uint64_t records = 0;
  uint64_t events = 0;
  uint64_t dropped_records = 0;
  uint64_t backpressure_ns = 0;  // time the writer waited for buffers
  buffer::LocalBufferPoolStats pool;
  bool finished = false;
  bool failed = false;
  bool released = false;
};

class ResultPartition : public std::enable_shared_from_this<ResultPartition> {
 public:
  // Creates the output pool (min n+1, max n*buffers_per_channel+floating_per_gate, per
  // subpartition cap max_buffers_per_channel, overdraft) under admission: a ResourceExhausted
  // error names the partition, the segments required and available and the option to raise.
  // The global pool's segment size is the one used. REQUIRES: num_subpartitions >= 1.
  static Result<std::shared_ptr<ResultPartition>> Create(
      std::string id, uint32_t num_subpartitions, std::shared_ptr<buffer::NetworkBufferPool> global,
      const ShuffleOptions& options);

  ~ResultPartition();
  ResultPartition(const ResultPartition&) = delete;
  ResultPartition& operator=(const ResultPartition&) = delete;

  const std::string& id() const { return id_; }
  uint32_t num_subpartitions() const { return num_subpartitions_; }

  // --- Writer (one thread at a time) ---
  // Appends one length-prefixed record (any size up to kMaxRecordLength) to a subpartition.
  // Blocks while the output pool is unavailable (backpressure). Errors:
  //   InvalidArgument  bad subpartition or record too large (nothing written);
  //   Timeout          no buffer within emit_timeout before the record started (nothing
  //                    written, the partition stays usable: the caller may retry);
  //   Cancelled        Cancel() was called; the failure given to Fail(); Closed after Release()
  //                    or Finish().
  // A record cut short mid-way by Cancel or a timeout fails the partition with that error, as
  // its subpartition no longer holds a well-formed stream. A record for a subpartition whose
  // view was released is dropped and counted (OK is returned).
  Status Emit(std::span<const uint8_t> record, uint32_t subpartition);
  // Appends records in order to one subpartition, as Emit of each would, but takes the
  // subpartition's lock once per buffer filled rather than once per record. Every record size
  // is checked first (InvalidArgument: nothing written). On any other error the records before
  // the failing one are written (or dropped and counted, as Emit does); `written` (optional)
  // is set to how many.
  Status EmitBatch(std::span<const std::span<const uint8_t>> records, uint32_t subpartition,
                   size_t* written = nullptr);
  // Emit to every subpartition (one copy each).
  Status Broadcast(std::span<const uint8_t> record);

  // In-place records: the writer fills a record of a known size straight into the
  // subpartition's network buffer, so the copy Emit makes from the caller's memory is gone.
  // `fill` gets a span of exactly `size` bytes (the length prefix is written for it) and must
  // write the whole record into it; the span's bytes are whatever the memory held before.
  //
  // Errors, backpressure, drops and buffer_timeout 0 (a flush per record) are as Emit's.
  // `fill` runs on the calling (writer) thread, at most once per record, and never under a
  // lock: the current buffer is taken out of the subpartition while it is filled, so neither
  // the IO thread nor the flusher waits for it, and a Flush() meanwhile cannot publish
  // half-written bytes (the flush is remembered and done as soon as the fill returns). `fill`
  // is not called when the call fails before there is room for the record (Timeout with
  // nothing written, Closed, Cancelled, a failure) or when the record is dropped (released
  // view) before it was filled. A record filled while the view is released concurrently is
  // dropped and counted; one filled while the partition fails or is released is lost with
  // it. `fill` must not throw and must not call into this partition.
  //
  // Where the record goes:
  //   - prefix + record fit in the rest of the current buffer, or in a fresh buffer: filled
  //     in place (zero copy).
  //   - they do not fit in the rest of the current buffer and that rest is at most 1/8 of a
  //     segment: the current buffer is finished early (its tail stays unused) and the record
  //     is filled in place in a fresh one. Small records never pay a copy; at most 1/8 of a
  //     buffer is given up.
  //   - the rest is larger than that, or prefix + record exceed a segment: `fill` writes into
  //     a scratch area owned by the partition (writer thread only; reused, an area above
  //     1 MiB is freed after its record) and the record is emitted from there as Emit would,
  //     split across buffers (one copy, as Emit makes).
  using FillFn = FunctionRef<void(std::span<uint8_t> record)>;
  Status EmitInPlace(uint32_t subpartition, uint32_t size, FillFn fill);
  // The batch form's callback: `index` is the record's position in `sizes`.
  using BatchFillFn = FunctionRef<void(size_t index, std::span<uint8_t> record)>;
  // Records of `sizes` in order to one subpartition, each filled by fill(i, span), as
  // EmitInPlace of each would, but filling as many records as the current buffer takes in one
  // go: the lock is taken about twice per buffer instead of twice per record. Every size is checked
  // first (InvalidArgument: nothing written, `fill` never called). On any other error the records
  // before the failing one are written (or dropped and counted); `written` (optional) is set
  // to how many.
  Status EmitInPlaceBatch(uint32_t subpartition, std::span<const uint32_t> sizes, BatchFillFn fill,
                          size_t* written = nullptr);
  // Queues a user event (DataType::kEvent) after everything written so far (the current buffer
  // is finished first). Events take no network memory and need no credit.
  // REQUIRES: payload.size() <= segment size (the largest frame payload), else InvalidArgument.
  Status EmitEvent(std::span<const uint8_t> payload, uint32_t subpartition);
  Status BroadcastEvent(std::span<const uint8_t> payload);
  // Flushes, queues an end-of-partition event in every subpartition and stops the flusher.
  // Idempotent; afterwards the writer calls fail with Closed. Consumers still read what is queued.
  Status Finish();

  // --- Any thread ---
  // Makes the partly filled current buffer(s) readable (Flink's flush): the buffer is not
  // finished, the reader takes it as it is when it reaches it, and until then the writer keeps
  // appending records to it (they are readable too). So a writer that falls behind its reader
  // packs its records into the buffer the reader has not taken yet instead of a buffer each.
  // A buffer is finished (queued) when full, before an event, or by the reader taking it.
  // FlushAll visits only the subpartitions that wrote since their last FlushAll (a list kept
  // by the writer): its cost is what it flushes, not the number of subpartitions.
  void Flush(uint32_t subpartition);
  void FlushAll();
  // The backpressure signal: true when a new buffer can be had without waiting.
  bool IsAvailable();
  // Fails the partition: queued buffers are recycled now, views return `error` from PollNext
  // (listeners waiting for data are notified), the writer's calls return it (a blocked writer is
  // woken). The first failure wins; no-op after Release(). An OK status becomes Internal.
  void Fail(Status error);
  // Wakes a writer blocked on backpressure with Cancelled; every later writer call is Cancelled.
  // Queued data stays readable. Idempotent.
  void Cancel();
  // Drops everything and destroys the output pool; views return Closed (listeners waiting for
  // data are notified). Idempotent; also run by the destructor.
  void Release();

  // --- Consumers ---
  // A view on one subpartition. One view per subpartition: while one is attached another is
  // InvalidArgument, and after a view was released the subpartition cannot be read again
  // (pipelined data is gone): Closed. After Fail the failure, after Release Closed.
  // `listener` may be null (the consumer polls); it must outlive the view's Release(), which
  // waits for a notification in flight (see subpartition_view.h). When something is readable
  // already, it is notified before CreateView returns.
  Result<std::unique_ptr<SubpartitionView>> CreateView(uint32_t subpartition,
                                                       SubpartitionListener* listener);

  ResultPartitionStats Stats() const;

  // --- Buffer debloating (any thread; docs/protocol.md "Buffer debloating") ---
  // The smallest buffer size SetBufferSize sets (schema::kMinDebloatBufferSize on the wire).
  static constexpr uint32_t kMinBufferSize = 1024;
  // The fewest finished data buffers a debloated subpartition may queue.
  static constexpr uint32_t kMinDebloatQueue = 2;
  // The consumer of `subpartition` asks for data buffers of about `bytes`: clamped to
  // [kMinBufferSize, segment size], returned. From the next buffer on, the writer finishes a
  // data buffer once it holds that many bytes (a record larger than that still fills one
  // buffer of up to a segment, in place records are never split for it), and, below a
  // segment, it starts a record only while fewer than
  //   queue_cap = clamp(ceil(max_buffers_per_channel x size / segment_size), 2,
  //                     max_buffers_per_channel)
  // finished data buffers are queued: the bytes Flink's debloated queue holds, but in whole
  // segments, so the subpartition really holds fewer segments and its output pool lends
  // fewer (the writer's wait counts as backpressure). The segment size ends debloating.
  // An unknown subpartition is ignored (returns the segment size).
  uint32_t SetBufferSize(uint32_t subpartition, uint32_t bytes);
  uint32_t buffer_size(uint32_t subpartition) const;

  // --- Watching the consumers (any thread) ---
  // A counter that moves whenever a subpartition's end-of-partition is consumed, a view is
  // released, or the partition fails or is released: wait on it (then look at Stats()) instead
  // of polling Stats() to learn that the consumers are done or one went away.
  uint64_t consumer_events() const;
  // Waits until consumer_events() != seen, or the timeout; returns the current value.
  uint64_t WaitConsumerEvent(uint64_t seen, std::chrono::milliseconds timeout) const;
  // The output pool (for tests and metrics).
  const buffer::LocalBufferPool& pool() const { return *pool_; }

 private:
  class Subpartition;
  class View;
  struct FlusherControl;

  // State bits in state_.
  static constexpr uint32_t kFinished = 1;
  static constexpr uint32_t kCancelled = 2;
  static constexpr uint32_t kFailed = 4;
  static constexpr uint32_t kReleased = 8;

  ResultPartition(std::string id, uint32_t num_subpartitions,
                  std::shared_ptr<buffer::LocalBufferPool> pool, const ShuffleOptions& options);

  // More subpartitions than the output pool's minimum segments (memory_estimate.h: a wide
  // partition): not every subpartition can hold a buffer at once.
  bool IsWide() const;
  // OK, or why the writer may not write (failure, released, cancelled, finished).
  Status WritableStatus() const;
  Status BadSubpartition(const char* what, uint32_t subpartition) const;
  // The checks every Emit* makes before writing: subpartition, partition state.
  Status CheckWritable(uint32_t subpartition, const char* what) const;
  Status RecordTooLarge(size_t size) const;
  // Copies `records` (sizes checked) into subpartition `index`; sets *written (if not null).
  Status WriteRecords(uint32_t index, std::span<const std::span<const uint8_t>> records,
                      size_t* written);
  // Fills records of `sizes` (checked) in place into subpartition `index` (see EmitInPlace).
  Status WriteInPlace(uint32_t index, std::span<const uint32_t> sizes, BatchFillFn fill,
                      size_t* written);
  // A record of `size` bytes that is not filled in place (too large, or split across a
  // buffer's tail): filled (as record `at` of the batch) into the scratch area, then copied.
  Status WriteFromScratch(uint32_t index, uint32_t size, size_t at, BatchFillFn fill,
                          size_t* written);
  // The scratch area for a record that is not filled in place, at least `size` bytes.
  std::span<uint8_t> Scratch(uint32_t size);

  enum class RecordPosition {
    kStart,  // no byte of the record is written: wait until the pool is available
    kMiddle  // the rest of a started record: overdraft, else a blocking request
  };
  // A buffer for subpartition `index`, waiting at most emit_timeout (backpressure).
  Result<buffer::Buffer> RequestOutputBuffer(uint32_t index, RecordPosition position);
  Status BackpressureTimeout(uint32_t index, const char* when) const;
  // Debloating: whether subpartition `index` has its queue cap of finished buffers, and the
  // wait until it has room (or the deadline: Timeout; Cancel/Fail/Release/view released end
  // the wait, and the partition's state is returned).
  bool QueueCapped(uint32_t index) const;
  Status WaitQueueRoom(uint32_t index, std::chrono::steady_clock::time_point deadline);
  Status AddEvent(uint32_t index, buffer::DataType type, std::span<const uint8_t> payload);
  // Flush of one subpartition (see Flush); true when its listener must be notified.
  // REQUIRES: sp.mu held.
  bool FlushLocked(Subpartition& sp);
  // After the writer appended to sp.current (sp.mu held): flushing per record or appending to
  // a flushed buffer makes it readable (true: notify), else the subpartition goes on the flush
  // list. REQUIRES: sp.mu held, sp.current ends on a record boundary.
  bool AfterAppendLocked(uint32_t index, Subpartition& sp);
  // Recycles every queued and current buffer (outside the subpartition locks) and notifies
  // listeners waiting for data, so they poll and see the error.
  void DropAll();
  void StartFlusher();
  void StopFlusher();

  const std::string id_;
  const uint32_t num_subpartitions_;
  const ShuffleOptions options_;
  const bool flush_every_record_;
  const std::shared_ptr<buffer::LocalBufferPool> pool_;
  std::vector<std::unique_ptr<Subpartition>> subpartitions_;  // fixed after construction

  RecordSerializer serializer_;  // writer thread only
  // EmitInPlace's scratch area for records not filled in place. Writer thread only.
  std::unique_ptr<uint8_t[]> scratch_;
  uint32_t scratch_capacity_ = 0;

  std::atomic<uint32_t> state_{0};  // kFinished | kCancelled | kFailed | kReleased
  mutable std::mutex state_mu_;     // serializes state changes; guards failure_
  Status failure_;                  // GUARDED_BY(state_mu_)
  std::atomic<uint64_t> backpressure_ns_{0};

  // consumer_events(): bumped by NoteConsumerEvent, outside every subpartition lock.
  void NoteConsumerEvent();
  mutable std::mutex consumer_mu_;
  mutable std::condition_variable consumer_cv_;
  uint64_t consumer_events_ = 0;  // GUARDED_BY(consumer_mu_)

  // Subpartitions holding data written since their last FlushAll (each at most once: its
  // in_flush_list flag). Lock order: a subpartition's mu -> flush_list_mu_.
  std::mutex flush_list_mu_;
  std::vector<uint32_t> flush_list_;  // GUARDED_BY(flush_list_mu_)

  std::mutex flusher_mu_;                    // Finish vs Release stopping the flusher
  std::shared_ptr<FlusherControl> flusher_;  // GUARDED_BY(flusher_mu_), null without flusher
  std::thread flusher_thread_;               // GUARDED_BY(flusher_mu_)
};

}  // namespace sluice::shuffle
