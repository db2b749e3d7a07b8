// PartitionRequestQueue: the server's side of credit-based flow control on one connection
// (Flink's PartitionRequestQueue with its CreditBasedSequenceNumberingViewReader). One reader
// per receiver id, each reading one subpartition view:
//
//   - a reader is queued for sending only when it has credit > 0 and a finished data buffer, or
//     when its next item is an event (events need no credit), or when it has no credit but a
//     backlog it has not announced yet;
//   - the ready queue is served round robin: one item per reader per turn;
//   - every data buffer sent costs one credit; a reader never sends more data than credit;
//   - every BufferResponse carries the reader's next sequence number and the backlog left;
//   - a reader that runs out of credit with data waiting sends exactly one BacklogAnnouncement
//     per stall (a new one only after credit has arrived and run out again), and the time it
//     waits is counted as credit stall;
//   - the end-of-partition event, a failed view or a cancel releases the reader.
//
// No sockets and no libuv here: frames go to a QueueOutput, and the views' notifications
// (producer threads) come back to the loop through a Post function. Handler code parses frames
// and calls the queue; tests drive it with fake views.
//
// Write-through: a view's notification on a producer (or flusher) thread serves its reader on
// that thread when nothing else is waiting (the ready queue is empty, no WriteMore runs) and
// the output says it writes at once (QueueOutput::DirectWritable): it sends what credit
// allows, as WriteMore would, and posts to the loop only for what is left. The notification
// never blocks on the queue: when the loop holds it, it posts as before.
//
// Read-through: a reader served there that runs out of credit with data waiting asks the output
// for the AddCredits already on the socket (QueueOutput::ReadCredits) and applies them as
// AddCredit would, so the producer's next buffer does not wait for the loop to wake up and read
// them. Credit the queue would refuse (above kMaxCredit) is left on the socket for the loop,
// which refuses it as before.
//
// Thread-safe: every method takes the queue's mutex (so a producer's direct send and the loop
// never interleave); the notifications come from the views on any thread. The output's
// methods are called under it: they must not call back into the queue.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "buffer/status.h"
#include "schema/messages.h"
#include "shuffle/function_ref.h"
#include "shuffle/subpartition_view.h"

namespace sluice::shuffle {

struct ShuffleServerStats;

// Credit a QueueOutput reads on a producer's thread (read-through), one AddCredit at a time.
class CreditSink {
 public:
  virtual ~CreditSink() = default;
  // Whether this credit may be applied (false: it would exceed kMaxCredit; it is left to the
  // loop, which refuses it).
  virtual bool Accepts(uint64_t receiver_id, int32_t credit) = 0;
  // Applies credit that Accepts said yes to and that was read off the connection.
  virtual void Apply(uint64_t receiver_id, int32_t credit) = 0;
};

// Where the queue's frames go. Loop thread.
class QueueOutput {
 public:
  virtual ~QueueOutput() = default;
  // Whether more frames may be queued now (the connection is below its write high-water mark
  // and not closing). When it says no, the queue waits for the next WriteMore().
  virtual bool CanSend() const = 0;
  // A BufferResponse (data or event) with its payload; ownership of the payload passes.
  // Called on the loop thread, or on a producer thread after DirectWritable() said yes.
  virtual void SendBuffer(const schema::BufferResponseFields& fields, buffer::Buffer payload) = 0;
  virtual void SendBacklogAnnouncement(uint64_t receiver_id, int32_t backlog) = 0;
  // Fails one channel (ErrorResponse with the receiver id); the connection goes on.
  virtual void SendChannelError(uint64_t receiver_id, fb::ErrorCode code,
                                const std::string& message) = 0;
  // Any thread: a frame sent now from this thread (not the loop's) would be written at once
  // (a hint). The default (no write-through) keeps every send on the loop.
  virtual bool DirectWritable() const { return false; }
  // Whether the calling thread is the one that runs Post's tasks.
  virtual bool OnLoopThread() const { return true; }
  // A producer thread, under the queue's mutex: reads the AddCredits waiting whole on the
  // connection now (never blocking on the loop), offering each to `sink` in stream order;
  // returns how many it applied. The default (no read-through) reads nothing.
  virtual size_t ReadCredits(CreditSink& sink) {
    (void)sink;
    return 0;
  }
};

class PartitionRequestQueue {
 public:
  // Runs a task later on the loop thread; false when the loop is gone (the task is dropped).
  // Called from producer threads.
  using Post = std::function<bool(std::function<void()>)>;
  // Creates the view for a new reader, which is its listener. Called once, inside AddReader.
  using ViewFactory = FunctionRef<Result<std::unique_ptr<SubpartitionView>>(SubpartitionListener*)>;

