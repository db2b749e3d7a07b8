// Records in buffers: length-prefixed records packed back to back into segments; a record may
// span any number of buffers, so records larger than a segment work.
//
//   buffer k                          buffer k+1
//   | len(4, BE) | record bytes ... | | ... rest of record | len | record | len | rec...
//
// RecordSerializer (producer side) copies one record at a time into the current buffer and
// says whether the record is complete and whether the buffer is full. RecordDeserializer
// (consumer side, one per input channel) hands out records from a sequence of buffers: a record
// inside one buffer is returned as a view into that buffer (no copy); only a record that spans
// buffers is assembled in a reusable spill area.
//
// Both are thread-compatible (one per subpartition writer / input channel).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/status.h"

namespace sluice::shuffle {

inline constexpr size_t kRecordLengthBytes = 4;
// The largest record: the length prefix is a u32, and we keep a margin below 4 GiB.
inline constexpr uint32_t kMaxRecordLength = 1u << 30;

// Writes a record's length prefix (big-endian) at p[0..3].
inline void StoreRecordLength(uint8_t* p, uint32_t length) {
  p[0] = static_cast<uint8_t>(length >> 24);
  p[1] = static_cast<uint8_t>(length >> 16);
  p[2] = static_cast<uint8_t>(length >> 8);
  p[3] = static_cast<uint8_t>(length);
}

class RecordSerializer {
 public:
  enum class Progress {
    kRecordDoneBufferHasRoom,  // the record is complete and the buffer has room left
    kRecordDoneBufferFull,     // the record is complete and filled the buffer exactly
    kBufferFullRecordPending,  // the buffer is full; call CopyTo again with a new buffer
  };

  // Starts a record. REQUIRES: the previous record is complete; record.size() <=
  // kMaxRecordLength (checked: InvalidArgument).
  Status Begin(std::span<const uint8_t> record);
  // OK when a record of `size` bytes may be written, else InvalidArgument (Begin's check).
  static Status CheckSize(size_t size);
  // Begin without the size check. REQUIRES: CheckSize(record.size()) was OK; no record pending.
  void BeginChecked(std::span<const uint8_t> record);
  // Appends as much of the pending record as fits after buffer.size(), advancing the size.
  Progress CopyTo(buffer::Buffer& buffer);
  // Appends whole records (prefix and bytes) from the front of `records` for as long as the
  // next one fits completely after buffer.size(); sets the size once. Returns how many were
  // appended. REQUIRES: no record pending; every size checked (CheckSize). The record that did
  // not fit (if any) is for Begin/CopyTo, which may split it.
  size_t AppendWhole(buffer::Buffer& buffer, std::span<const std::span<const uint8_t>> records);
  bool HasPending() const { return remaining_ > 0; }

 private:
  uint8_t prefix_[kRecordLengthBytes] = {};
  std::span<const uint8_t> record_;
  size_t offset_ = 0;     // bytes of prefix + record already copied
  size_t remaining_ = 0;  // bytes of prefix + record still to copy
};

class RecordDeserializer {
 public:
  enum class Next {
    kRecord,         // *record is valid until the next call or SetNextBuffer
    kNeedMoreData,   // the current buffer is used up: give the next one
  };

  // The longest record accepted (default kMaxRecordLength). A longer length prefix fails
  // GetNext with an error naming the length and the limit, before anything is reserved for it.
  void SetMaxRecordLength(uint32_t bytes) { max_length_ = std::min(bytes, kMaxRecordLength); }
  uint32_t max_record_length() const { return max_length_; }
  // Hands the next data buffer of the stream; the previous one is released.
  // REQUIRES: the previous buffer is used up (GetNext returned kNeedMoreData).
  void SetNextBuffer(buffer::Buffer buffer);
  // The next record, or kNeedMoreData. A length beyond max_record_length() is an error.
  Result<Next> GetNext(std::span<const uint8_t>* record) {
    // Inline fast path: a whole record inside the current buffer, no partial record held.
    if (have_prefix_ == 0 && !spilling_ && size_ - pos_ >= kRecordLengthBytes) {
      const uint8_t* p = data_ + pos_;
      // The buffer was just written by another thread (a socket read or the producer): fetch
      // a few lines ahead so the walk does not wait for each line in turn.
      __builtin_prefetch(p + 512);
      const uint32_t len = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
                           (uint32_t{p[2]} << 8) | uint32_t{p[3]};
      if (size_ - pos_ - kRecordLengthBytes >= len && len <= max_length_) {
        *record = {p + kRecordLengthBytes, len};
        pos_ += kRecordLengthBytes + len;
        return Next::kRecord;
      }
    }
    return GetNextSlow(record);
  }
  // True when part of a record is held between buffers (the stream must not end here).
  bool HasPartialRecord() const { return have_prefix_ > 0 || spilling_; }
  // Releases the current buffer and any partial record.
  void Clear();

 private:
  Result<Next> GetNextSlow(std::span<const uint8_t>* record);
  void ReleaseCurrent();

  buffer::Buffer current_;
  const uint8_t* data_ = nullptr;  // current_'s bytes (nullptr/0 without a buffer)
  size_t size_ = 0;
  size_t pos_ = 0;
  // A record spanning buffers: its length prefix (possibly split) and its bytes so far.
  uint8_t prefix_[kRecordLengthBytes] = {};
  size_t have_prefix_ = 0;
  bool spilling_ = false;
  uint32_t spill_length_ = 0;
  std::vector<uint8_t> spill_;
  uint32_t max_length_ = kMaxRecordLength;
};

}  // namespace sluice::shuffle
