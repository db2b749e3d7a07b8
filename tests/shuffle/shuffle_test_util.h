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
#include "testutil/leak_check.h"
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

// A producer and a consumer environment over loopback: partition "p0" of `channels`
// subpartitions on the producer, one gate reading every subpartition on the consumer. Start
// fails the test (and returns false) on any step; End closes the gate, releases the partition,
// stops both sides and checks every segment of both pools is back.
struct LoopbackShuffle {
  std::unique_ptr<ShuffleEnvironment> prod, cons;
  std::shared_ptr<ResultPartition> part;
  std::unique_ptr<InputGate> gate;

  bool Start(const EnvironmentConfig& prod_config, const EnvironmentConfig& cons_config,
             uint32_t channels, const std::string& gate_name) {
    prod = StartEnv(prod_config);
    cons = StartEnv(cons_config);
    if (!prod || !cons) return false;
    auto p = prod->CreatePartition("p0", channels);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return false;
    part = *p;
    std::vector<ChannelSpec> specs;
    for (uint32_t c = 0; c < channels; ++c) specs.push_back({"p0", c, prod->endpoint()});
    auto g = cons->CreateInputGate(gate_name, specs);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    if (!g.ok()) return false;
    gate = std::move(*g);
    return true;
  }
  void End() {
    if (gate) gate->Close();
    gate.reset();
    part.reset();
    if (prod) prod->ReleasePartition("p0");
    if (cons) cons->Stop();
    if (prod) prod->Stop();
    if (prod) testutil::ExpectAllSegmentsBack(*prod->pool(), "prod");
    if (cons) testutil::ExpectAllSegmentsBack(*cons->pool(), "cons");
  }
};

// Stamped, CRC-checked records (testutil/records.h).
using ::sluice::testutil::stamped::MakeRecord;
using ::sluice::testutil::stamped::ParsedRecord;
using ::sluice::testutil::stamped::ParseRecord;

}  // namespace sluice::shuffle::testing
