#include "buffer/buffer.h"

namespace sluice::buffer {

Buffer Buffer::Wrap(MemorySegment* segment, BufferRecycler* recycler, DataType type) {
  SLUICE_CHECK(segment != nullptr && recycler != nullptr, "Buffer::Wrap of a null segment");
  uint32_t expected = 0;
  SLUICE_CHECK(segment->refs_.compare_exchange_strong(expected, 1, std::memory_order_acq_rel),
               "Buffer::Wrap of a segment that a Buffer already holds");
  segment->recycler_ = recycler;
  segment->type_ = type;
  segment->size_ = 0;
  return Buffer(segment);
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    seg_ = other.seg_;
    other.seg_ = nullptr;
  }
  return *this;
}

Buffer Buffer::Share() const {
  MemorySegment* s = Seg();
  const uint32_t prev = s->refs_.fetch_add(1, std::memory_order_relaxed);
  SLUICE_CHECK(prev > 0, "Buffer::Share of a recycled segment");
  return Buffer(s);
}

void Buffer::Release() {
  MemorySegment* s = seg_;
  if (s == nullptr) return;
  seg_ = nullptr;
  const uint32_t prev = s->refs_.fetch_sub(1, std::memory_order_acq_rel);
  SLUICE_CHECK(prev != 0, "Buffer released twice (segment reference count underflow)");
  if (prev == 1) s->recycler_->Recycle(s);
}

MemorySegment* Buffer::Detach() {
  MemorySegment* s = Seg();
  uint32_t expected = 1;
  SLUICE_CHECK(s->refs_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel),
               "Buffer::Detach of a shared buffer");
  seg_ = nullptr;
  return s;
}

void Buffer::SetSize(uint32_t size) {
  MemorySegment* s = Seg();
  SLUICE_CHECK(size <= s->capacity_, "Buffer::SetSize beyond the segment capacity");
  s->size_ = size;
}

namespace {

// Frees an unpooled segment (control block and bytes) when its last Buffer is released.
class FreeingRecycler final : public BufferRecycler {
 public:
  void Recycle(MemorySegment* segment) override {
    delete[] segment->data();
    delete segment;
  }
};

FreeingRecycler g_freeing_recycler;

}  // namespace

Buffer AllocateUnpooled(uint32_t capacity, DataType type) {
  auto* segment = new MemorySegment();
  segment->data_ = new uint8_t[capacity == 0 ? 1 : capacity];
  segment->capacity_ = capacity;
  return Buffer::Wrap(segment, &g_freeing_recycler, type);
}

}  // namespace sluice::buffer
