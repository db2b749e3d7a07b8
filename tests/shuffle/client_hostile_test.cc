// The consumer side against a producer that misbehaves: a fake server (fake_producer.h) speaks
// the protocol by hand to a real ShuffleEnvironment's client. Each test asserts the client's
// answer (a failed channel, an ErrorResponse, a close), that sibling channels and the process
// go on, and ends with the leak check; the floods also bound the growth of VmRSS.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "fake_producer.h"
#include "shuffle/crc32c.h"
#include "shuffle/record_reader.h"
#include "shuffle/record_serializer.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "shuffle_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/rss.h"
#include "testutil/wait.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using ::sluice::testutil::VmRssBytes;
using testing::Bytes;
using testing::FakeProducer;

constexpr uint32_t kSegment = 4096;
const std::string kSecret = "client-hostile-test-shared-secret-0123";
constexpr auto kAttackTime = 3s;

std::unique_ptr<ShuffleEnvironment> StartConsumer() {
  EnvironmentConfig c;
  c.node_name = "consumer";
  c.listen = false;
  c.memory.network_memory = 4u << 20;
  c.memory.segment_size = kSegment;
  c.options.request_timeout = 5s;
  c.timeouts.heartbeat_interval = 200ms;
  c.timeouts.idle_timeout = 10s;
  c.auth.secret = kSecret;
  auto env = ShuffleEnvironment::Start(c);
  EXPECT_TRUE(env.ok()) << env.status().ToString();
  return env.ok() ? std::move(*env) : nullptr;
}

ChannelSpec Remote(const FakeProducer& fake, const std::string& partition, uint32_t sub = 0) {
  ChannelSpec s;
  s.partition_id = partition;
  s.subpartition = sub;
  s.remote = transport::Endpoint{"127.0.0.1", fake.port()};
  return s;
}

// One record (length prefix + testing::MakeRecord) as a buffer's payload.
Bytes RecordPayload(uint32_t producer, uint64_t seq) {
  const std::vector<uint8_t> rec = testing::MakeRecord(producer, 0, seq, 100);
  Bytes out(kRecordLengthBytes + rec.size());
  StoreRecordLength(out.data(), static_cast<uint32_t>(rec.size()));
  std::copy(rec.begin(), rec.end(), out.begin() + kRecordLengthBytes);
  return out;
}

void ExpectNoLeak(ShuffleEnvironment* env) { testutil::ExpectAllSegmentsBack(*env->pool()); }

// What the fake saw from the client while serving.
struct Seen {
  std::atomic<uint32_t> add_credit_frames{0};
  std::atomic<uint32_t> max_outstanding_credit{0};
  std::atomic<uint64_t> cancelled{0};  // receiver id of the last CancelPartitionRequest
  std::atomic<bool> failed{false};     // the fake could not do its part
};

// Reads one client frame; counts AddCredit for `receiver` into *credit, notes cancels.
bool HandleClientFrame(FakeProducer& fake, uint64_t receiver, int64_t* credit, Seen* seen,
                       std::chrono::milliseconds timeout) {
  auto f = fake.ReadFrame(timeout);
  if (!f) return false;
  if (f->type == schema::MessageType::kAddCredit) {
    auto m = schema::ParseAddCredit(f->metadata);
    if (m.ok() && (*m)->receiver_id() == receiver) {
      ++seen->add_credit_frames;
      *credit += (*m)->credit();
    }
  } else if (f->type == schema::MessageType::kCancelPartitionRequest) {
    auto m = schema::ParseCancelPartitionRequest(f->metadata);
    if (m.ok()) seen->cancelled = (*m)->receiver_id();
  }
  return true;
}

