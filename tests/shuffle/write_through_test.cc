// Write-through end to end: producers flush to an idle connection and their buffers go out on
// their own threads (Connection::SendFromAnyThread), racing the loop's own writes (AddCredit
// answers, backlog, heartbeats) and connection cuts. Exactly once, in order per channel, and
// the leak check on both environments after every scenario. Label "concurrency" (TSan in CI).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <thread>

#include "shuffle/record_reader.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "shuffle_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/sanitizer.h"
#include "testutil/wait.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using testing::MakeRecord;
using testing::ParseRecord;
using testing::StartEnv;

EnvironmentConfig Config(const std::string& name) {
  EnvironmentConfig c = testing::TestEnvironmentConfig(name, 8u << 20, 4096);
  c.options.buffer_timeout = 0ms;  // flush per record: every record is a notification
  return c;
}

void Produce(ResultPartition* p, uint32_t producer, uint64_t records, uint32_t seed) {
  std::mt19937 rng(seed);
  for (uint64_t i = 0; i < records; ++i) {
    for (uint32_t s = 0; s < p->num_subpartitions(); ++s) {
      Status st = p->Emit(MakeRecord(producer, s, i, rng() % 200), s);
      if (!st.ok()) {
        ADD_FAILURE() << "emit: " << st.ToString();
        return;
      }
    }
    // A short pause now and then leaves the connection idle: direct writes surely happen.
    if (i % 16 == 0) std::this_thread::sleep_for(20us);
  }
  Status st = p->Finish();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// Reads `gate` to its end; every record of channel c comes from producer c, in order.
std::map<uint32_t, uint64_t> Consume(InputGate* gate, uint32_t subpartition,
                                     std::chrono::milliseconds pause_every_100 = 0ms) {
  RecordReader reader(gate);
  std::map<uint32_t, uint64_t> next;
  uint64_t n = 0;
  while (true) {
    auto item = reader.Next(10s);
    if (!item.ok()) {
      ADD_FAILURE() << item.status().ToString();
      break;
    }
    if (item->kind == RecordReader::Kind::kEndOfInput) break;
    if (item->kind == RecordReader::Kind::kTimeout) {
      ADD_FAILURE() << "consumer timed out";
      break;
    }
    if (item->kind != RecordReader::Kind::kRecord) continue;
    auto rec = ParseRecord(item->data.data(), item->data.size());
    EXPECT_TRUE(rec.valid) << "corrupt record on channel " << item->channel;
    EXPECT_EQ(rec.producer, item->channel);
    EXPECT_EQ(rec.subpartition, subpartition);
    EXPECT_EQ(rec.seq, next[item->channel]) << "channel " << item->channel;
    next[item->channel] = rec.seq + 1;
    if (pause_every_100.count() > 0 && ++n % 100 == 0) std::this_thread::sleep_for(pause_every_100);
  }
  return next;
}

void ExpectNoLeak(ShuffleEnvironment* env) {
  testutil::ExpectAllSegmentsBack(*env->pool(), env->config().node_name);
}

// The end of every scenario: both environments stop, then the leak check on each.
void StopAndExpectNoLeak(ShuffleEnvironment* prod, ShuffleEnvironment* cons) {
  cons->Stop();
  prod->Stop();
  ExpectNoLeak(prod);
  ExpectNoLeak(cons);
}

struct Outcome {
  uint64_t direct_writes = 0;
  uint64_t direct_read_frames = 0;  // AddCredits the producers read off the connection
  uint64_t items_out = 0;  // data buffers and events the server sent
};

// `producers` partitions of `consumers` subpartitions each, all to all over one connection.
Outcome RunShuffle(uint32_t producers, uint32_t consumers, uint64_t records,
                   const EnvironmentConfig& prod_cfg, const EnvironmentConfig& cons_cfg,
                   std::chrono::milliseconds consumer_pause = 0ms) {
  Outcome out;
  auto prod = StartEnv(prod_cfg);
  auto cons = StartEnv(cons_cfg);
  if (!prod || !cons) return out;
  std::vector<std::shared_ptr<ResultPartition>> parts;
  for (uint32_t p = 0; p < producers; ++p) {
    parts.push_back(*prod->CreatePartition("p" + std::to_string(p), consumers));
  }
  std::vector<std::unique_ptr<InputGate>> gates;
  for (uint32_t c = 0; c < consumers; ++c) {
    std::vector<ChannelSpec> specs;
    for (uint32_t p = 0; p < producers; ++p) {
      specs.push_back({"p" + std::to_string(p), c, prod->endpoint()});
    }
    auto gate = cons->CreateInputGate("g" + std::to_string(c), specs);
    EXPECT_TRUE(gate.ok()) << gate.status().ToString();
    if (!gate.ok()) return out;
    gates.push_back(std::move(*gate));
  }
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] { Produce(parts[p].get(), p, records, 11 + p); });
  }
  std::vector<std::map<uint32_t, uint64_t>> got(consumers);
  for (uint32_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] { got[c] = Consume(gates[c].get(), c, consumer_pause); });
  }
  for (auto& t : threads) t.join();
  for (uint32_t c = 0; c < consumers; ++c) {
    for (uint32_t p = 0; p < producers; ++p) EXPECT_EQ(got[c][p], records) << "gate " << c;
    EXPECT_TRUE(gates[c]->IsFinished());
    gates[c]->Close();
  }
  EXPECT_EQ(prod->server()->metrics()->protocol_errors_total(), 0u);
  EXPECT_EQ(cons->client().metrics()->protocol_errors_total(), 0u);
  out.direct_writes = prod->server()->metrics()->direct_writes.load();
  out.direct_read_frames = prod->server()->metrics()->direct_read_frames.load();
  out.items_out = prod->server()->stats().buffers_out.load() +
                  prod->server()->stats().events_out.load();
  std::printf("direct writes: %llu of %llu buffers and events; %llu AddCredits read through\n",
              static_cast<unsigned long long>(out.direct_writes),
              static_cast<unsigned long long>(out.items_out),
              static_cast<unsigned long long>(out.direct_read_frames));
  for (uint32_t p = 0; p < producers; ++p) prod->ReleasePartition("p" + std::to_string(p));
  StopAndExpectNoLeak(prod.get(), cons.get());
  return out;
}

