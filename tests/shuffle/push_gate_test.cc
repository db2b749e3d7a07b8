// Push-mode gates end to end (ShuffleEnvironment::CreateInputGate with a listener): the IO
// thread that read a buffer runs the consumer's work. Records arrive exactly once and in
// order on remote and local channels, every call is on the one IO thread and none overlaps,
// the gate closes from another thread while records flow (no call after Close returns) or
// from inside the listener at the end of input, Cancel, a lost producer and a hostile
// producer's sequence gap reach the listener as errors, debloating counts the push consumer's
// idle time, and every test ends with the leak check.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/fake_producer.h"
#include "shuffle/record_reader.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_test_util.h"
#include "testutil/leak_check.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using testing::MakeRecord;
using testing::ParseRecord;
using testing::StartEnv;

EnvironmentConfig Config(const std::string& name) {
  return testing::TestEnvironmentConfig(name, 8u << 20, 4096);
}

// The consumer's side of a push gate: what the listener saw, checked as it goes.
class PushReader {
 public:
  explicit PushReader(bool close_at_end = false) : close_at_end_(close_at_end) {}

  // The gate's listener: drains with a zero timeout, never blocks.
  void OnAvailable(InputGate& gate) {
    const std::thread::id me = std::this_thread::get_id();
    if (in_call_.exchange(true)) ADD_FAILURE() << "two listener calls overlap";
    if (after_close_.load()) ADD_FAILURE() << "a listener call after Close returned";
    {
      std::lock_guard lock(mu_);
      threads_.insert(me);
      ++calls_;
    }
    if (!reader_) reader_.emplace(&gate);
    while (!ended_) {
      auto item = reader_->Next(0ms);
      if (!item.ok()) {
        Finish(item.status());
        break;
      }
      if (item->kind == RecordReader::Kind::kTimeout) break;  // drained
      if (item->kind == RecordReader::Kind::kEndOfInput) {
        if (close_at_end_) {
          reader_.reset();  // gives back the buffer it holds
          gate.Close();
        }
        Finish(Status::Ok());
        break;
      }
      if (item->kind != RecordReader::Kind::kRecord) continue;
      auto rec = ParseRecord(item->data.data(), item->data.size());
      EXPECT_TRUE(rec.valid) << "corrupt record on channel " << item->channel;
      EXPECT_EQ(rec.subpartition, subpartition_of_[item->channel]);
      uint64_t& want = next_[item->channel];
      EXPECT_EQ(rec.seq, want) << "channel " << item->channel;
      want = rec.seq + 1;
      records_.fetch_add(1, std::memory_order_relaxed);
    }
    in_call_ = false;
  }

  // Waits for the end or an error; nullopt after `limit`.
  std::optional<Status> Wait(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, limit, [&] { return done_; })) return std::nullopt;
    return status_;
  }
  void SetSubpartitions(std::vector<uint32_t> s) { subpartition_of_ = std::move(s); }
  void MarkClosed() { after_close_ = true; }
  // After the gate closed (no call runs): drop the reader and the buffer it holds.
  void Drop() { reader_.reset(); }
  uint64_t records() const { return records_.load(); }
  std::map<uint32_t, uint64_t> next() const { return next_; }
  size_t threads() const {
    std::lock_guard lock(mu_);
    return threads_.size();
  }
  bool ran_on(std::thread::id id) const {
    std::lock_guard lock(mu_);
    return threads_.count(id) != 0;
  }
  uint64_t calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  void Finish(Status st) {
    ended_ = true;
    std::lock_guard lock(mu_);
    done_ = true;
    status_ = std::move(st);
    cv_.notify_all();
  }

  const bool close_at_end_;
  std::optional<RecordReader> reader_;     // listener calls
  std::map<uint32_t, uint64_t> next_;      // listener calls: channel -> expected seq
  std::vector<uint32_t> subpartition_of_;  // set before the gate
  bool ended_ = false;                     // listener calls
  std::atomic<bool> in_call_{false};
  std::atomic<bool> after_close_{false};
  std::atomic<uint64_t> records_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::thread::id> threads_;  // GUARDED_BY(mu_)
  uint64_t calls_ = 0;                 // GUARDED_BY(mu_)
  bool done_ = false;                  // GUARDED_BY(mu_)
  Status status_;                      // GUARDED_BY(mu_)
};