// Sends `records` one-record buffers to `receiver` within its credit, then end of partition.
void ServeWithinCredit(FakeProducer& fake, const FakeProducer::Request& r, uint32_t producer,
                       uint32_t records, Seen* seen) {
  int64_t credit = r.initial_credit;
  uint32_t sent = 0;
  while (sent < records) {
    seen->max_outstanding_credit =
        std::max<uint32_t>(seen->max_outstanding_credit, static_cast<uint32_t>(credit));
    while (credit > 0 && sent < records) {
      const int32_t backlog = static_cast<int32_t>(records - sent - 1);
      if (!fake.SendBuffer(r.receiver_id, static_cast<int32_t>(sent), backlog,
                           RecordPayload(producer, sent))) {
        seen->failed = true;
        return;
      }
      ++sent;
      --credit;
    }
    if (sent < records && !HandleClientFrame(fake, r.receiver_id, &credit, seen, 10s)) {
      seen->failed = true;
      return;
    }
  }
  fake.SendBuffer(r.receiver_id, static_cast<int32_t>(records), 0, {},
                  buffer::DataType::kEndOfPartition);
}

// Reads the gate until channel `until` delivered its end of partition. Returns the records
// per channel (checked in order) and the errors of failed channels.
struct Consumed {
  std::map<uint32_t, uint64_t> records;
  std::vector<Status> errors;
  bool finished = false;
};
// `release`: a channel the consumer releases when its first data buffer arrives.
Consumed ConsumeUntilEnd(InputGate* gate, uint32_t until, size_t hold_batch = 0,
                         std::optional<uint32_t> release = std::nullopt) {
  Consumed out;
  std::vector<RecordDeserializer> de(gate->num_channels());
  std::vector<buffer::Buffer> held;
  while (true) {
    auto next = gate->GetNext(10s);
    if (!next.ok()) {
      out.errors.push_back(next.status());
      continue;
    }
    if (!next->has_value()) break;  // timeout
    BufferOrEvent& boe = **next;
    if (boe.buffer.type() == buffer::DataType::kEndOfPartition) {
      if (boe.channel == until) {
        out.finished = true;
        break;
      }
      continue;
    }
    if (boe.buffer.type() != buffer::DataType::kData) continue;
    if (release == boe.channel) {
      gate->channel(boe.channel)->Release();
      release.reset();
    }
    if (hold_batch > 0) {  // the consumer returns buffers in batches
      held.push_back(boe.buffer.Share());
      if (held.size() >= hold_batch) held.clear();
    }
    de[boe.channel].SetNextBuffer(std::move(boe.buffer));
    std::span<const uint8_t> rec;
    while (true) {
      auto r = de[boe.channel].GetNext(&rec);
      if (!r.ok() || *r != RecordDeserializer::Next::kRecord) break;
      auto parsed = testing::ParseRecord(rec.data(), rec.size());
      EXPECT_TRUE(parsed.valid);
      EXPECT_EQ(parsed.seq, out.records[boe.channel]) << "channel " << boe.channel;
      ++out.records[boe.channel];
    }
  }
  for (auto& d : de) d.Clear();
  return out;
}

enum class Attack { kChecksum, kSequenceGap, kConsumerRelease };

// The fake's side of RunErrorScoping: attacks "bad" (its receiver id goes to bad_id_shared),
// serves "good" fully, then reads what the client sends until `done`.
void ServeErrorScoping(FakeProducer& fake, Attack attack, Seen& seen, std::atomic<bool>& done,
                       std::atomic<uint64_t>& bad_id_shared, uint32_t records) {
  if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) {
    seen.failed = true;
    return;
  }
  std::map<std::string, FakeProducer::Request> req;
  for (int i = 0; i < 2; ++i) {
    auto r = fake.ReadRequest(5s);
    if (!r) {
      seen.failed = true;
      return;
    }
    req[r->partition_id] = *r;
  }
  const uint64_t bad = req["bad"].receiver_id;
  bad_id_shared = bad;
  if (attack == Attack::kConsumerRelease) {
    // The consumer releases the channel on its first buffer; what the server sends before it
    // processed the cancel (data beyond the credit, an event, a backlog) is dropped. The good
    // channel is served after that, so its end comes after these frames on the stream.
    fake.SendBuffer(bad, 0, 5, RecordPayload(2, 0));
    int64_t ignored = 0;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (seen.cancelled != bad && std::chrono::steady_clock::now() < deadline) {
      HandleClientFrame(fake, 0, &ignored, &seen, 50ms);
    }
    for (int32_t seq = 1; seq < 4; ++seq) fake.SendBuffer(bad, seq, 5, RecordPayload(2, seq));
  } else if (attack == Attack::kChecksum) {
    const Bytes p = RecordPayload(2, 0);
    fake.SendBuffer(bad, 0, 5, p, buffer::DataType::kData, Crc32c(p.data(), p.size()) ^ 1);
  } else {
    fake.SendBuffer(bad, 0, 5, RecordPayload(2, 0));
    fake.SendBuffer(bad, 2, 5, RecordPayload(2, 1));  // a gap: 1 is missing
  }
  // Still in flight when the client fails the channel: all dropped, nothing closes.
  fake.SendBuffer(bad, 3, 4, RecordPayload(2, 2));
  fake.SendBuffer(bad, 4, 3, {'e', 'v'}, buffer::DataType::kEvent);
  fake.Send(schema::MessageType::kBacklogAnnouncement,
            fake.builder().BacklogAnnouncement(bad, 3));
  ServeWithinCredit(fake, req["good"], 1, records, &seen);
  int64_t ignored = 0;
  while (!done) HandleClientFrame(fake, 0, &ignored, &seen, 50ms);
}

