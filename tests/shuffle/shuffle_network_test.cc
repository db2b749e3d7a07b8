// End-to-end shuffles over local channels and real loopback sockets: producers emit
// sequence-stamped records, consumers verify every record arrived exactly once and in order per
// channel, and every test ends with the leak check on every environment's pool.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "shuffle/record_reader.h"
#include "shuffle/remote_input_channel.h"
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

using testing::StartEnv;

EnvironmentConfig Config(const std::string& name, uint64_t memory = 8u << 20,
                         uint32_t segment = 4096) {
  return testing::TestEnvironmentConfig(name, memory, segment);
}

// Writes `records` records to every subpartition of `p` (record i of subpartition s carries
// seq i), then finishes.
void Produce(ResultPartition* p, uint32_t producer, uint64_t records, uint32_t max_payload,
             uint32_t seed) {
  std::mt19937 rng(seed);
  for (uint64_t i = 0; i < records; ++i) {
    for (uint32_t s = 0; s < p->num_subpartitions(); ++s) {
      auto r = MakeRecord(producer, s, i, rng() % (max_payload + 1));
      Status st = p->Emit(r, s);
      if (!st.ok()) {
        ADD_FAILURE() << "emit: " << st.ToString();
        return;
      }
    }
  }
  Status st = p->Finish();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// Reads the gate to its end; checks per channel order; returns records per channel.
std::map<uint32_t, uint64_t> Consume(InputGate* gate, const std::vector<ChannelSpec>& specs,
                                     uint32_t producer_of_partition(const std::string&),
                                     std::chrono::milliseconds pause_every = 0ms) {
  RecordReader reader(gate);
  std::map<uint32_t, uint64_t> next;  // channel -> expected seq
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
    const ChannelSpec& spec = specs[item->channel];
    EXPECT_TRUE(rec.valid) << "corrupt record on channel " << item->channel;
    EXPECT_EQ(rec.producer, producer_of_partition(spec.partition_id));
    EXPECT_EQ(rec.subpartition, spec.subpartition);
    EXPECT_EQ(rec.seq, next[item->channel]) << "channel " << item->channel;
    next[item->channel] = rec.seq + 1;
    if (pause_every.count() > 0 && ++n % 1000 == 0) std::this_thread::sleep_for(pause_every);
  }
  return next;
}

uint32_t ProducerOf(const std::string& id) { return static_cast<uint32_t>(std::stoul(id.substr(1))); }

void ExpectNoLeak(ShuffleEnvironment* env) {
  testutil::ExpectAllSegmentsBack(*env->pool(), env->config().node_name);
}

// Releases the producer's partitions, stops both environments and runs the leak check on both.
void StopAndCheck(ShuffleEnvironment* prod, ShuffleEnvironment* cons,
                  const std::vector<std::string>& partitions) {
  for (const std::string& id : partitions) prod->ReleasePartition(id);
  cons->Stop();
  prod->Stop();
  ExpectNoLeak(prod);
  ExpectNoLeak(cons);
}