// Whether a producer finds the connection idle is a race it may lose every time under a
// sanitizer on a loaded machine. Runs the shuffle up to `runs` times (each one checked
// exactly once, in order, leak-free by RunShuffle) and returns the first run in which both
// the producers and the loop wrote, or the last run.
Outcome RunUntilBothWriters(int runs, uint32_t producers, uint32_t consumers, uint64_t records,
                            const EnvironmentConfig& prod_cfg,
                            const EnvironmentConfig& cons_cfg) {
  Outcome o;
  for (int run = 0; run < runs && !::testing::Test::HasFailure(); ++run) {
    o = RunShuffle(producers, consumers, records, prod_cfg, cons_cfg);
    if (o.direct_writes > 0 && o.direct_writes < o.items_out) break;
  }
  return o;
}

TEST(WriteThroughTest, FlushPerRecordIsWrittenOnTheProducerThread) {
  const Outcome o = RunUntilBothWriters(5, 1, 1, 2000, Config("prod"), Config("cons"));
  // Each flushed buffer is one frame. An unpaced producer keeps its connection busy, so only
  // some go out directly (an idle moment); the rest go through the loop. PacedFlushesGoDirect
  // checks that most do when the connection is idle.
  EXPECT_GT(o.direct_writes, 0u);
  EXPECT_LE(o.direct_writes, o.items_out);
}

// Read-through end to end: producers flushing per record into one consumer run out of credit
// now and then and read the AddCredits waiting on their connection themselves, while the loop
// reads the rest. Exactly once, in order, leak-free (RunShuffle), and credit was read on the
// producers' threads in at least one of up to five runs (a race the loop may win every time
// under a sanitizer).
TEST(WriteThroughTest, ProducersOutOfCreditReadTheirCreditThemselves) {
  auto p = Config("prod");
  auto c = Config("cons");
  p.options.checksums = c.options.checksums = true;
  Outcome o;
  for (int run = 0; run < 5 && !::testing::Test::HasFailure(); ++run) {
    o = RunShuffle(3, 1, 3000, p, c);
    if (o.direct_read_frames > 0) break;
  }
  EXPECT_GT(o.direct_read_frames, 0u);
  EXPECT_GT(o.direct_writes, 0u);
}

TEST(WriteThroughTest, FaultShimKeepsEveryWriteOnTheLoop) {
  auto p = Config("prod");
  p.options.faults.delay_ms = 1;  // the shim's delay line must see every frame
  const Outcome o = RunShuffle(1, 2, 500, p, Config("cons"));
  EXPECT_EQ(o.direct_writes, 0u);
  EXPECT_EQ(o.direct_read_frames, 0u);
  EXPECT_GT(o.items_out, 0u);
}

