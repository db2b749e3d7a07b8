// Test helper (not API): resident memory of this process, and the one rule for bounding its
// growth under attack: asserted in normal builds, reported only under a sanitizer.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "testutil/sanitizer.h"

namespace sluice::testutil {

// The growth a flood may cause (issue 11: "under 16 MiB").
inline constexpr uint64_t kRssBound = 16ull << 20;

// VmRSS of this process in bytes, from /proc/self/status; 0 if it cannot be read.
inline uint64_t VmRssBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Expects VmRSS to have grown by less than `bound` from `before` to `after` (a shrink counts as
// no growth). Not asserted under a sanitizer: shadow memory and the allocator's quarantine grow
// RSS with every allocation, freed or not; the growth is printed instead, and the structural
// checks of each test still run there.
inline void ExpectRssGrowthBounded(uint64_t before, uint64_t after, const std::string& what,
                                   uint64_t bound = kRssBound) {
  const uint64_t growth = after - std::min(after, before);
  if (kUnderSanitizer) {
    std::printf("VmRSS growth %s: %llu bytes (not checked under a sanitizer)\n", what.c_str(),
                static_cast<unsigned long long>(growth));
    return;
  }
  EXPECT_LT(growth, bound) << what << ": VmRSS grew from " << before << " to " << after;
}

}  // namespace sluice::testutil
