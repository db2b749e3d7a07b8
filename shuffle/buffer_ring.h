// BufferRing: a FIFO of move-only Buffers that costs nothing until the first push (an empty
// std::deque already holds a 512-byte block and its map), then one power-of-two array that
// doubles when full. A channel of a wide gate holds a few of these, most of them empty, so
// this keeps its heap to a few dozen bytes. Thread-compatible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "buffer/buffer.h"

namespace sluice::shuffle {

class BufferRing {
 public:
  BufferRing() = default;
  BufferRing(BufferRing&&) noexcept = default;
  BufferRing& operator=(BufferRing&&) noexcept = default;

  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }

  void push_back(buffer::Buffer b) {
    if (size_ == capacity_) Grow();
    slots_[(head_ + size_) & (capacity_ - 1)] = std::move(b);
    ++size_;
  }
  // REQUIRES: !empty() (for the four below).
  buffer::Buffer& front() { return slots_[head_]; }
  buffer::Buffer& back() { return slots_[(head_ + size_ - 1) & (capacity_ - 1)]; }
  void pop_front() {
    slots_[head_] = buffer::Buffer();
    head_ = (head_ + 1) & (capacity_ - 1);
    --size_;
  }
  void pop_back() {
    back() = buffer::Buffer();
    --size_;
  }
  // The i-th buffer from the front. REQUIRES: i < size().
  const buffer::Buffer& operator[](size_t i) const {
    return slots_[(head_ + i) & (capacity_ - 1)];
  }
  void swap(BufferRing& other) noexcept {
    std::swap(slots_, other.slots_);
    std::swap(capacity_, other.capacity_);
    std::swap(head_, other.head_);
    std::swap(size_, other.size_);
  }
  // Releases every buffer and the array.
  void clear() { BufferRing().swap(*this); }

 private:
  void Grow() {
    const size_t capacity = capacity_ == 0 ? 2 : capacity_ * 2;
    auto slots = std::make_unique<buffer::Buffer[]>(capacity);
    for (size_t i = 0; i < size_; ++i) {
      slots[i] = std::move(slots_[(head_ + i) & (capacity_ - 1)]);
    }
    slots_ = std::move(slots);
    capacity_ = capacity;
    head_ = 0;
  }

  std::unique_ptr<buffer::Buffer[]> slots_;
  size_t capacity_ = 0;  // 0 or a power of two
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace sluice::shuffle
