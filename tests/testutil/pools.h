// Test helper (not API): the NetworkBufferPool a test starts from.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "buffer/network_buffer_pool.h"

namespace sluice::testutil {

// A global pool of exactly `segments` segments of `segment_size` bytes (allocated up front when
// `preallocate`). On failure the test fails with the reason and nullptr is returned.
inline std::shared_ptr<buffer::NetworkBufferPool> MakeNetworkBufferPool(uint32_t segments,
                                                                        uint32_t segment_size,
                                                                        bool preallocate = false) {
  buffer::NetworkBufferPoolOptions o;
  o.segment_size = segment_size;
  o.network_memory = static_cast<uint64_t>(segments) * segment_size;
  o.preallocate = preallocate;
  auto pool = buffer::NetworkBufferPool::Create(o);
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(pool).value() : nullptr;
}

// Takes every free segment of `pool` (so whatever asks for one next has to wait) and gives
// them back on Release() or destruction: a test that fails an ASSERT while holding them still
// returns them, so its leak check reports the test's failure and not a leak. Not thread-safe.
class HeldSegments {
 public:
  explicit HeldSegments(buffer::NetworkBufferPool& pool) : pool_(pool) {
    while (buffer::MemorySegment* seg = pool_.TryRequestSegment()) held_.push_back(seg);
  }
  ~HeldSegments() { Release(); }
  HeldSegments(const HeldSegments&) = delete;
  HeldSegments& operator=(const HeldSegments&) = delete;

  size_t size() const { return held_.size(); }
  void Release() {
    for (buffer::MemorySegment* seg : held_) pool_.RecycleSegment(seg);
    held_.clear();
  }

 private:
  buffer::NetworkBufferPool& pool_;
  std::vector<buffer::MemorySegment*> held_;
};

}  // namespace sluice::testutil