TEST(ShuffleNetworkTest, LocalChannelsExactlyOnceInOrder) {
  auto env = StartEnv(Config("local"));
  ASSERT_TRUE(env);
  std::vector<std::shared_ptr<ResultPartition>> parts;
  for (uint32_t p = 0; p < 2; ++p) parts.push_back(*env->CreatePartition("p" + std::to_string(p), 3));
  std::vector<ChannelSpec> specs;
  for (uint32_t p = 0; p < 2; ++p) specs.push_back({"p" + std::to_string(p), 1, std::nullopt});
  auto gate = env->CreateInputGate("g", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  std::vector<std::thread> producers;
  for (uint32_t p = 0; p < 2; ++p) {
    producers.emplace_back([&, p] { Produce(parts[p].get(), p, 20000, 300, p); });
  }
  // Other subpartitions (0 and 2) go to a second gate, read concurrently, so that no
  // subpartition's cap blocks the producers.
  std::vector<ChannelSpec> drain_specs;
  for (uint32_t p = 0; p < 2; ++p) {
    for (uint32_t s : {0u, 2u}) drain_specs.push_back({"p" + std::to_string(p), s, std::nullopt});
  }
  auto drain = env->CreateInputGate("drain", drain_specs);
  ASSERT_TRUE(drain.ok()) << drain.status().ToString();
  std::map<uint32_t, uint64_t> drained;
  std::thread drainer([&] { drained = Consume(drain->get(), drain_specs, ProducerOf); });
  auto got = Consume(gate->get(), specs, ProducerOf);
  for (auto& t : producers) t.join();
  drainer.join();
  EXPECT_EQ(got[0], 20000u);
  EXPECT_EQ(got[1], 20000u);
  for (uint32_t c = 0; c < 4; ++c) EXPECT_EQ(drained[c], 20000u);
  EXPECT_TRUE((*gate)->IsFinished());
  (*gate)->Close();
  (*drain)->Close();
  for (uint32_t p = 0; p < 2; ++p) env->ReleasePartition("p" + std::to_string(p));
  ExpectNoLeak(env.get());
}

// M producer partitions in one environment, N consumer gates in another, all-to-all over one
// loopback connection.
void RunRemoteShuffle(uint32_t producers, uint32_t consumers, uint64_t records,
                      uint32_t max_payload, EnvironmentConfig prod_cfg, EnvironmentConfig cons_cfg) {
  auto prod = StartEnv(prod_cfg);
  auto cons = StartEnv(cons_cfg);
  ASSERT_TRUE(prod && cons);
  std::vector<std::shared_ptr<ResultPartition>> parts;
  for (uint32_t p = 0; p < producers; ++p) {
    auto part = prod->CreatePartition("p" + std::to_string(p), consumers);
    ASSERT_TRUE(part.ok()) << part.status().ToString();
    parts.push_back(*part);
  }
  std::vector<std::unique_ptr<InputGate>> gates;
  std::vector<std::vector<ChannelSpec>> specs(consumers);
  for (uint32_t c = 0; c < consumers; ++c) {
    for (uint32_t p = 0; p < producers; ++p) {
      specs[c].push_back({"p" + std::to_string(p), c, prod->endpoint()});
    }
    auto gate = cons->CreateInputGate("g" + std::to_string(c), specs[c]);
    ASSERT_TRUE(gate.ok()) << gate.status().ToString();
    gates.push_back(std::move(*gate));
  }
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] { Produce(parts[p].get(), p, records, max_payload, 7 + p); });
  }
  std::vector<std::map<uint32_t, uint64_t>> got(consumers);
  for (uint32_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] { got[c] = Consume(gates[c].get(), specs[c], ProducerOf); });
  }
  for (auto& t : threads) t.join();
  for (uint32_t c = 0; c < consumers; ++c) {
    for (uint32_t p = 0; p < producers; ++p) EXPECT_EQ(got[c][p], records) << "gate " << c;
    EXPECT_TRUE(gates[c]->IsFinished());
    gates[c]->Close();
  }
  EXPECT_EQ(prod->server()->metrics()->protocol_errors_total(), 0u);
  EXPECT_EQ(cons->client().metrics()->protocol_errors_total(), 0u);
  EXPECT_GE(prod->server()->stats().buffers_out.load(), 1u);
  std::vector<std::string> ids;
  for (uint32_t p = 0; p < producers; ++p) ids.push_back("p" + std::to_string(p));
  StopAndCheck(prod.get(), cons.get(), ids);
}

TEST(ShuffleNetworkTest, RemoteAllToAllExactlyOnceInOrder) {
  RunRemoteShuffle(3, 4, 5000, 200, Config("prod"), Config("cons"));
}

