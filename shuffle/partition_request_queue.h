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
// Loop-thread only (the thread that runs Post's tasks), except the listeners the views call.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "buffer/status.h"
#include "schema/messages.h"
#include "shuffle/function_ref.h"
#include "shuffle/subpartition_view.h"

namespace sluice::shuffle {

struct ShuffleServerStats;

// Where the queue's frames go. Loop thread.
class QueueOutput {
 public:
  virtual ~QueueOutput() = default;
  // Whether more frames may be queued now (the connection is below its write high-water mark
  // and not closing). When it says no, the queue waits for the next WriteMore().
  virtual bool CanSend() const = 0;
  // A BufferResponse (data or event) with its payload; ownership of the payload passes.
  virtual void SendBuffer(const schema::BufferResponseFields& fields, buffer::Buffer payload) = 0;
  virtual void SendBacklogAnnouncement(uint64_t receiver_id, int32_t backlog) = 0;
  // Fails one channel (ErrorResponse with the receiver id); the connection goes on.
  virtual void SendChannelError(uint64_t receiver_id, fb::ErrorCode code,
                                const std::string& message) = 0;
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

  bool HasReader(uint64_t receiver_id) const { return readers_.count(receiver_id) != 0; }
  size_t reader_count() const { return readers_.size(); }
  bool empty() const { return readers_.empty(); }
  // The reader's credit, or -1 when there is none (tests, dumps).
  int64_t credit(uint64_t receiver_id) const;
  // One line per reader: receiver id, partition, credit, backlog, next sequence, stalled.
  void AppendReaderStates(const std::string& peer, std::vector<std::string>* out) const;

 private:
  class Reader;

  bool Sendable(const Reader& r) const;
  void Enqueue(Reader* r);
  // Sends one item of `r` (or its backlog announcement). False when the reader was released
  // or had nothing after all (it is not queued again until notified).
  bool SendOne(Reader* r);
  void Release(uint64_t receiver_id);
  void EndStall(Reader* r);

  QueueOutput* const output_;
  const Post post_;
  ShuffleServerStats* const stats_;
  const bool checksums_;
  std::unordered_map<uint64_t, std::shared_ptr<Reader>> readers_;
  std::deque<uint64_t> ready_;
  bool writing_ = false;  // WriteMore is running (outputs may call back into the queue)
};

}  // namespace sluice::shuffle
