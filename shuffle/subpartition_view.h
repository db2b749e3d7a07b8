// SubpartitionView: how a consumer reads one subpartition of a ResultPartition, whether it is
// a LocalInputChannel in the same process or the server-side reader of a remote channel.
//
// Items come out in the order the writer queued them: readable data buffers (finished ones,
// and a flushed one the writer may still append to until the reader takes it) and events
// (end of partition, user events). Data costs the consumer one credit per buffer; events need
// none. `backlog` is the number of readable data buffers still queued: the remote receiver
// uses it to ask for floating buffers.
//
// Notifications: the listener's NotifyDataAvailable() is called (on the producer's or the
// flusher's thread, outside every lock) when the view goes from "nothing readable" to
// "something readable". It is not repeated until a PollNext() has found nothing readable, so a
// consumer polls until PollNext() returns nothing, or until it runs out of credit and then
// polls again when credit arrives. A PollNext() that returns the last readable item (backlog 0
// and !next_is_event) re-arms it too. A failed or released partition counts as readable
// (PollNext returns the error). When items are queued already, the first notification comes
// from inside CreateView(), before it returns. After Release() has returned the listener is
// never called again: Release() waits for a call in flight on another thread, so do not call
// it while holding a lock that the listener takes. The listener may call PollNext() and
// Release() of the same view from inside NotifyDataAvailable() (the server's write-through
// serves its reader on the notifying thread): an implementation calls the listener outside its
// own locks, or under a recursive one that Release() also takes.
//
// Thread-safe: PollNext and the getters may be called from the consumer's thread while the
// producer adds buffers. Release() is idempotent and may be called from any thread.
#pragma once

#include <cstdint>
#include <optional>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/status.h"

namespace sluice::shuffle {

struct BufferAndBacklog {
  buffer::Buffer buffer;         // data (buffer.type() == kData) or an event
  uint32_t backlog = 0;          // readable data buffers still queued after this one
  bool next_is_event = false;    // the next queued item is an event (sendable without credit)
  uint32_t sequence_number = 0;  // position of this item in the subpartition, from 0
};

class SubpartitionListener {
 public:
  virtual ~SubpartitionListener() = default;
  // Something became readable. Any thread, outside every lock; must not block.
  virtual void NotifyDataAvailable() = 0;
};

class SubpartitionView {
 public:
  virtual ~SubpartitionView() = default;

  // The next item, or nullopt when nothing is readable now (the writer holds a partly filled
  // buffer that was not flushed yet, or the queue is empty). After the end-of-partition event
  // has been returned, always nullopt. An error: the partition failed or was released.
  virtual Result<std::optional<BufferAndBacklog>> PollNext() = 0;
  // Whether PollNext would return an item that `credit` allows: an event always, data when
  // credit > 0. Also true when PollNext would return an error (failed or released partition).
  // When nothing at all is readable the view arms its listener, as a PollNext returning
  // nullopt does: a consumer that stops on false is notified when something becomes readable
  // (false only for lack of credit arms nothing: the consumer's credit brings it back).
  virtual bool IsAvailable(int32_t credit) const = 0;
  // Readable data buffers queued (finished, or flushed and still appendable).
  virtual uint32_t backlog() const = 0;
  // The consumer is gone: queued buffers are recycled now, the writer's later buffers for this
  // subpartition are dropped, no more notifications. Idempotent.
  virtual void Release() = 0;
  virtual bool IsReleased() const = 0;
  // Buffer debloating: the consumer asks for data buffers of about `bytes`. Returns the size
  // in effect (the view clamps it to what it can cut); the default cannot cut buffers and
  // returns 0. Any thread.
  virtual uint32_t SetBufferSize(uint32_t bytes) {
    (void)bytes;
    return 0;
  }
};

}  // namespace sluice::shuffle
