// A wide gate end to end over a real loopback connection: thousands of remote channels share a
// small floating budget (no exclusive buffers) and a wide partition runs in a small output pool.
// Every record arrives exactly once and in order per channel, every channel delivers its end of
// partition (none waits forever: the test has a deadline), and both pools get every segment back.
#include <malloc.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/input_gate.h"
#include "shuffle/record_reader.h"
#include "shuffle/result_partition.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "shuffle_test_util.h"
#include "testutil/leak_check.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;

EnvironmentConfig WideConfig(const std::string& name, uint32_t segments) {
  EnvironmentConfig c = testing::TestEnvironmentConfig(name, uint64_t{segments} * 4096, 4096);
  c.options.credit.wide_threshold = 256;
  c.options.credit.wide_gate_buffers = 16;
  c.options.credit.floating_per_gate = 0;
  return c;
}

TEST(WideShuffleTest, ThousandsOfChannelsFinishWithASmallBudget) {
  constexpr uint32_t kChannels = 3000;
  constexpr uint64_t kRecords = 12;  // per channel
  auto prod = testing::StartEnv(WideConfig("prod", 96));
  auto cons = testing::StartEnv(WideConfig("cons", 24));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", kChannels);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  EXPECT_EQ((*part)->pool().min_segments(), 16u);  // min(n + 1, wide_gate_buffers)
  std::vector<ChannelSpec> specs;
  for (uint32_t c = 0; c < kChannels; ++c) specs.push_back({"p0", c, prod->endpoint()});
  const size_t heap_before = mallinfo2().uordblks;
  auto gate = cons->CreateInputGate("wide", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  ASSERT_TRUE((*gate)->wide());
  EXPECT_EQ(cons->pool()->total_segments(), 24u);  // 16 for the gate: fits whatever the width
  std::thread producer([&] {
    for (uint64_t i = 0; i < kRecords; ++i) {
      for (uint32_t s = 0; s < kChannels; ++s) {
        auto r = testing::MakeRecord(0, s, i, static_cast<uint32_t>((s * 31 + i * 7) % 200));
        Status st = (*part)->Emit(r, s);
        if (!st.ok()) {
          ADD_FAILURE() << "emit: " << st.ToString();
          return;
        }
      }
    }
    Status st = (*part)->Finish();
    EXPECT_TRUE(st.ok()) << st.ToString();
  });
  RecordReader reader(gate->get());
  std::vector<uint64_t> next(kChannels, 0);
  size_t heap_peak = 0;
  uint64_t records = 0;
  const auto deadline = std::chrono::steady_clock::now() + 90s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto item = reader.Next(10s);
    ASSERT_TRUE(item.ok()) << item.status().ToString();
    if (item->kind == RecordReader::Kind::kEndOfInput) break;
    ASSERT_NE(item->kind, RecordReader::Kind::kTimeout) << "no channel made progress for 10 s";
    if (item->kind != RecordReader::Kind::kRecord) continue;
    auto rec = testing::ParseRecord(item->data.data(), item->data.size());
    ASSERT_TRUE(rec.valid) << "corrupt record on channel " << item->channel;
    ASSERT_EQ(rec.subpartition, item->channel);
    ASSERT_EQ(rec.seq, next[item->channel]) << "channel " << item->channel;
    ++next[item->channel];
    if (++records % 4096 == 0) heap_peak = std::max<size_t>(heap_peak, mallinfo2().uordblks);
  }
  producer.join();
  for (uint32_t c = 0; c < kChannels; ++c) ASSERT_EQ(next[c], kRecords) << "channel " << c;
  EXPECT_TRUE((*gate)->IsFinished());
  // Heap of both sides of every channel in this process (client, server, gate, reader).
  std::printf("heap per channel during the shuffle (both sides): %.0f bytes\n",
              (static_cast<double>(heap_peak) - heap_before) / kChannels);
  EXPECT_EQ((*gate)->Stats().floating_pool.lent, 0u);
  EXPECT_EQ(prod->server()->metrics()->protocol_errors_total(), 0u);
  EXPECT_EQ(cons->client().metrics()->protocol_errors_total(), 0u);
  (*gate)->Close();
  gate->reset();
  part->reset();
  prod->ReleasePartition("p0");
  cons->Stop();
  prod->Stop();
  testutil::ExpectAllSegmentsBack(*prod->pool(), "prod");
  testutil::ExpectAllSegmentsBack(*cons->pool(), "cons");
}

}  // namespace
}  // namespace sluice::shuffle