TEST(ShuffleNetworkTest, RemoteRecordsLargerThanSegmentsWithChecksums) {
  auto p = Config("prod");
  auto c = Config("cons");
  p.options.checksums = c.options.checksums = true;
  RunRemoteShuffle(2, 2, 300, 3 * 4096, p, c);
}

TEST(ShuffleNetworkTest, ZeroExclusiveBuffersUseFloatingCredit) {
  auto p = Config("prod");
  auto c = Config("cons");
  p.options.credit.buffers_per_channel = c.options.credit.buffers_per_channel = 0;
  RunRemoteShuffle(2, 2, 3000, 200, p, c);
}

TEST(ShuffleNetworkTest, FlushEveryRecordAndNoTimeout) {
  auto p = Config("prod");
  auto c = Config("cons");
  p.options.buffer_timeout = 0ms;
  RunRemoteShuffle(1, 2, 2000, 50, p, c);
  p.options.buffer_timeout = kBufferTimeoutOff;
  RunRemoteShuffle(1, 2, 2000, 50, p, c);
}

TEST(ShuffleNetworkTest, ThousandChannelsOverOneConnection) {
  auto p = Config("prod", 32u << 20);
  auto c = Config("cons", 32u << 20);
  p.options.buffer_timeout = kBufferTimeoutOff;  // Finish flushes
  auto prod = StartEnv(p);
  auto cons = StartEnv(c);
  ASSERT_TRUE(prod && cons);
  constexpr uint32_t kChannels = 1000;
  auto part = prod->CreatePartition("p0", kChannels);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  std::vector<ChannelSpec> specs;
  for (uint32_t s = 0; s < kChannels; ++s) specs.push_back({"p0", s, prod->endpoint()});
  auto gate = cons->CreateInputGate("wide", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  std::thread producer([&] { Produce(part->get(), 0, 20, 100, 1); });
  auto got = Consume(gate->get(), specs, ProducerOf);
  producer.join();
  for (uint32_t s = 0; s < kChannels; ++s) ASSERT_EQ(got[s], 20u) << "channel " << s;
  EXPECT_EQ(cons->client().connection_count(), 1u);
  (*gate)->Close();
  StopAndCheck(prod.get(), cons.get(), {"p0"});
}

TEST(ShuffleNetworkTest, PartitionRegisteredLateIsFoundByRetries) {
  auto p = Config("prod");
  p.options.server_park_timeout = 50ms;
  auto c = Config("cons");
  c.options.request_backoff_initial = 50ms;
  auto prod = StartEnv(p);
  auto cons = StartEnv(c);
  ASSERT_TRUE(prod && cons);
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("late", specs);
  ASSERT_TRUE(gate.ok());
  std::this_thread::sleep_for(400ms);  // several PartitionNotFound round trips
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok());
  std::thread producer([&] { Produce(part->get(), 0, 1000, 100, 3); });
  auto got = Consume(gate->get(), specs, ProducerOf);
  producer.join();
  EXPECT_EQ(got[0], 1000u);
  EXPECT_GE(prod->server()->stats().requests_not_found.load(), 1u);
  (*gate)->Close();
  StopAndCheck(prod.get(), cons.get(), {"p0"});
}

TEST(ShuffleNetworkTest, PartitionThatNeverAppearsFailsTheChannel) {
  auto p = Config("prod");
  p.options.server_park_timeout = 20ms;
  auto c = Config("cons");
  c.options.request_backoff_initial = 20ms;
  c.options.request_timeout = 300ms;
  auto prod = StartEnv(p);
  auto cons = StartEnv(c);
  ASSERT_TRUE(prod && cons);
  auto gate = cons->CreateInputGate("missing", {{"nope", 0, prod->endpoint()}});
  ASSERT_TRUE(gate.ok());
  auto next = (*gate)->GetNext(5s);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kNotFound);
  EXPECT_NE(next.status().message().find("nope"), std::string::npos) << next.status().message();
  (*gate)->Close();
  StopAndCheck(prod.get(), cons.get(), {});
}

