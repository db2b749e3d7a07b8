// Test helper (not API): the leak check most suites end with. Buffers in flight come home
// asynchronously (a loop thread recycles them), so the check allows a moment first.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "buffer/network_buffer_pool.h"
#include "testutil/wait.h"

namespace sluice::testutil {

// Waits up to `timeout` for every segment of `pool` to be back in its free list, then expects
// it; the failure message names `owner` (e.g. the node) and carries the pool's DebugString.
// Returns whether they all came back.
inline bool ExpectAllSegmentsBack(const buffer::NetworkBufferPool& pool,
                                  const std::string& owner = "",
                                  std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const bool back = PollUntil([&] { return pool.available_segments() == pool.total_segments(); },
                              timeout, std::chrono::milliseconds(5));
  EXPECT_EQ(pool.available_segments(), pool.total_segments())
      << (owner.empty() ? "" : owner + ": ") << pool.DebugString();
  return back;
}

}  // namespace sluice::testutil
