// A wide gate end to end over a real loopback connection: thousands of remote channels share a
// small floating budget (no exclusive buffers) and a wide partition runs in a small output pool.
// Every record arrives exactly once and in order per channel, every channel delivers its end of
// partition (none waits forever: the test has a deadline), and both pools get every segment back.
#include <malloc.h>

#include <gtest/gtest.h>

#include <atomic>
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
#include "testutil/watchdog.h"

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

// What a wide gate's channels are doing, for a watchdog's report.
std::string DescribeGate(InputGate* gate) {
  if (gate == nullptr) return "no gate yet";
  const InputGateStats s = gate->Stats();
  uint32_t queued = 0, available = 0, floating = 0, backlog = 0, unannounced = 0, failed = 0;
  for (const ChannelState& c : gate->ChannelStates()) {
    queued += c.queued > 0;
    available += c.available > 0;
    floating += c.floating > 0;
    backlog += c.sender_backlog > 0;
    unannounced += c.unannounced_credit != 0;
    failed += !c.error.empty();
  }
  char out[512];
  std::snprintf(out, sizeof(out),
                "gate: %llu buffers in, %u of %u channels finished, floating pool %u lent; "
                "channels with queued buffers %u, empty buffers %u, floating %u, sender "
                "backlog %u, unannounced credit %u, an error %u",
                static_cast<unsigned long long>(s.buffers_in), s.finished_channels, s.channels,
                s.floating_pool.lent, queued, available, floating, backlog, unannounced, failed);
  return out;
}

TEST(WideShuffleTest, ThousandsOfChannelsFinishWithASmallBudget) {
  constexpr uint32_t kChannels = 3000;
  constexpr uint64_t kRecords = 12;  // per channel
  // Once (1 in ~50 runs under TSan) this test hung with nothing printed: a hang now reports its
  // stage and the gate's state. Normal runs take 1 s (6 s under TSan).
  std::atomic<InputGate*> watched{nullptr};
  std::atomic<uint64_t> emitted{0}, received{0};
  testutil::Watchdog watchdog("WideShuffleTest.ThousandsOfChannels", 200s, [&] {
    return "emitted " + std::to_string(emitted.load()) + ", received " +
           std::to_string(received.load()) + "; " + DescribeGate(watched.load());
  });
  auto prod = testing::StartEnv(WideConfig("prod", 96));
  auto cons = testing::StartEnv(WideConfig("cons", 24));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", kChannels);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  EXPECT_EQ((*part)->pool().min_segments(), 16u);  // min(n + 1, wide_gate_buffers)
  std::vector<ChannelSpec> specs;
  for (uint32_t c = 0; c < kChannels; ++c) specs.push_back({"p0", c, prod->endpoint()});
  const size_t heap_before = mallinfo2().uordblks;
  watchdog.Stage("creating the gate");
  auto gate = cons->CreateInputGate("wide", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  ASSERT_TRUE((*gate)->wide());
  watched = gate->get();
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
        emitted.fetch_add(1, std::memory_order_relaxed);
      }
    }
    Status st = (*part)->Finish();
    EXPECT_TRUE(st.ok()) << st.ToString();
  });
  RecordReader reader(gate->get());
  std::vector<uint64_t> next(kChannels, 0);
  size_t heap_peak = 0;
  watchdog.Stage("reading");
  const auto deadline = std::chrono::steady_clock::now() + 90s;
  bool ended = false;
  while (std::chrono::steady_clock::now() < deadline) {
    auto item = reader.Next(10s);
    ASSERT_TRUE(item.ok()) << item.status().ToString();
    if (item->kind == RecordReader::Kind::kEndOfInput) {
      ended = true;
      break;
    }
    ASSERT_NE(item->kind, RecordReader::Kind::kTimeout) << "no channel made progress for 10 s";
    if (item->kind != RecordReader::Kind::kRecord) continue;
    auto rec = testing::ParseRecord(item->data.data(), item->data.size());
    ASSERT_TRUE(rec.valid) << "corrupt record on channel " << item->channel;
    ASSERT_EQ(rec.subpartition, item->channel);
    ASSERT_EQ(rec.seq, next[item->channel]) << "channel " << item->channel;
    ++next[item->channel];
    const uint64_t records = received.fetch_add(1, std::memory_order_relaxed) + 1;
    if (records % 4096 == 0) heap_peak = std::max<size_t>(heap_peak, mallinfo2().uordblks);
  }
  EXPECT_TRUE(ended) << "no end of input within 90 s: " << received << " records read; "
                     << DescribeGate(gate->get());
  watchdog.Stage("joining the producer");
  producer.join();
  for (uint32_t c = 0; c < kChannels; ++c) ASSERT_EQ(next[c], kRecords) << "channel " << c;
  EXPECT_TRUE((*gate)->IsFinished());
  // Heap of both sides of every channel in this process (client, server, gate, reader).
  std::printf("heap per channel during the shuffle (both sides): %.0f bytes\n",
              (static_cast<double>(heap_peak) - heap_before) / kChannels);
  EXPECT_EQ((*gate)->Stats().floating_pool.lent, 0u);
  EXPECT_EQ(prod->server()->metrics()->protocol_errors_total(), 0u);
  EXPECT_EQ(cons->client().metrics()->protocol_errors_total(), 0u);
  watchdog.Stage("closing and stopping");
  watched = nullptr;
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
