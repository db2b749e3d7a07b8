#include "buffer/segment_arena.h"

namespace sluice::buffer {

SegmentArena::SegmentArena(uint8_t* base, uint32_t slots, uint32_t segment_size,
                           SlotListener* listener)
    : base_(base),
      slots_(slots),
      segment_size_(segment_size),
      listener_(listener),
      segments_(new MemorySegment[slots]) {
  SLUICE_CHECK(base != nullptr || slots == 0, "SegmentArena over a null base");
  SLUICE_CHECK(listener != nullptr, "SegmentArena without a SlotListener");
  for (uint32_t i = 0; i < slots; ++i) {
    MemorySegment& s = segments_[i];
    s.data_ = slot_data(i);
    s.capacity_ = segment_size;
    s.index_ = MemorySegment::kUnpooled;
    s.tag_ = static_cast<int32_t>(i);
    s.holder_.store(MemorySegment::kHolderTaken, std::memory_order_relaxed);
  }
}

SegmentArena::~SegmentArena() {
  SLUICE_CHECK(out_.load(std::memory_order_acquire) == 0,
               "SegmentArena destroyed while a Buffer still holds one of its slots");
}

Buffer SegmentArena::Wrap(uint32_t slot, uint32_t size, DataType type) {
  SLUICE_CHECK(slot < slots_, "SegmentArena::Wrap of a slot beyond the arena");
  SLUICE_CHECK(size <= segment_size_, "SegmentArena::Wrap with a size beyond the segment");
  // Buffer::Wrap checks that no Buffer holds the slot already.
  Buffer b = Buffer::Wrap(&segments_[slot], this, type);
  out_.fetch_add(1, std::memory_order_acq_rel);
  b.SetSize(size);
  return b;
}

void SegmentArena::Recycle(MemorySegment* segment) {
  const auto slot = static_cast<uint32_t>(segment - segments_.get());
  SLUICE_CHECK(slot < slots_, "SegmentArena recycled a segment it does not own");
  // Nothing of the arena is touched after the count: the listener may destroy it.
  SlotListener* const listener = listener_;
  out_.fetch_sub(1, std::memory_order_acq_rel);
  listener->SlotRecycled(slot);
}

}  // namespace sluice::buffer