TEST(ShuffleNetworkTest, BackpressureBoundsMemoryAndLosesNothing) {
  auto p = Config("prod", 4u << 20);
  auto c = Config("cons", 4u << 20);
  auto prod = StartEnv(p);
  auto cons = StartEnv(c);
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok());
  std::vector<ChannelSpec> specs = {{"p0", 0, prod->endpoint()}};
  auto gate = cons->CreateInputGate("slow", specs);
  ASSERT_TRUE(gate.ok());
  std::atomic<uint64_t> emitted{0};
  std::thread producer([&] {
    std::mt19937 rng(5);
    for (uint64_t i = 0; i < 60000; ++i) {
      auto r = MakeRecord(0, 0, i, 100);
      ASSERT_TRUE((*part)->Emit(r, 0).ok());
      emitted = i + 1;
    }
    ASSERT_TRUE((*part)->Finish().ok());
  });
  // The consumer does not read for 5 s: the producer must block, with bounded memory.
  const uint32_t cons_limit = c.options.credit.buffers_per_channel + c.options.credit.floating_per_gate;
  const auto& pool_bounds = (*part)->pool().Stats();
  uint32_t max_cons_used = 0;
  uint32_t max_prod_used = 0;
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < until) {
    max_cons_used = std::max(max_cons_used, cons->pool()->used_segments());
    max_prod_used = std::max(max_prod_used, prod->pool()->used_segments());
    std::this_thread::sleep_for(20ms);
  }
  const uint64_t emitted_while_stalled = emitted.load();
  EXPECT_LT(emitted_while_stalled, 60000u) << "the producer never blocked";
  // Consumer side: exclusive + floating, plus the floating pool's eager spare.
  EXPECT_LE(max_cons_used, cons_limit + 1);
  EXPECT_LE(max_prod_used, pool_bounds.max + p.options.credit.overdraft);
  auto got = Consume(gate->get(), specs, ProducerOf);
  producer.join();
  EXPECT_EQ(got[0], 60000u);
  EXPECT_GT(prod->server()->stats().credit_stall_ns.load(), 0u);
  (*gate)->Close();
  StopAndCheck(prod.get(), cons.get(), {"p0"});
}

TEST(ShuffleNetworkTest, ConsumerCancelsMidStream) {
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 2);
  ASSERT_TRUE(part.ok());
  auto gate = cons->CreateInputGate("cancel", {{"p0", 0, prod->endpoint()}, {"p0", 1, prod->endpoint()}});
  ASSERT_TRUE(gate.ok());
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    uint64_t i = 0;
    while (!stop) {
      for (uint32_t s = 0; s < 2; ++s) {
        Status st = (*part)->Emit(MakeRecord(0, s, i, 64), s);
        if (!st.ok()) return;  // cancelled
      }
      ++i;
    }
  });
  {
    RecordReader reader(gate->get());  // holds the buffer it reads from until destroyed
    for (int i = 0; i < 2000; ++i) {
      auto item = reader.Next(5s);
      ASSERT_TRUE(item.ok() && item->kind == RecordReader::Kind::kRecord);
    }
  }
  (*gate)->Close();  // cancel mid-stream: the producer's subpartitions are released
  auto released = [&] {
    const ResultPartitionStats st = (*part)->Stats();
    return st.subpartitions[0].view_released && st.subpartitions[1].view_released;
  };
  EXPECT_TRUE(testutil::PollUntil(released, 5s, 5ms)) << "the server kept the views";
  // The producer does not block on buffers nobody reads: its records are dropped, and it
  // goes on (Cancel below would wake a blocked producer, so this is checked before it).
  const uint64_t dropped = (*part)->Stats().dropped_records;
  EXPECT_TRUE(testutil::PollUntil([&] { return (*part)->Stats().dropped_records > dropped; }, 5s,
                                  5ms))
      << "the producer stopped after the consumer cancelled";
  stop = true;
  (*part)->Cancel();
  producer.join();
  StopAndCheck(prod.get(), cons.get(), {"p0"});
}

