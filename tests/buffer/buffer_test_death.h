// Death-test support for the buffer suites (not API).
#pragma once

#include <gtest/gtest.h>

#include "pool_test_util.h"

namespace sluice::buffer::test_util {

// "threadsafe" re-executes the test binary for each death test instead of forking a process
// that may have other threads running. It is the style that works once a test started a
// thread, and under ASan and TSan (checked with both).
class DeathTestFixture : public PoolTest {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

}  // namespace sluice::buffer::test_util