// Two channels of one gate on one connection; the fake corrupts one and serves the other.
void RunErrorScoping(Attack attack) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  constexpr uint32_t kRecords = 300;
  Seen seen;
  std::atomic<bool> done{false};
  uint64_t bad_id = 0;
  std::atomic<uint64_t> bad_id_shared{0};
  std::jthread server([&] {
    ServeErrorScoping(fake, attack, seen, done, bad_id_shared, kRecords);
  });
  auto gate = env->CreateInputGate("scoped", {Remote(fake, "good"), Remote(fake, "bad")});
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  Consumed c = ConsumeUntilEnd(gate->get(), 0, 0,
                               attack == Attack::kConsumerRelease ? std::optional<uint32_t>(1)
                                                                  : std::nullopt);
  bad_id = bad_id_shared;
  // The server hears of the failed channel; the connection stays open.
  testutil::PollUntil([&] { return seen.cancelled == bad_id; }, 5s, 5ms);
  EXPECT_EQ(env->client().connection_count(), 1u);
  EXPECT_EQ(env->client().metrics()->protocol_errors_total(), 0u);
  done = true;
  server.join();
  EXPECT_EQ(seen.cancelled.load(), bad_id);
  EXPECT_FALSE(seen.failed.load());
  EXPECT_FALSE(fake.peer_closed());
  EXPECT_TRUE(c.finished) << "the good channel did not finish";
  EXPECT_EQ(c.records[0], kRecords);
  if (attack == Attack::kConsumerRelease) {
    EXPECT_TRUE(c.errors.empty()) << c.errors[0].ToString();
    EXPECT_EQ(c.records[1], 1u);
    (*gate)->Close();
    env->Stop();
    ExpectNoLeak(env.get());
    return;
  }
  ASSERT_EQ(c.errors.size(), 1u);
  const Status& err = c.errors[0];
  EXPECT_EQ(err.code(), StatusCode::kProtocolError);
  EXPECT_NE(err.message().find("remote channel 1 of gate 'scoped'"), std::string::npos)
      << err.message();
  if (attack == Attack::kChecksum) {
    EXPECT_NE(err.message().find("checksum mismatch on buffer 0 from " + fake.name()),
              std::string::npos)
        << err.message();
    EXPECT_EQ(c.records[1], 0u);
  } else {
    EXPECT_NE(err.message().find("expected buffer sequence number 1 but got 2 (a gap)"),
              std::string::npos)
        << err.message();
    EXPECT_NE(err.message().find(fake.name()), std::string::npos) << err.message();
    // The buffer before the gap, unless the error overtook it (a failed channel reports its
    // error before what it still queues).
    EXPECT_LE(c.records[1], 1u);
  }
  (*gate)->Close();
  env->Stop();
  ExpectNoLeak(env.get());
}

TEST(ClientHostileTest, ChecksumMismatchFailsOnlyThatChannel) { RunErrorScoping(Attack::kChecksum); }

TEST(ClientHostileTest, SequenceGapFailsOnlyThatChannel) { RunErrorScoping(Attack::kSequenceGap); }