// Four producers flush per record into two consumers over one connection, with checksums on:
// the producers' direct writes race the loop's WriteMore (AddCredit answers, a busy
// connection). Then with slow consumers (1 ms every 100 records): credit runs out and comes
// back, and a producer ahead of its reader appends to the flushed buffer the server has not
// taken (the appendable flush), so few buffers leave and direct writes are rare there: that
// run asserts exactly once and in order (RunShuffle) and that records shared buffers.
TEST(WriteThroughTest, DirectWritesRaceLoopWritesExactlyOnceInOrder) {
  auto p = Config("prod");
  auto c = Config("cons");
  p.options.checksums = c.options.checksums = true;
  const Outcome o = RunUntilBothWriters(5, 4, 2, 3000, p, c);
  EXPECT_GT(o.direct_writes, 0u);
  // Some items went through the loop: both writers were used.
  EXPECT_LT(o.direct_writes, o.items_out);
  const Outcome slow = RunShuffle(4, 2, 3000, p, c, /*consumer_pause=*/1ms);
  EXPECT_GT(slow.items_out, 0u);
  EXPECT_LT(slow.items_out, 4u * 2u * 3000u) << "records of a late producer share buffers";
}

// The connection is cut (on the loop) while a producer writes to it directly: the consumer
// gets an error naming the producer, nothing crashes, every segment comes back, and the
// server goes on serving a new consumer.
TEST(WriteThroughTest, ConnectionCutDuringDirectWrites) {
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    for (uint64_t i = 0; !stop.load(); ++i) {
      if (!(*part)->Emit(MakeRecord(0, 0, i, 64), 0).ok()) break;
      // Short pauses leave the connection idle now and then: direct writes happen.
      if (i % 4 == 0) std::this_thread::sleep_for(20us);
    }
  });
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("victim", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  auto reader = std::make_unique<RecordReader>(gate->get());
  // Read until some buffers went out directly (and at least 500 records).
  const auto read_until = std::chrono::steady_clock::now() + 20s;
  for (int i = 0; i < 500 || prod->server()->metrics()->direct_writes.load() == 0; ++i) {
    ASSERT_LT(std::chrono::steady_clock::now(), read_until) << "no direct write in 20 s";
    auto item = reader->Next(5s);
    ASSERT_TRUE(item.ok()) << item.status().ToString();
    ASSERT_EQ(item->kind, RecordReader::Kind::kRecord);
  }
  EXPECT_EQ(prod->server()->CutDataConnections("test: cut during direct writes"), 1u);
  Status error;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto item = reader->Next(1s);
    if (!item.ok()) {
      error = item.status();
      break;
    }
    ASSERT_NE(item->kind, RecordReader::Kind::kEndOfInput) << "end of partition was faked";
  }
  ASSERT_FALSE(error.ok()) << "no error within 10 s of the cut";
  EXPECT_NE(error.message().find(prod->endpoint().ToString()), std::string::npos)
      << error.message();
  stop.store(true);
  producer.join();
  reader.reset();
  (*gate)->Close();
  // The server keeps serving: a second partition to a new gate, exactly once.
  auto part2 = prod->CreatePartition("p1", 1);
  ASSERT_TRUE(part2.ok()) << part2.status().ToString();
  std::thread producer2([&] { Produce(part2->get(), 0, 300, 5); });
  std::vector<ChannelSpec> specs2 = {{"p1", 0, prod->endpoint()}};
  auto gate2 = cons->CreateInputGate("after", specs2);
  ASSERT_TRUE(gate2.ok()) << gate2.status().ToString();
  auto got = Consume(gate2->get(), 0);
  producer2.join();
  EXPECT_EQ(got[0], 300u);
  (*gate2)->Close();
  prod->ReleasePartition("p0");
  prod->ReleasePartition("p1");
  StopAndExpectNoLeak(prod.get(), cons.get());
}

// A provider (the external store's place in the registry) that refuses every view with a long
// message: the server's handler answers each refusal with an ErrorResponse on the loop. Every
// other request is refused as a hostile peer's would be, for a wrong access proof.
class RefusingProvider final : public SubpartitionViewProvider {
 public:
  Result<std::unique_ptr<SubpartitionView>> CreateView(const std::string& partition_id,
                                                       uint32_t, std::span<const uint8_t>,
                                                       SubpartitionListener*) override {
    const std::string why = "provider refuses " + partition_id + ": " + std::string(600, 'x');
    if (calls.fetch_add(1) % 2 == 1) return Status(StatusCode::kPermissionDenied, why + " (wrong access proof)");
    return IoError(why);
  }
  std::atomic<uint64_t> calls{0};
};