// `records` records to every subpartition (record i of subpartition s carries seq i), every
// eighth one flushed, so that buffers of a few records and full ones both go through.
void Produce(ResultPartition* p, uint64_t records, uint32_t max_payload) {
  for (uint64_t i = 0; i < records; ++i) {
    for (uint32_t s = 0; s < p->num_subpartitions(); ++s) {
      Status st =
          p->Emit(MakeRecord(0, s, i, static_cast<uint32_t>((i * 37 + s) % max_payload)), s);
      if (!st.ok()) {
        ADD_FAILURE() << "emit: " << st.ToString();
        return;
      }
      if ((i + s) % 8 == 0) p->Flush(s);
    }
  }
  Status st = p->Finish();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// Closes the gate (idempotent), drops the reader's last buffer, releases partition "p0" of
// envs[0] (the producer's) when `part` is given, stops every environment, consumers first
// (idempotent), and checks every segment of each is back.
void CloseAndCheck(InputGate& gate, PushReader& reader, std::shared_ptr<ResultPartition>* part,
                   const std::vector<ShuffleEnvironment*>& envs) {
  gate.Close();
  reader.MarkClosed();
  reader.Drop();
  if (part != nullptr) {
    part->reset();
    envs.front()->ReleasePartition("p0");
  }
  for (auto it = envs.rbegin(); it != envs.rend(); ++it) (*it)->Stop();
  for (ShuffleEnvironment* env : envs) {
    testutil::ExpectAllSegmentsBack(*env->pool(), env->config().node_name);
  }
}

std::function<void(InputGate&)> Listen(PushReader& r) {
  return [&r](InputGate& g) { r.OnAvailable(g); };
}

TEST(PushGateTest, RemoteRecordsExactlyOnceInOrderOnTheIoThread) {
  constexpr uint32_t kChannels = 4;
  constexpr uint64_t kRecords = 20000;
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", kChannels);
  ASSERT_TRUE(part.ok());
  PushReader reader;
  std::vector<ChannelSpec> specs;
  std::vector<uint32_t> subs;
  for (uint32_t c = 0; c < kChannels; ++c) {
    specs.push_back({"p0", c, prod->endpoint()});
    subs.push_back(c);
  }
  reader.SetSubpartitions(subs);
  auto gate = cons->CreateInputGate("push", specs, Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  std::thread producer([&] { Produce(part->get(), kRecords, 300); });
  const std::optional<Status> end = reader.Wait(60s);
  producer.join();
  ASSERT_TRUE(end.has_value()) << "no end of input within 60 s; " << reader.records()
                               << " records seen";
  EXPECT_TRUE(end->ok()) << end->ToString();
  EXPECT_EQ(reader.records(), kChannels * kRecords);
  for (uint32_t c = 0; c < kChannels; ++c) EXPECT_EQ(reader.next()[c], kRecords) << c;
  EXPECT_TRUE((*gate)->IsFinished());
  EXPECT_EQ(reader.threads(), 1u) << "every call on the one IO thread";
  EXPECT_FALSE(reader.ran_on(std::this_thread::get_id()));
  EXPECT_GE(reader.calls(), 1u);
  CloseAndCheck(**gate, reader, &*part, {prod.get(), cons.get()});
}

TEST(PushGateTest, LocalChannelsAndCloseFromInsideAtTheEnd) {
  constexpr uint64_t kRecords = 20000;
  auto env = StartEnv(Config("local"));
  ASSERT_TRUE(env);
  auto part = env->CreatePartition("p0", 2);
  ASSERT_TRUE(part.ok());
  PushReader reader(/*close_at_end=*/true);
  reader.SetSubpartitions({0, 1});
  auto gate = env->CreateInputGate("push-local", {{"p0", 0, std::nullopt}, {"p0", 1, std::nullopt}},
                                   Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  std::thread producer([&] { Produce(part->get(), kRecords, 200); });
  const std::optional<Status> end = reader.Wait(60s);
  producer.join();
  ASSERT_TRUE(end.has_value()) << "no end of input within 60 s";
  EXPECT_TRUE(end->ok()) << end->ToString();
  EXPECT_EQ(reader.records(), 2 * kRecords);
  EXPECT_EQ(reader.threads(), 1u);
  // Closed by the listener: a later Close is a no-op, and the buffers are home.
  CloseAndCheck(**gate, reader, &*part, {env.get()});
}

// Cancel from another thread reaches a quiet push gate's listener as Cancelled, as it wakes
// a reader blocked in GetNext.
TEST(PushGateTest, CancelReachesTheListener) {
  auto env = StartEnv(Config("cancel"));
  ASSERT_TRUE(env);
  auto part = env->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok());
  PushReader reader;
  reader.SetSubpartitions({0});
  auto gate = env->CreateInputGate("push-cancel", {{"p0", 0, std::nullopt}}, Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  EXPECT_FALSE(reader.Wait(50ms).has_value()) << "nothing was written: no end, no error";
  (*gate)->Cancel();
  const std::optional<Status> end = reader.Wait(10s);
  ASSERT_TRUE(end.has_value()) << "the listener was not called after Cancel";
  EXPECT_EQ(end->code(), StatusCode::kCancelled) << end->ToString();
  (*part)->Cancel();
  CloseAndCheck(**gate, reader, &*part, {env.get()});
}

// Debloating in push mode: the consumer's calls never wait, so its idle time is the gap
// between a call that found nothing and the next one. A slow producer (a record every 2 ms)
// leaves the consumer idle nearly all the time, and the busy rate the debloater derives must
// be far above the average rate (counted as busy, both would be equal and the gate would ask
// its senders for needlessly small buffers).
TEST(PushGateTest, DebloatingCountsThePushConsumersIdleTime) {
  EnvironmentConfig config = Config("debloat");
  config.options.debloat = true;
  config.options.debloat_period = 20ms;
  auto env = StartEnv(config);
  ASSERT_TRUE(env);
  auto part = env->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok());
  PushReader reader;
  reader.SetSubpartitions({0});
  auto gate = env->CreateInputGate("push-debloat", {{"p0", 0, std::nullopt}}, Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  const auto start = std::chrono::steady_clock::now();
  std::thread producer([&] {
    for (uint64_t i = 0; i < 200; ++i) {
      if (!(*part)->Emit(MakeRecord(0, 0, i, 100), 0).ok()) return;
      (*part)->Flush(0);
      std::this_thread::sleep_for(2ms);
    }
    EXPECT_TRUE((*part)->Finish().ok());
  });
  const std::optional<Status> end = reader.Wait(30s);
  producer.join();
  ASSERT_TRUE(end.has_value() && end->ok()) << (end ? end->ToString() : "no end");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const InputGateStats stats = (*gate)->Stats();
  const double average = static_cast<double>(stats.bytes_in) / seconds;
  EXPECT_EQ(reader.records(), 200u);
  EXPECT_GT(stats.debloat_throughput, 5 * average)
      << "busy rate " << stats.debloat_throughput << " B/s, average " << average
      << " B/s: idle time between calls was not counted";
  CloseAndCheck(**gate, reader, &*part, {env.get()});
}

// The consumer closes its gate from its own thread while the IO thread is delivering: Close
// waits for a call in progress, no call starts after it, and the producer is released.
TEST(PushGateTest, CloseFromAnotherThreadWhileRecordsFlow) {
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto prod = StartEnv(Config("prod"));
    auto cons = StartEnv(Config("cons"));
    ASSERT_TRUE(prod && cons);
    auto part = prod->CreatePartition("p0", 2);
    ASSERT_TRUE(part.ok());
    PushReader reader;
    reader.SetSubpartitions({0, 1});
    auto gate = cons->CreateInputGate(
        "push-close", {{"p0", 0, prod->endpoint()}, {"p0", 1, prod->endpoint()}}, Listen(reader));
    ASSERT_TRUE(gate.ok()) << gate.status().ToString();
    std::atomic<bool> stop{false};
    std::thread producer([&] {
      for (uint64_t i = 0; !stop; ++i) {
        for (uint32_t s = 0; s < 2; ++s) {
          if (!(*part)->Emit(MakeRecord(0, s, i, 64), s).ok()) return;  // cancelled
        }
        if (i % 16 == 0) (*part)->FlushAll();
      }
    });
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    const uint64_t want = 2000 + 1000 * static_cast<uint64_t>(round);
    while (reader.records() < want && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    ASSERT_GE(reader.records(), want) << "records stopped flowing";
    (*gate)->Close();
    reader.MarkClosed();  // a call from here on fails the test
    const uint64_t seen = reader.records();
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(reader.records(), seen) << "records were consumed after Close returned";
    stop = true;
    (*part)->Cancel();
    producer.join();
    CloseAndCheck(**gate, reader, &*part, {prod.get(), cons.get()});
  }
}

// The producer's environment goes away mid-stream: the listener hears the error (naming the
// peer), never a faked end of input.
TEST(PushGateTest, ALostProducerReachesTheListenerAsAnError) {
  auto prod = StartEnv(Config("prod"));
  auto cons = StartEnv(Config("cons"));
  ASSERT_TRUE(prod && cons);
  auto part = prod->CreatePartition("p0", 1);
  ASSERT_TRUE(part.ok());
  PushReader reader;
  reader.SetSubpartitions({0});
  auto gate = cons->CreateInputGate("push-lost", {{"p0", 0, prod->endpoint()}}, Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    for (uint64_t i = 0; !stop; ++i) {
      if (!(*part)->Emit(MakeRecord(0, 0, i, 64), 0).ok()) return;
      if (i % 16 == 0) (*part)->FlushAll();
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (reader.records() < 1000 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_GE(reader.records(), 1000u);
  const std::string peer = prod->endpoint().ToString();
  prod->Stop();  // the connection goes with it, mid-stream
  const std::optional<Status> end = reader.Wait(30s);
  stop = true;
  (*part)->Cancel();
  producer.join();
  ASSERT_TRUE(end.has_value()) << "the listener heard nothing within 30 s of the loss";
  EXPECT_FALSE(end->ok()) << "a lost producer must not look like the end of input";
  EXPECT_NE(end->message().find(peer), std::string::npos) << end->ToString();
  EXPECT_FALSE((*gate)->IsFinished());
  CloseAndCheck(**gate, reader, &*part, {prod.get(), cons.get()});
}

// A hostile producer against a push gate: a sequence gap on one channel reaches the listener
// as that channel's error, naming the gap and the peer, on the IO thread; nothing leaks.
TEST(PushGateTest, AHostileProducersSequenceGapReachesTheListener) {
  testing::FakeProducer fake;
  EnvironmentConfig config = Config("cons");
  config.listen = false;
  auto cons = StartEnv(config);
  ASSERT_TRUE(cons);
  std::atomic<bool> served{false};
  std::thread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(4096, std::string(testing::kTestSecret))) return;
    auto r0 = fake.ReadRequest(5s);
    auto r1 = fake.ReadRequest(5s);
    if (!r0 || !r1) return;
    const uint64_t id1 = r0->subpartition == 1 ? r0->receiver_id : r1->receiver_id;
    served = fake.SendBuffer(id1, /*sequence=*/1, 0, testing::Bytes(64, 0x5A));  // 0 expected
    std::this_thread::sleep_for(200ms);  // the client reads it before the socket closes
  });
  PushReader reader;
  reader.SetSubpartitions({0, 1});
  ChannelSpec c0{"p0", 0, transport::Endpoint{"127.0.0.1", fake.port()}};
  ChannelSpec c1{"p0", 1, transport::Endpoint{"127.0.0.1", fake.port()}};
  auto gate = cons->CreateInputGate("push-hostile", {c0, c1}, Listen(reader));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  const std::optional<Status> end = reader.Wait(10s);
  server.join();
  ASSERT_TRUE(served) << "the fake producer could not send";
  ASSERT_TRUE(end.has_value()) << "the listener heard nothing of the gap";
  EXPECT_EQ(end->code(), StatusCode::kProtocolError) << end->ToString();
  EXPECT_NE(end->message().find("expected buffer sequence number 0 but got 1 (a gap)"),
            std::string::npos)
      << end->message();
  EXPECT_NE(end->message().find(fake.name()), std::string::npos) << end->message();
  EXPECT_FALSE(reader.ran_on(std::this_thread::get_id()));
  CloseAndCheck(**gate, reader, nullptr, {cons.get()});
}

}  // namespace
}  // namespace sluice::shuffle