TEST(ClientHostileTest, ReleasedChannelIsCancelledAndItsInFlightFramesDropped) {
  RunErrorScoping(Attack::kConsumerRelease);
}

// The same through a real producer and the transport's seeded fault shim, which corrupts every
// payload it sends (checksums on): the channel with data fails with a checksum error and is
// cancelled at the producer; its sibling on the same connection (whose only frame, the end of
// partition, has no payload) still completes, and the connection stays open.
TEST(ClientHostileTest, FaultShimCorruptionFailsOnlyTheCorruptedChannel) {
  EnvironmentConfig pc;
  pc.node_name = "producer";
  pc.memory.network_memory = 4u << 20;
  pc.memory.segment_size = kSegment;
  pc.options.checksums = true;
  pc.options.buffer_timeout = 5ms;
  pc.options.faults.seed = 7;
  pc.options.faults.corrupt_per_million = 1000000;
  pc.auth.secret = kSecret;
  auto producer = ShuffleEnvironment::Start(pc);
  ASSERT_TRUE(producer.ok()) << producer.status().ToString();
  auto consumer = StartConsumer();
  ASSERT_TRUE(consumer);
  auto bad = (*producer)->CreatePartition("bad", 1);
  auto good = (*producer)->CreatePartition("good", 1);
  ASSERT_TRUE(bad.ok() && good.ok());
  for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE((*bad)->Emit(testing::MakeRecord(2, 0, i, 64), 0).ok());
  ASSERT_TRUE((*bad)->Finish().ok());
  ASSERT_TRUE((*good)->Finish().ok());
  std::vector<ChannelSpec> specs(2);
  specs[0].partition_id = "good";
  specs[1].partition_id = "bad";
  for (auto& s : specs) s.remote = (*producer)->endpoint();
  auto gate = consumer->CreateInputGate("shim", specs);
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  Consumed c = ConsumeUntilEnd(gate->get(), 0);
  EXPECT_TRUE(c.finished);
  ASSERT_EQ(c.errors.size(), 1u);
  EXPECT_EQ(c.errors[0].code(), StatusCode::kProtocolError);
  EXPECT_NE(c.errors[0].message().find("remote channel 1 of gate 'shim'"), std::string::npos);
  EXPECT_NE(c.errors[0].message().find("checksum mismatch on buffer 0 from " +
                                       (*producer)->endpoint().ToString()),
            std::string::npos)
      << c.errors[0].message();
  EXPECT_EQ(c.records[1], 0u);
  // The producer released the cancelled reader (and the finished one); the connection stays.
  testutil::PollUntil([&] { return (*producer)->server()->stats().active_readers == 0; }, 5s, 5ms);
  EXPECT_EQ((*producer)->server()->stats().active_readers.load(), 0u);
  EXPECT_GT((*producer)->server()->metrics()->faults_corrupted.load(), 0u);
  EXPECT_EQ(consumer->client().connection_count(), 1u);
  EXPECT_EQ(consumer->client().metrics()->protocol_errors_total(), 0u);
  (*gate)->Close();
  (*producer)->ReleasePartition("bad");
  (*producer)->ReleasePartition("good");
  consumer->Stop();
  (*producer)->Stop();
  ExpectNoLeak(consumer.get());
  ExpectNoLeak(producer->get());
}

// AddCredit coalescing seen from the server: far fewer AddCredit frames than buffers the
// consumer returned, and never more credit outstanding than the channel can hold.
TEST(ClientHostileTest, AddCreditIsCoalescedAndNeverExceedsTheBuffersHeld) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  constexpr uint32_t kRecords = 2000;
  Seen seen;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) {
      seen.failed = true;
      return;
    }
    auto r = fake.ReadRequest(5s);
    if (!r) {
      seen.failed = true;
      return;
    }
    ServeWithinCredit(fake, *r, 1, kRecords, &seen);
  });
  auto gate = env->CreateInputGate("credit", {Remote(fake, "p")});
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  Consumed c = ConsumeUntilEnd(gate->get(), 0, /*hold_batch=*/4);
  server.join();
  EXPECT_FALSE(seen.failed.load());
  EXPECT_TRUE(c.finished);
  EXPECT_EQ(c.records[0], kRecords);
  EXPECT_TRUE(c.errors.empty());
  EXPECT_GT(seen.add_credit_frames.load(), 0u);
  EXPECT_LT(seen.add_credit_frames.load(), kRecords / 2)
      << "AddCredit frames were not coalesced";
  std::cout << "AddCredit frames for " << kRecords << " buffers: " << seen.add_credit_frames
            << ", most credit outstanding: " << seen.max_outstanding_credit << "\n";
  const ShuffleOptions& o = env->config().options;
  EXPECT_LE(seen.max_outstanding_credit.load(),
            o.credit.buffers_per_channel + o.credit.floating_per_gate);
  (*gate)->Close();
  env->Stop();
  ExpectNoLeak(env.get());
}