// Refused provider requests (half of them a hostile peer's, with wrong access proofs) are
// answered on the loop while a producer writes its flushed buffers through on the same
// connection. The loop's answer must not use the builder the
// producer's BufferResponses are built in (it is the queue's, under the queue's mutex): under
// ThreadSanitizer (label concurrency) that was a data race, and in a plain build a frame could
// carry the other message's fields. Every refused gate fails naming the provider's message,
// the pipelined channel gets every record once and in order, and the leak check passes.
TEST(WriteThroughTest, ProviderRefusalsOnTheLoopRaceDirectWrites) {
  RefusingProvider provider;  // outlives both environments
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  prod->registry().SetViewProvider("ext/", &provider);
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("data", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  // Paced (a record every 200 us, flush per record): the connection is idle at almost every
  // flush, so the producer builds and writes its BufferResponses on its own thread.
  std::atomic<bool> refusals_done{false};
  uint64_t records = 0;
  std::thread producer([&] {
    for (; records < 500 || !refusals_done.load(); ++records) {
      Status st = (*part)->Emit(MakeRecord(0, 0, records, 64), 0);
      ASSERT_TRUE(st.ok()) << st.ToString();
      std::this_thread::sleep_for(200us);
    }
    ASSERT_TRUE((*part)->Finish().ok());
  });
  std::thread refused([&] {
    for (int i = 0; i < 100; ++i) {
      std::vector<ChannelSpec> bad = {{"ext/r" + std::to_string(i), 0, prod->endpoint()}};
      auto g = cons->CreateInputGate("refused" + std::to_string(i), bad);
      ASSERT_TRUE(g.ok()) << g.status().ToString();
      RecordReader reader(g->get());
      auto item = reader.Next(10s);
      ASSERT_FALSE(item.ok()) << "a refused view delivered something";
      EXPECT_NE(item.status().message().find("provider refuses ext/r" + std::to_string(i)),
                std::string::npos)
          << item.status().ToString();
      (*g)->Close();
    }
    refusals_done.store(true);
  });
  auto got = Consume(gate->get(), 0);
  producer.join();
  refused.join();
  EXPECT_EQ(got[0], records);
  EXPECT_EQ(provider.calls.load(), 100u);
  // The wrong proofs were counted as authentication failures, one each, nothing else was.
  EXPECT_EQ(prod->server()->stats().auth_failures.load(), 50u);
  std::printf("refusals: %llu; direct writes: %llu\n",
              static_cast<unsigned long long>(provider.calls.load()),
              static_cast<unsigned long long>(prod->server()->metrics()->direct_writes.load()));
  (*gate)->Close();
  prod->ReleasePartition("p0");
  StopAndExpectNoLeak(prod.get(), cons.get());
}

// A paced producer (a record every 200 us, flush per record) finds the connection idle almost
// every time: nearly every buffer is written on its thread.
TEST(WriteThroughTest, PacedFlushesGoDirect) {
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("paced", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  constexpr uint64_t kRecords = 500;
  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  std::thread producer([&] {
    for (uint64_t i = 0; i < kRecords; ++i) {
      ASSERT_TRUE((*part)->Emit(MakeRecord(0, 0, i, 64), 0).ok());
      std::this_thread::sleep_for(200us);
    }
    ASSERT_TRUE((*part)->Finish().ok());
  });
  auto got = Consume(gate->get(), 0);
  producer.join();
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  std::printf("paced: %.2f voluntary context switches per record\n",
              static_cast<double>(after.ru_nvcsw - before.ru_nvcsw) / kRecords);
  EXPECT_EQ(got[0], kRecords);
  const uint64_t direct = prod->server()->metrics()->direct_writes.load();
  const uint64_t posted = prod->server()->stats().notifications_posted.load();
  std::printf("paced: direct writes %llu of %llu; %.2f notifications posted to the loop per "
              "record\n",
              static_cast<unsigned long long>(direct),
              static_cast<unsigned long long>(prod->server()->stats().buffers_out.load()),
              static_cast<double>(posted) / kRecords);
  EXPECT_GT(direct, 0u);
  // Nearly every flush finds the connection idle and writes it on this thread (a sanitizer's
  // slowdown may let the loop's own writes overlap more often).
  if (!testutil::kUnderSanitizer) {
    EXPECT_GE(direct, kRecords / 2);
  }
  // Most flushes need no wake-up of the server's loop (OFF: about one post per record).
  EXPECT_LT(posted, kRecords / 2);
  (*gate)->Close();
  prod->ReleasePartition("p0");
  StopAndExpectNoLeak(prod.get(), cons.get());
}

}  // namespace
}  // namespace sluice::shuffle
