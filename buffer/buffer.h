// MemorySegment, Buffer and BufferRecycler: the unit of network memory and its handle.
//
// Layout of the network memory slab (one mmap, cut into equal, page-aligned segments):
//
//   slab: | seg 0 | seg 1 | seg 2 | ... | seg N-1 |        each segment_size bytes
//           ^ MemorySegment[0] (control block: data pointer, refcount, recycler, size, type)
//
// A MemorySegment is never created or freed on the data path: whoever holds its pointer owns it
// (the NetworkBufferPool's free list, a LocalBufferPool's queue, a channel's exclusive set, or a
// Buffer). A Buffer is a move-only handle on one segment. The first Buffer takes the segment's
// only reference; Share() makes another handle on the same bytes (counted), and when the last
// handle is released the segment goes back to its BufferRecycler, exactly once, from whichever
// thread released it.
//
// Thread-safety: Buffer is thread-compatible (one thread uses a handle at a time; different
// handles on a shared segment may live on different threads). Release/recycle is safe from any
// thread. Double release and use after release are caught in every build type.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "sluice/buffer/status.h"

namespace sluice::buffer {

// What a buffer carries. Events are ordered with data but need no credit.
enum class DataType : uint8_t {
  kData = 0,            // serialized records
  kEndOfPartition = 1,  // event: the producer finished this subpartition
  kEvent = 2,           // event: an opaque user event
};
inline constexpr uint8_t kMaxDataType = 2;
inline bool IsEvent(DataType t) { return t != DataType::kData; }

class MemorySegment;
class Buffer;
Buffer AllocateUnpooled(uint32_t capacity, DataType type);

// Takes back a segment whose last Buffer was released. Implemented by pools and by channels
// that own exclusive segments. Called from any thread, never with a Buffer lock held.
class BufferRecycler {
 public:
  virtual ~BufferRecycler() = default;
  virtual void Recycle(MemorySegment* segment) = 0;
};

// One segment of the slab, or an unpooled heap block (see AllocateUnpooled). Cache-line
// aligned so that segments used by different threads do not share a line.
class alignas(64) MemorySegment {
 public:
  static constexpr uint32_t kUnpooled = 0xFFFFFFFFu;

  MemorySegment() = default;
  MemorySegment(const MemorySegment&) = delete;
  MemorySegment& operator=(const MemorySegment&) = delete;

  uint8_t* data() const { return data_; }
  uint32_t capacity() const { return capacity_; }
  // Position in the slab, or kUnpooled.
  uint32_t index() const { return index_; }
  // A small integer the current owner may use (LocalBufferPool: the subpartition).
  int32_t tag() const { return tag_; }
  void set_tag(int32_t tag) { tag_ = tag; }

 private:
  friend class Buffer;
  friend class NetworkBufferPool;
  friend class LocalBufferPool;
  friend class SegmentArena;  // MemorySegments over external memory (buffer/segment_arena.h)
  friend Buffer AllocateUnpooled(uint32_t capacity, DataType type);

  // Values of holder_, checked on every hand-over so that a double recycle aborts.
  static constexpr uint8_t kHolderFree = 0;   // in the NetworkBufferPool's free list
  static constexpr uint8_t kHolderTaken = 1;  // out of it: exclusive, direct, or kept by a pool
  static constexpr uint8_t kHolderLent = 2;   // lent out as a Buffer by a LocalBufferPool

  uint8_t* data_ = nullptr;
  uint32_t capacity_ = 0;
  uint32_t index_ = kUnpooled;
  std::atomic<uint32_t> refs_{0};   // live Buffer handles on this segment
  std::atomic<uint8_t> holder_{kHolderFree};  // who holds it (see above)
  BufferRecycler* recycler_ = nullptr;
  uint32_t size_ = 0;  // bytes of valid data
  DataType type_ = DataType::kData;
  int32_t tag_ = -1;
};

class Buffer {
 public:
  // An empty handle (valid() == false).
  Buffer() = default;
  // Takes the first reference on a segment that no Buffer holds; when the last handle is
  // released, recycler->Recycle(segment) is called. REQUIRES: no Buffer holds the segment
  // (checked). The size starts at 0.
  static Buffer Wrap(MemorySegment* segment, BufferRecycler* recycler,
                     DataType type = DataType::kData);

  Buffer(Buffer&& other) noexcept : seg_(other.seg_) { other.seg_ = nullptr; }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Release(); }

  bool valid() const { return seg_ != nullptr; }
  explicit operator bool() const { return valid(); }

  // Another handle on the same bytes; the segment is recycled when both are released. Use it
  // to keep bytes alive (e.g. until a socket write completes). REQUIRES: valid().
  Buffer Share() const;
  // Drops this handle's reference now (no-op on an empty handle).
  void Release();

  // Accessors. REQUIRES: valid() (checked in every build).
  uint8_t* data() const { return Seg()->data_; }
  uint32_t capacity() const { return Seg()->capacity_; }
  uint32_t size() const { return Seg()->size_; }
  // REQUIRES: size <= capacity().
  void SetSize(uint32_t size);
  DataType type() const { return Seg()->type_; }
  void SetType(DataType type) { Seg()->type_ = type; }
  std::span<uint8_t> bytes() const { return {data(), size()}; }
  std::span<uint8_t> writable() const { return {data(), capacity()}; }
  // True when another handle shares the segment.
  bool IsShared() const { return Seg()->refs_.load(std::memory_order_acquire) > 1; }
  MemorySegment* segment() const { return Seg(); }

 private:
  friend class LocalBufferPool;
  explicit Buffer(MemorySegment* seg) : seg_(seg) {}
  // Takes the segment back out of the only handle without recycling it (an owner taking back
  // a buffer a listener declined). REQUIRES: valid() and not shared (checked).
  MemorySegment* Detach();
  MemorySegment* Seg() const {
    SLUICE_CHECK(seg_ != nullptr, "use of an empty or released Buffer");
    return seg_;
  }
  MemorySegment* seg_ = nullptr;
};

// A heap-allocated buffer outside the network memory (for events and tests); freed when the
// last handle is released. Not for the data path.
Buffer AllocateUnpooled(uint32_t capacity, DataType type = DataType::kData);

}  // namespace sluice::buffer