// Frames for a receiver id this connection never issued (a guess, or data injected for another
// client) close the connection with ProtocolViolation; the channel fails naming the producer.
void ExpectUnknownReceiverCloses(bool backlog) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  std::optional<FakeProducer::Frame> answer;
  uint64_t receiver = 0;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
    auto r = fake.ReadRequest(5s);
    if (!r) return;
    receiver = r->receiver_id;
    if (backlog) {
      fake.Send(schema::MessageType::kBacklogAnnouncement,
                fake.builder().BacklogAnnouncement(r->receiver_id ^ 0x5A5A, 4));
    } else {
      fake.SendBuffer(r->receiver_id ^ 0x5A5A, 0, 0, RecordPayload(1, 0));
    }
    answer = fake.ReadFrame(5s);
    fake.WaitClosed(5s);
  });
  auto gate = env->CreateInputGate("unknown", {Remote(fake, "p")});
  ASSERT_TRUE(gate.ok());
  auto next = (*gate)->GetNext(10s);
  server.join();
  ASSERT_FALSE(next.ok());
  EXPECT_NE(next.status().message().find("connection to producer " + fake.name() + " lost"),
            std::string::npos)
      << next.status().message();
  ASSERT_TRUE(answer.has_value());
  ASSERT_EQ(answer->type, schema::MessageType::kErrorResponse);
  auto m = schema::ParseErrorResponse(answer->metadata);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->code(), fb::ErrorCode::ProtocolViolation);
  EXPECT_EQ((*m)->message()->str(),
            std::string(backlog ? "BacklogAnnouncement" : "BufferResponse") + " from producer " +
                fake.name() + " for receiver id " + std::to_string(receiver ^ 0x5A5A) +
                ", which this connection never requested");
  EXPECT_TRUE(fake.peer_closed());
  EXPECT_EQ(env->client().metrics()->protocol_errors_of(transport::FrameError::kInvalidField), 1u);
  (*gate)->Close();
  env->Stop();
  ExpectNoLeak(env.get());
}

TEST(ClientHostileTest, DataForAReceiverNeverRequestedClosesTheConnection) {
  ExpectUnknownReceiverCloses(/*backlog=*/false);
}

TEST(ClientHostileTest, BacklogForAReceiverNeverRequestedClosesTheConnection) {
  ExpectUnknownReceiverCloses(/*backlog=*/true);
}

// A channel with its job's access token proves it in the request and in every retry.
TEST(ClientHostileTest, PartitionRequestCarriesTheAccessProofInEveryRetry) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  const std::string token = auth::MakeJobToken();
  std::vector<FakeProducer::Request> requests;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
    auto r = fake.ReadRequest(5s);
    if (!r) return;
    requests.push_back(*r);
    fake.Send(schema::MessageType::kErrorResponse,
              fake.builder().ErrorResponse(fb::ErrorCode::PartitionNotFound, "not yet",
                                           r->receiver_id));
    auto again = fake.ReadRequest(5s);
    if (!again) return;
    requests.push_back(*again);
    fake.SendBuffer(again->receiver_id, 0, 0, {}, buffer::DataType::kEndOfPartition);
    fake.ReadFrame(2s);  // the client's close, or nothing
  });
  ChannelSpec spec = Remote(fake, "job-partition", 3);
  spec.access_token = token;
  auto gate = env->CreateInputGate("proved", {spec});
  ASSERT_TRUE(gate.ok());
  auto next = (*gate)->GetNext(10s);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  ASSERT_TRUE(next->has_value());
  EXPECT_EQ((*next)->buffer.type(), buffer::DataType::kEndOfPartition);
  (*gate)->Close();
  server.join();
  const auth::Proof want = auth::MakePartitionProof(token, "job-partition", 3);
  ASSERT_EQ(requests.size(), 2u);
  for (const auto& r : requests) {
    EXPECT_EQ(r.access_proof, Bytes(want.begin(), want.end()));
    EXPECT_EQ(r.receiver_id, requests[0].receiver_id);
  }
  env->Stop();
  ExpectNoLeak(env.get());
}

