// Helpers for the shuffle tests: environments for loopback tests, the test secret, and
// sequence-stamped records and their verification.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/crc32c.h"
#include "shuffle/shuffle_environment.h"
#include "testutil/records.h"

namespace sluice::shuffle::testing {

// The shared secret networking tests run with (authentication is on by default).
inline constexpr std::string_view kTestSecret = "sluice-test-secret-0123456789abcdef";
inline auth::AuthConfig TestAuth() { return auth::AuthConfig{std::string(kTestSecret), false}; }

// The environment of a loopback test: `memory` bytes of `segment`-byte segments, a 5 ms buffer
// timeout, 5 s request timeout, heartbeats every 200 ms, 10 s idle timeout, the test secret.
inline EnvironmentConfig TestEnvironmentConfig(const std::string& name, uint64_t memory,
                                               uint32_t segment) {
  using namespace std::chrono_literals;
  EnvironmentConfig c;
  c.node_name = name;
  c.memory.network_memory = memory;
  c.memory.segment_size = segment;
  c.options.buffer_timeout = 5ms;
  c.options.request_timeout = 5s;
  c.timeouts.heartbeat_interval = 200ms;
  c.timeouts.idle_timeout = 10s;
  c.auth = TestAuth();
  return c;
}

// Starts an environment; on failure the test fails with the reason and nullptr is returned.
inline std::unique_ptr<ShuffleEnvironment> StartEnv(const EnvironmentConfig& c) {
  auto env = ShuffleEnvironment::Start(c);
  EXPECT_TRUE(env.ok()) << env.status().ToString();
  return env.ok() ? std::move(*env) : nullptr;
}

// Stamped, CRC-checked records (testutil/records.h).
using ::sluice::testutil::stamped::MakeRecord;
using ::sluice::testutil::stamped::ParsedRecord;
using ::sluice::testutil::stamped::ParseRecord;

}  // namespace sluice::shuffle::testing
