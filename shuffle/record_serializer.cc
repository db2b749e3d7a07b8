#include "shuffle/record_serializer.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace sluice::shuffle {

namespace {
uint32_t ReadBigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// The spill area grows with the bytes that arrive, never by what a length prefix claims; one
// larger than this is freed once a smaller record follows.
constexpr size_t kSpillReserveStep = 256u << 10;
constexpr size_t kSpillKeepBytes = 1u << 20;

Status RecordTooLong(uint32_t length, uint32_t limit) {
  return ProtocolError("record of " + std::to_string(length) +
                       " bytes is longer than the limit of " + std::to_string(limit) +
                       " bytes (corrupt length prefix, or a producer over the job's "
                       "record_size_max)");
}
}  // namespace

Status RecordSerializer::CheckSize(size_t size) {
  if (size > kMaxRecordLength) {
    return InvalidArgument("record of " + std::to_string(size) +
                           " bytes is larger than the maximum of " +
                           std::to_string(kMaxRecordLength) + " bytes");
  }
  return Status::Ok();
}

Status RecordSerializer::Begin(std::span<const uint8_t> record) {
  SLUICE_CHECK(remaining_ == 0, "RecordSerializer::Begin with a record still pending");
  if (Status s = CheckSize(record.size()); !s.ok()) return s;
  BeginChecked(record);
  return Status::Ok();
}

void RecordSerializer::BeginChecked(std::span<const uint8_t> record) {
  SLUICE_CHECK(remaining_ == 0, "RecordSerializer::Begin with a record still pending");
  StoreRecordLength(prefix_, static_cast<uint32_t>(record.size()));
  record_ = record;
  offset_ = 0;
  remaining_ = kRecordLengthBytes + record.size();
}

size_t RecordSerializer::AppendWhole(buffer::Buffer& buffer,
                                     std::span<const std::span<const uint8_t>> records) {
  SLUICE_CHECK(remaining_ == 0, "RecordSerializer::AppendWhole with a record still pending");
  if (records.empty()) return 0;
  const size_t capacity = buffer.capacity();
  size_t size = buffer.size();
  uint8_t* const out = buffer.data();
  size_t n = 0;
  for (const std::span<const uint8_t>& record : records) {
    if (capacity - size < kRecordLengthBytes + record.size()) break;
    StoreRecordLength(out + size, static_cast<uint32_t>(record.size()));
    if (!record.empty()) std::memcpy(out + size + kRecordLengthBytes, record.data(), record.size());
    size += kRecordLengthBytes + record.size();
    ++n;
  }
  buffer.SetSize(static_cast<uint32_t>(size));
  return n;
}

RecordSerializer::Progress RecordSerializer::CopyTo(buffer::Buffer& buffer) {
  uint32_t size = buffer.size();
  const uint32_t capacity = buffer.capacity();
  uint8_t* out = buffer.data();
  if (offset_ == 0 && remaining_ <= capacity - size) {
    // The common case: the whole record fits. Two copies, no byte loop.
    std::memcpy(out + size, prefix_, kRecordLengthBytes);
    if (!record_.empty()) std::memcpy(out + size + kRecordLengthBytes, record_.data(), record_.size());
    size += static_cast<uint32_t>(remaining_);
    offset_ += remaining_;
    remaining_ = 0;
    record_ = {};
    buffer.SetSize(size);
    return size == capacity ? Progress::kRecordDoneBufferFull : Progress::kRecordDoneBufferHasRoom;
  }
  // The prefix first (it may itself be split across buffers), then the record bytes.
  if (offset_ < kRecordLengthBytes && size < capacity) {
    const size_t n = std::min<size_t>(kRecordLengthBytes - offset_, capacity - size);
    std::memcpy(out + size, prefix_ + offset_, n);
    size += static_cast<uint32_t>(n);
    offset_ += n;
    remaining_ -= n;
  }
  if (offset_ >= kRecordLengthBytes && remaining_ > 0 && size < capacity) {
    const size_t n = std::min<size_t>(remaining_, capacity - size);
    std::memcpy(out + size, record_.data() + (offset_ - kRecordLengthBytes), n);
    size += static_cast<uint32_t>(n);
    offset_ += n;
    remaining_ -= n;
  }
  buffer.SetSize(size);
  if (remaining_ > 0) return Progress::kBufferFullRecordPending;
  record_ = {};
  return size == capacity ? Progress::kRecordDoneBufferFull : Progress::kRecordDoneBufferHasRoom;
}

void RecordDeserializer::SetNextBuffer(buffer::Buffer buffer) {
  current_ = std::move(buffer);
  data_ = current_ ? current_.data() : nullptr;
  size_ = current_ ? current_.size() : 0;
  pos_ = 0;
}

void RecordDeserializer::ReleaseCurrent() {
  current_.Release();
  data_ = nullptr;
  size_ = 0;
  pos_ = 0;
}

Result<RecordDeserializer::Next> RecordDeserializer::GetNextSlow(std::span<const uint8_t>* record) {
  if (!current_) return Next::kNeedMoreData;
  const uint8_t* data = data_;
  const size_t size = size_;
  while (true) {
    if (!spilling_) {
      // Collect the length prefix.
      if (have_prefix_ == 0 && size - pos_ >= kRecordLengthBytes) {
        const uint32_t len = ReadBigEndian32(data + pos_);
        if (len > max_length_) return RecordTooLong(len, max_length_);
        if (size - pos_ - kRecordLengthBytes >= len) {
          *record = {data + pos_ + kRecordLengthBytes, len};  // whole record in this buffer
          pos_ += kRecordLengthBytes + len;
          return Next::kRecord;
        }
        std::memcpy(prefix_, data + pos_, kRecordLengthBytes);
        have_prefix_ = kRecordLengthBytes;
        pos_ += kRecordLengthBytes;
      }
      while (have_prefix_ < kRecordLengthBytes && pos_ < size) prefix_[have_prefix_++] = data[pos_++];
      if (have_prefix_ < kRecordLengthBytes) {
        ReleaseCurrent();
        return Next::kNeedMoreData;
      }
      spill_length_ = ReadBigEndian32(prefix_);
      if (spill_length_ > max_length_) return RecordTooLong(spill_length_, max_length_);
      spilling_ = true;
      if (spill_.capacity() > kSpillKeepBytes && spill_length_ <= kSpillKeepBytes) {
        std::vector<uint8_t>().swap(spill_);
      }
      spill_.clear();
      spill_.reserve(std::min<size_t>(spill_length_, kSpillReserveStep));
    }
    const size_t n = std::min<size_t>(spill_length_ - spill_.size(), size - pos_);
    spill_.insert(spill_.end(), data + pos_, data + pos_ + n);
    pos_ += n;
    if (spill_.size() == spill_length_) {
      spilling_ = false;
      have_prefix_ = 0;
      *record = {spill_.data(), spill_.size()};
      return Next::kRecord;
    }
    ReleaseCurrent();
    return Next::kNeedMoreData;
  }
}

void RecordDeserializer::Clear() {
  ReleaseCurrent();
  have_prefix_ = 0;
  spilling_ = false;
  std::vector<uint8_t>().swap(spill_);
}

}  // namespace sluice::shuffle
