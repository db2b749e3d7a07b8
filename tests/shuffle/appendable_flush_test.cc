// The appendable flush end to end (issue 15): a producer flushing per record to a remote
// consumer that is not reading. Before, every record took its own buffer (a segment and a
// credit each), so such a producer stopped on backpressure after a few dozen records and a
// late one never caught up; now the records after credit ran out go into the flushed buffer
// the server has not taken yet. Exactly once and in order afterwards, the leak check on both
// environments. Label "concurrency" (TSan in CI).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "shuffle/record_reader.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "shuffle_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/wait.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using testing::MakeRecord;
using testing::ParseRecord;

constexpr uint64_t kRecords = 300;
constexpr uint32_t kPayload = 80;  // about 36 records per 4 KiB buffer

EnvironmentConfig Config(const std::string& name) {
  EnvironmentConfig c = testing::TestEnvironmentConfig(name, 8u << 20, 4096);
  c.options.buffer_timeout = 0ms;  // flush per record
  return c;
}

// Reads the gate to its end; returns the records of channel 0 in order (0 on a failure).
uint64_t ConsumeInOrder(InputGate* gate) {
  RecordReader reader(gate);
  uint64_t next = 0;
  while (true) {
    auto item = reader.Next(10s);
    if (!item.ok()) {
      ADD_FAILURE() << item.status().ToString();
      return 0;
    }
    if (item->kind == RecordReader::Kind::kEndOfInput) return next;
    if (item->kind == RecordReader::Kind::kTimeout) {
      ADD_FAILURE() << "consumer timed out after " << next << " records";
      return 0;
    }
    if (item->kind != RecordReader::Kind::kRecord) continue;
    const auto rec = ParseRecord(item->data.data(), item->data.size());
    EXPECT_TRUE(rec.valid) << "corrupt record " << next;
    EXPECT_EQ(rec.seq, next) << "lost, duplicated or reordered";
    next = rec.seq + 1;
  }
}

TEST(AppendableFlushTest, AProducerAheadOfAnIdleConsumerPacksItsRecords) {
  testing::LoopbackShuffle sh;
  ASSERT_TRUE(sh.Start(Config("prod"), Config("cons"), 1, "g0"));
  ResultPartition* part = sh.part.get();
  std::atomic<bool> produced{false};
  std::thread producer([&] {
    for (uint64_t i = 0; i < kRecords; ++i) {
      const Status s = part->Emit(MakeRecord(0, 0, i, kPayload), 0);
      if (!s.ok()) {
        ADD_FAILURE() << "emit " << i << ": " << s.ToString();
        return;
      }
    }
    EXPECT_TRUE(part->Finish().ok());
    produced = true;
  });
  // Nobody reads yet: the producer finishes within the consumer's buffers and its own output
  // pool only because its records share buffers.
  const bool finished_alone = testutil::PollUntil([&] { return produced.load(); }, 20s, 1ms);
  EXPECT_TRUE(finished_alone) << "the producer stopped on backpressure: a buffer per record";
  const uint64_t got = ConsumeInOrder(sh.gate.get());
  producer.join();
  EXPECT_EQ(got, kRecords);
  EXPECT_TRUE(sh.gate->IsFinished());
  const uint64_t buffers = sh.prod->server()->stats().buffers_out.load();
  // At most one buffer per credit the consumer had while it was idle (its 10 buffers), then
  // full ones: far fewer than a buffer per record.
  EXPECT_LE(buffers, 30u) << "data buffers sent for " << kRecords << " records";
  EXPECT_GE(buffers, kRecords * (kPayload + 24) / 4096);
  EXPECT_EQ(sh.prod->server()->metrics()->protocol_errors_total(), 0u);
  sh.End();
}

}  // namespace
}  // namespace sluice::shuffle
