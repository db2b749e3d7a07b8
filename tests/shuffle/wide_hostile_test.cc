// A wide gate against a producer that misbehaves (fake_producer.h speaks the protocol by hand
// to a real ShuffleEnvironment's client): data sent to a channel that was never given credit
// (initial credit 0) closes the connection with CreditViolation; a channel whose producer
// announces a huge backlog and sends nothing holds at most max_buffers_per_channel of the
// shared budget, and its siblings are still granted credit. Each test ends with the leak check.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "fake_producer.h"
#include "schema/messages.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "testutil/leak_check.h"

namespace sluice::shuffle {
namespace {

using namespace std::chrono_literals;
using testing::FakeProducer;

constexpr uint32_t kSegment = 4096;
const std::string kSecret = "wide-hostile-test-shared-secret-0123";

std::unique_ptr<ShuffleEnvironment> StartWideConsumer() {
  EnvironmentConfig c;
  c.node_name = "consumer";
  c.listen = false;
  c.memory.network_memory = 64 * kSegment;
  c.memory.segment_size = kSegment;
  c.options.request_timeout = 5s;
  c.options.credit.wide_threshold = 2;
  c.options.credit.wide_gate_buffers = 4;
  c.options.credit.floating_per_gate = 0;
  c.options.credit.max_buffers_per_channel = 2;
  c.timeouts.heartbeat_interval = 200ms;
  c.timeouts.idle_timeout = 10s;
  c.auth.secret = kSecret;
  auto env = ShuffleEnvironment::Start(c);
  EXPECT_TRUE(env.ok()) << env.status().ToString();
  return env.ok() ? std::move(*env) : nullptr;
}

std::vector<ChannelSpec> Specs(const FakeProducer& fake, uint32_t n) {
  std::vector<ChannelSpec> specs;
  for (uint32_t i = 0; i < n; ++i) {
    specs.push_back({"p", i, transport::Endpoint{"127.0.0.1", fake.port()}});
  }
  return specs;
}

// Reads `n` PartitionRequests; receiver id by subpartition.
std::map<uint32_t, FakeProducer::Request> ReadRequests(FakeProducer& fake, uint32_t n) {
  std::map<uint32_t, FakeProducer::Request> out;
  for (uint32_t i = 0; i < n; ++i) {
    auto r = fake.ReadRequest(5s);
    if (!r) break;
    out[r->subpartition] = *r;
  }
  return out;
}

TEST(WideHostileTest, DataWithoutCreditToAWideChannelClosesWithCreditViolation) {
  FakeProducer fake;
  auto env = StartWideConsumer();
  ASSERT_TRUE(env);
  std::map<uint32_t, FakeProducer::Request> requests;
  std::optional<FakeProducer::Frame> answer;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
    requests = ReadRequests(fake, 4);
    if (requests.size() != 4) return;
    fake.SendBuffer(requests[1].receiver_id, 0, 0, testing::Bytes(16, 7));  // no credit given
    answer = fake.ReadFrame(5s);
    fake.WaitClosed(5s);
  });
  auto gate = env->CreateInputGate("wide", Specs(fake, 4));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  ASSERT_TRUE((*gate)->wide());
  auto next = (*gate)->GetNext(10s);
  server.join();
  ASSERT_EQ(requests.size(), 4u);
  for (const auto& [sub, r] : requests) EXPECT_EQ(r.initial_credit, 0) << "subpartition " << sub;
  ASSERT_FALSE(next.ok());
  EXPECT_NE(next.status().message().find("connection to producer " + fake.name() + " lost"),
            std::string::npos)
      << next.status().message();
  ASSERT_TRUE(answer.has_value());
  ASSERT_EQ(answer->type, schema::MessageType::kErrorResponse);
  auto m = schema::ParseErrorResponse(answer->metadata);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->code(), fb::ErrorCode::CreditViolation);
  EXPECT_NE((*m)->message()->str().find("without credit"), std::string::npos);
  EXPECT_TRUE(fake.peer_closed());
  (*gate)->Close();
  env->Stop();
  testutil::ExpectAllSegmentsBack(*env->pool());
}

TEST(WideHostileTest, HugeBacklogDoesNotTakeTheWholeBudget) {
  FakeProducer fake;
  auto env = StartWideConsumer();
  ASSERT_TRUE(env);
  std::map<uint64_t, int64_t> credit;  // by receiver id
  std::map<uint32_t, FakeProducer::Request> requests;
  std::jthread server([&] {
    if (!fake.Accept(5s) || !fake.Handshake(kSegment, kSecret)) return;
    requests = ReadRequests(fake, 3);
    if (requests.size() != 3) return;
    fake.Send(schema::MessageType::kBacklogAnnouncement,
              fake.builder().BacklogAnnouncement(requests[0].receiver_id, 1 << 30));
    fake.Send(schema::MessageType::kBacklogAnnouncement,
              fake.builder().BacklogAnnouncement(requests[1].receiver_id, 1));
    fake.Send(schema::MessageType::kBacklogAnnouncement,
              fake.builder().BacklogAnnouncement(requests[2].receiver_id, 1));
    // Collect AddCredit until channels 1 and 2 have theirs (or 5 s).
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline &&
           (credit[requests[1].receiver_id] < 1 || credit[requests[2].receiver_id] < 1)) {
      auto f = fake.ReadFrame(500ms);
      if (!f || f->type != schema::MessageType::kAddCredit) continue;
      auto a = schema::ParseAddCredit(f->metadata);
      if (a.ok()) credit[(*a)->receiver_id()] += (*a)->credit();
    }
    // Every channel ends (events need no credit).
    for (uint32_t s = 0; s < 3; ++s) {
      fake.SendBuffer(requests[s].receiver_id, 0, 0, {}, buffer::DataType::kEndOfPartition);
    }
  });
  auto gate = env->CreateInputGate("wide", Specs(fake, 3));
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  uint32_t ended = 0;
  while (ended < 3) {
    auto next = (*gate)->GetNext(10s);
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    ASSERT_TRUE(next->has_value()) << "a channel never ended";
    if ((*next)->buffer.type() == buffer::DataType::kEndOfPartition) ++ended;
  }
  server.join();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(credit[requests[0].receiver_id], 2);  // max_buffers_per_channel, not 2^30
  EXPECT_EQ(credit[requests[1].receiver_id], 1);
  EXPECT_EQ(credit[requests[2].receiver_id], 1);
  EXPECT_EQ(env->client().metrics()->protocol_errors_total(), 0u);
  (*gate)->Close();
  env->Stop();
  testutil::ExpectAllSegmentsBack(*env->pool());
}

}  // namespace
}  // namespace sluice::shuffle