  // The most credit a reader may hold: a receiver announces at most its buffers, so anything
  // near this is a broken or hostile peer.
  static constexpr int64_t kMaxCredit = int64_t{1} << 30;

  // `output` and `stats` must outlive the queue. `checksums`: BufferResponses carry CRC32C.
  PartitionRequestQueue(QueueOutput* output, Post post, ShuffleServerStats* stats, bool checksums);
  // Releases every reader (their views too).
  ~PartitionRequestQueue();
  PartitionRequestQueue(const PartitionRequestQueue&) = delete;
  PartitionRequestQueue& operator=(const PartitionRequestQueue&) = delete;

  // Adds a reader for `receiver_id` with `initial_credit` and sends what it may.
  // `description` ("partition/subpartition") is for ReaderStates. Errors: InvalidArgument when
  // the receiver id already has a reader (a protocol violation of the peer; nothing changes);
  // the factory's error when the view cannot be created (no reader is added).
  Status AddReader(uint64_t receiver_id, int32_t initial_credit, std::string description,
                   ViewFactory create_view);
  // Credit from the receiver (credit > 0, checked by the parser). Credit for a receiver that
  // has no reader (released meanwhile: credit can cross a release) is ignored. ProtocolError
  // when the reader's credit would exceed kMaxCredit: answer with ErrorCode CreditViolation.
  Status AddCredit(uint64_t receiver_id, int32_t credit);
  // The view of `receiver_id` has something readable (also called by the readers' listeners,
  // through Post).
  void NotifyReaderNonEmpty(uint64_t receiver_id);
  // Buffer debloating: the receiver asks for data buffers of about `buffer_size` bytes
  // (BufferSizeAnnouncement, > 0, checked by the parser). The view clamps it to [1 KiB, its
  // segment size]; returns the size in effect, or 0 when the id has no reader (released
  // meanwhile: ignored, like credit).
  uint32_t AnnounceBufferSize(uint64_t receiver_id, uint32_t buffer_size);
  // The receiver cancelled: releases the reader and its view. Unknown ids are ignored.
  void CancelReader(uint64_t receiver_id);
  // Releases every reader.
  void ReleaseAll();
  // Sends from the ready queue while the output takes frames (call when it becomes writable).
  void WriteMore();

  bool HasReader(uint64_t receiver_id) const;
  size_t reader_count() const;
  bool empty() const { return reader_count() == 0; }
  // The reader's credit, or -1 when there is none (tests, dumps).
  int64_t credit(uint64_t receiver_id) const;
  // One line per reader: receiver id, partition, credit, backlog, next sequence, stalled.
  void AppendReaderStates(const std::string& peer, std::vector<std::string>* out) const;

 private:
  class Reader;
  class DirectCredit;

  bool Sendable(const Reader& r) const;
  // Whether `r`, out of credit with `backlog` buffers waiting, announces it now.
  static bool NeedsAnnouncement(const Reader& r, uint32_t backlog);
  void Enqueue(Reader* r);
  // Sends one item of `r` (or its backlog announcement). False when the reader was released
  // or had nothing after all (it is not queued again until notified).
  bool SendOne(Reader* r);
  void Release(uint64_t receiver_id);
  void EndStall(Reader* r);
  void WriteMoreLocked();
  void EnqueueAndWriteLocked(uint64_t receiver_id);
  // The reader of `receiver_id`, or null (credit can cross a release: it is ignored).
  Reader* FindLocked(uint64_t receiver_id) const;
  // ProtocolError when `credit` would take `r` (null: none) above kMaxCredit.
  Status CheckCreditLocked(const Reader* r, uint64_t receiver_id, int32_t credit) const;
  // Adds checked credit to `r`.
  void ApplyCreditLocked(Reader* r, int32_t credit);
  // A producer thread's notification: serves `r` here when the loop is not busy with this
  // queue and the output writes at once. True when nothing is left for the loop to do.
  bool TryServeDirect(Reader* r);

  QueueOutput* const output_;
  const Post post_;
  ShuffleServerStats* const stats_;
  const bool checksums_;
  mutable std::mutex mu_;
  // The producer thread serving a reader directly (under mu_): a notification that reaches it
  // again on that thread (from a buffer it released) posts instead of locking mu_ twice.
  std::atomic<std::thread::id> direct_thread_{};
  std::unordered_map<uint64_t, std::shared_ptr<Reader>> readers_;  // GUARDED_BY(mu_)
  std::deque<uint64_t> ready_;                                     // GUARDED_BY(mu_)
  bool writing_ = false;  // GUARDED_BY(mu_): WriteMore is running
};

}  // namespace sluice::shuffle
