// SegmentArena: MemorySegments over memory the pool does not own (e.g. a shared-memory arena a
// local writer fills), so that its bytes travel as ordinary Buffers without a copy.
//
//   base: | slot 0 | slot 1 | ... | slot K-1 |      each segment_size bytes, owned by the caller
//           ^ MemorySegment[0] (index() == kUnpooled, tag() == slot)
//
// Wrap(slot) hands out a Buffer on one slot; when its last handle is released the arena calls
// `listener->SlotRecycled(slot)` (from whichever thread released it), and the slot may be
// wrapped again. The arena never frees `base`: the caller keeps the memory mapped until every
// slot is back (slots_out() == 0) and then destroys the arena; SlotRecycled may do that itself
// (the arena touches nothing of its own after the call).
//
// Thread-safety: Wrap is thread-compatible (one owner hands slots out); recycling is safe from
// any thread; slots_out() may be read from any thread. Destroying the arena with a slot still
// out aborts (a Buffer would point into freed memory).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/status.h"

namespace sluice::buffer {

// Told when a slot comes back. Called from any thread, never under an arena lock.
class SlotListener {
 public:
  virtual ~SlotListener() = default;
  virtual void SlotRecycled(uint32_t slot) = 0;
};

class SegmentArena final : private BufferRecycler {
 public:
  // REQUIRES: base holds slots * segment_size bytes; `listener` outlives every slot's Buffers
  // (it is not owned).
  SegmentArena(uint8_t* base, uint32_t slots, uint32_t segment_size, SlotListener* listener);
  ~SegmentArena() override;
  SegmentArena(const SegmentArena&) = delete;
  SegmentArena& operator=(const SegmentArena&) = delete;

  uint32_t slots() const { return slots_; }
  uint32_t segment_size() const { return segment_size_; }
  uint8_t* slot_data(uint32_t slot) const { return base_ + uint64_t{slot} * segment_size_; }
  // Slots currently wrapped in a live Buffer.
  uint32_t slots_out() const { return out_.load(std::memory_order_acquire); }

  // A Buffer on `slot` holding its first `size` bytes. REQUIRES: slot < slots(), size <=
  // segment_size() and the slot is not out (all checked in every build).
  Buffer Wrap(uint32_t slot, uint32_t size, DataType type = DataType::kData);

 private:
  void Recycle(MemorySegment* segment) override;

  uint8_t* const base_;
  const uint32_t slots_;
  const uint32_t segment_size_;
  SlotListener* const listener_;
  std::unique_ptr<MemorySegment[]> segments_;
  std::atomic<uint32_t> out_{0};
};

}  // namespace sluice::buffer