// A producer floods events (they need no credit) that the consumer does not take: past the
// connection's event budget the client closes the connection with CreditViolation. Repeated
// for a few seconds: the process stays up, memory stays bounded, nothing leaks.
TEST(ClientHostileTest, EventFloodIsRefusedOverTheBudget) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  size_t rss_before = 0;
  uint32_t rounds = 0;
  const auto end = std::chrono::steady_clock::now() + kAttackTime;
  while (std::chrono::steady_clock::now() < end || rounds < 2) {
    std::optional<FakeProducer::Frame> answer;
    std::jthread server([&] {
      if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
      auto r = fake.ReadRequest(5s);
      if (!r) return;
      const Bytes event(kSegment, 0xEE);
      for (int32_t seq = 0; seq < 64; ++seq) {
        if (!fake.SendBuffer(r->receiver_id, seq, 0, event, buffer::DataType::kEvent)) break;
      }
      answer = fake.ReadFrame(5s);
      fake.WaitClosed(5s);
    });
    auto gate = env->CreateInputGate("flood", {Remote(fake, "p")});
    ASSERT_TRUE(gate.ok());
    server.join();
    ASSERT_TRUE(answer.has_value());
    ASSERT_EQ(answer->type, schema::MessageType::kErrorResponse);
    auto m = schema::ParseErrorResponse(answer->metadata);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)->code(), fb::ErrorCode::CreditViolation);
    EXPECT_NE((*m)->message()->str().find("producer " + fake.name() + " sent an event of 4096"),
              std::string::npos)
        << (*m)->message()->str();
    // The budget: 64 KiB plus one channel's allowance, filled before the refusal.
    const size_t limit = (size_t{64} << 10) + EventBudget::kPerChannelAllowance;
    const size_t held = (limit / EventBudget::ChargeFor(kSegment)) * EventBudget::ChargeFor(kSegment);
    EXPECT_NE((*m)->message()->str().find("while " + std::to_string(held) + " of the " +
                                          std::to_string(limit) +
                                          " bytes of events this connection may hold were not "
                                          "consumed yet (event budget exceeded)"),
              std::string::npos)
        << (*m)->message()->str();
    // The consumer gets the events that fit, then the channel's error.
    Status error;
    uint32_t events = 0;
    while (error.ok()) {
      auto next = (*gate)->GetNext(5s);
      if (!next.ok()) {
        error = next.status();
      } else if (next->has_value()) {
        ++events;
      } else {
        break;
      }
    }
    EXPECT_NE(error.message().find("event budget exceeded"), std::string::npos)
        << error.ToString();
    // (A failed channel reports its error before what it still queues: usually no events.)
    EXPECT_LE(events * EventBudget::ChargeFor(kSegment),
              (size_t{64} << 10) + EventBudget::kPerChannelAllowance);
    (*gate)->Close();
    if (++rounds == 1) rss_before = VmRssBytes();
  }
  const size_t rss_after = VmRssBytes();
  EXPECT_GE(rounds, 3u);
  testutil::ExpectRssGrowthBounded(rss_before, rss_after, "event flood");
  env->Stop();
  ExpectNoLeak(env.get());
}