TEST(ShuffleNetworkTest, GateCancelWakesABlockedReaderAtOnce) {
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 2);
  ASSERT_TRUE(part.ok());
  auto local = prod->CreatePartition("p1", 1);
  ASSERT_TRUE(local.ok());
  // One remote and one local channel, and nothing is ever written: the reader blocks.
  auto gate = cons->CreateInputGate("quiet", {{"p0", 0, prod->endpoint()}});
  auto local_gate = prod->CreateInputGate("quiet-local", {{"p1", 0, std::nullopt}});
  ASSERT_TRUE(gate.ok() && local_gate.ok());
  for (InputGate* g : {gate->get(), local_gate->get()}) {
    EXPECT_FALSE(g->IsCancelled());
    const auto start = std::chrono::steady_clock::now();
    std::thread canceller([g] {
      std::this_thread::sleep_for(100ms);
      g->Cancel();
    });
    RecordReader reader(g);
    auto item = reader.Next(60s);  // far longer than the test's timeout
    canceller.join();
    ASSERT_FALSE(item.ok());
    EXPECT_EQ(item.status().code(), StatusCode::kCancelled) << item.status().ToString();
    EXPECT_NE(item.status().message().find(g->name()), std::string::npos);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);  // woken, not timed out
    EXPECT_TRUE(g->IsCancelled());
    // Every later read is Cancelled too, without waiting; Cancel is idempotent.
    g->Cancel();
    auto again = g->GetNext(60s);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), StatusCode::kCancelled);
  }
  (*gate)->Close();
  (*local_gate)->Close();
  (*part)->Cancel();
  (*local)->Cancel();
  StopAndCheck(prod.get(), cons.get(), {"p0", "p1"});
}

TEST(ShuffleNetworkTest, ProducerProcessDiesConsumerGetsErrorNamingPeer) {
  int port_pipe[2];
  ASSERT_EQ(pipe(port_pipe), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The producer process: serves p0 and produces forever.
    close(port_pipe[0]);
    auto env = ShuffleEnvironment::Start(Config("dying-producer"));
    if (!env.ok()) _exit(2);
    auto part = (*env)->CreatePartition("p0", 1);
    if (!part.ok()) _exit(3);
    const uint16_t port = (*env)->port();
    if (write(port_pipe[1], &port, sizeof(port)) != sizeof(port)) _exit(4);
    for (uint64_t i = 0;; ++i) {
      if (!(*part)->Emit(MakeRecord(0, 0, i, 64), 0).ok()) _exit(5);
    }
  }
  close(port_pipe[1]);
  uint16_t port = 0;
  ASSERT_EQ(read(port_pipe[0], &port, sizeof(port)), static_cast<ssize_t>(sizeof(port)));
  close(port_pipe[0]);
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(cons);
  std::vector<ChannelSpec> specs = {{"p0", 0, transport::Endpoint{"127.0.0.1", port}}};
  auto gate = cons->CreateInputGate("victim", specs);
  ASSERT_TRUE(gate.ok());
  auto reader = std::make_unique<RecordReader>(gate->get());
  for (int i = 0; i < 1000; ++i) {
    auto item = reader->Next(5s);
    ASSERT_TRUE(item.ok()) << item.status().ToString();
    ASSERT_EQ(item->kind, RecordReader::Kind::kRecord);
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  // Drain what arrived; then the error, never a faked end of partition.
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
  ASSERT_FALSE(error.ok()) << "no error within 10 s of the producer's death";
  EXPECT_NE(error.message().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << error.message();
  EXPECT_NE(error.message().find("p0"), std::string::npos) << error.message();
  EXPECT_FALSE((*gate)->IsFinished());
  reader.reset();
  (*gate)->Close();
  cons->Stop();
  ExpectNoLeak(cons.get());
}

}  // namespace
}  // namespace sluice::shuffle
