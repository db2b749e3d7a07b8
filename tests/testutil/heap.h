// Test helper (not API): heap bytes a structure costs per item, from mallinfo2(), and the one
// rule for asserting it. mallinfo2() reads 0 under AddressSanitizer and ThreadSanitizer (their
// allocators do not report it), so a test skips there, saying so, and asserts in the plain
// build (CI's first stage).
#pragma once

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstddef>
#include <cstdio>
#include <string>

#include "testutil/sanitizer.h"

namespace sluice::testutil {

inline constexpr bool kHeapUnmeasurable = kUnderSanitizer;
inline constexpr const char* kHeapUnmeasurableReason =
    "mallinfo2() reads 0 under a sanitizer's allocator: measured in the plain build";

// Heap bytes in use now.
inline size_t HeapInUse() { return mallinfo2().uordblks; }

// Expects the heap grown since `before` to be under `bound` bytes per item over `items`;
// records it as the test property `name` and prints it.
inline void ExpectHeapPerItemBelow(size_t before, size_t items, double bound,
                                   const std::string& name) {
  const double per_item = (static_cast<double>(HeapInUse()) - before) / items;
  ::testing::Test::RecordProperty(name, std::to_string(per_item));
  std::printf("%s: %.0f bytes\n", name.c_str(), per_item);
  EXPECT_LT(per_item, bound) << name;
}

}  // namespace sluice::testutil