// A producer sends a length prefix of 1 GiB and then keeps sending bytes: the reader refuses
// it at the gate's limit (no reservation), fails that channel alone and cancels its request.
TEST(ClientHostileTest, HugeRecordLengthFailsTheChannelWithoutReserving) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  size_t rss_before = 0;
  uint32_t rounds = 0;
  const auto end = std::chrono::steady_clock::now() + kAttackTime;
  while (std::chrono::steady_clock::now() < end || rounds < 2) {
    Seen seen;
    uint64_t receiver = 0;
    std::jthread server([&] {
      // One connection for every round: the failed channels' siblings-to-be keep using it.
      if (rounds == 0 && (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret))) return;
      auto r = fake.ReadRequest(5s);
      if (!r) return;
      receiver = r->receiver_id;
      Bytes first(kSegment, 0xAB);
      StoreRecordLength(first.data(), 1u << 30);
      fake.SendBuffer(r->receiver_id, 0, 1, first);
      fake.SendBuffer(r->receiver_id, 1, 0, Bytes(kSegment, 0xCD));
      int64_t credit = 0;
      const auto deadline = std::chrono::steady_clock::now() + 5s;
      while (seen.cancelled != receiver && std::chrono::steady_clock::now() < deadline) {
        HandleClientFrame(fake, receiver, &credit, &seen, 100ms);
      }
    });
    auto gate = env->CreateInputGate("huge", {Remote(fake, "p")});
    ASSERT_TRUE(gate.ok());
    EXPECT_EQ((*gate)->max_record_size(), InputGate::kDefaultMaxRecordSize);
    RecordReader reader(gate->get());
    auto item = reader.Next(10s);
    ASSERT_FALSE(item.ok());
    EXPECT_EQ(item.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(item.status().message().find("remote channel 0 of gate 'huge'"), std::string::npos)
        << item.status().message();
    EXPECT_NE(item.status().message().find("record of 1073741824 bytes is longer than the "
                                           "limit of 67108864 bytes"),
              std::string::npos)
        << item.status().message();
    server.join();
    EXPECT_EQ(seen.cancelled.load(), receiver) << "no CancelPartitionRequest for the channel";
    EXPECT_EQ(env->client().metrics()->protocol_errors_total(), 0u);
    EXPECT_EQ(env->client().connection_count(), 1u);
    (*gate)->Close();
    if (++rounds == 1) rss_before = VmRssBytes();
  }
  EXPECT_GE(rounds, 3u);
  EXPECT_FALSE(fake.peer_closed());
  const size_t rss_after = VmRssBytes();
  testutil::ExpectRssGrowthBounded(rss_before, rss_after, "1 GiB record lengths");
  env->Stop();
  ExpectNoLeak(env.get());
}

// BufferSizeAnnouncement (buffer debloating) goes client -> server only: a server that sends
// one breaks the protocol, and the client closes the connection with ProtocolViolation.
TEST(ClientHostileTest, BufferSizeAnnouncementFromTheServerClosesTheConnection) {
  FakeProducer fake;
  auto env = StartConsumer();
  ASSERT_TRUE(env);
  std::optional<FakeProducer::Frame> answer;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
    auto r = fake.ReadRequest(5s);
    if (!r) return;
    fake.Send(schema::MessageType::kBufferSizeAnnouncement,
              fake.builder().BufferSizeAnnouncement(r->receiver_id, 4096));
    answer = fake.ReadFrame(5s);
    fake.WaitClosed(5s);
  });
  auto gate = env->CreateInputGate("debloat", {Remote(fake, "p")});
  ASSERT_TRUE(gate.ok());
  auto next = (*gate)->GetNext(10s);
  server.join();
  ASSERT_FALSE(next.ok());
  EXPECT_NE(next.status().message().find("connection to producer " + fake.name() + " lost"),
            std::string::npos)
      << next.status().message();
  ASSERT_TRUE(answer.has_value());
  ASSERT_EQ(answer->type, schema::MessageType::kErrorResponse);
  auto m = schema::ParseErrorResponse(answer->metadata);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->code(), fb::ErrorCode::ProtocolViolation);
  EXPECT_NE((*m)->message()->str().find("unexpected BufferSizeAnnouncement from server"),
            std::string::npos)
      << (*m)->message()->str();
  EXPECT_TRUE(fake.peer_closed());
  (*gate)->Close();
  env->Stop();
  ExpectNoLeak(env.get());
}

}  // namespace
}  // namespace sluice::shuffle
