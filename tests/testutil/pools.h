// Test helper (not API): the NetworkBufferPool a test starts from.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>

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

}  // namespace sluice::testutil
