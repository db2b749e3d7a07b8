// Tests for schema/messages.{h,cc}: type numbers, builder/parse round trips, the field checks
// the FlatBuffers Verifier does not make, malformed input, and allocation-free encoding.
#include "schema/messages.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "alloc_counter.h"

namespace sluice::schema {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes Copy(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

constexpr uint32_t kSegment = 32 * 1024;

// Asserts a ProtocolError whose message contains every fragment.
void ExpectProtocolError(const Status& s, std::initializer_list<std::string_view> fragments) {
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kProtocolError) << s.ToString();
  for (std::string_view f : fragments) {
    EXPECT_NE(s.message().find(f), std::string::npos)
        << "message \"" << s.message() << "\" lacks \"" << f << "\"";
  }
}

TEST(MessageTypeTest, KnownTypesAndPayloads) {
  EXPECT_FALSE(IsKnownMessageType(0));
  for (uint8_t t = 1; t <= 10; ++t) EXPECT_TRUE(IsKnownMessageType(t)) << int{t};
  EXPECT_TRUE(IsKnownMessageType(12));  // BufferSizeAnnouncement
  EXPECT_FALSE(IsKnownMessageType(13));
  EXPECT_FALSE(IsKnownMessageType(31));
  EXPECT_TRUE(IsKnownMessageType(11));
  EXPECT_TRUE(IsControlMessageType(32));
  EXPECT_TRUE(IsControlMessageType(40));   // ListJobsRequest
  EXPECT_TRUE(IsControlMessageType(41));   // ListJobsResponse
  EXPECT_TRUE(IsControlMessageType(42));   // ExtReleaseJob (issue 13: 42..46)
  EXPECT_TRUE(IsKnownMessageType(46));     // ExtListResponse
  EXPECT_FALSE(IsKnownMessageType(60));
  EXPECT_FALSE(IsKnownMessageType(kLastControlMessageType));
  EXPECT_FALSE(IsKnownMessageType(255));

  EXPECT_TRUE(CarriesPayload(MessageType::kBufferResponse));
  EXPECT_FALSE(CarriesPayload(MessageType::kAddCredit));
  EXPECT_FALSE(CarriesPayload(MessageType::kHello));

  const std::bitset<256> known = KnownMessageTypes();
  const std::bitset<256> payload = PayloadMessageTypes();
  EXPECT_EQ(known.count(), 27u);  // 12 shuffle protocol types, 15 daemon control types
  EXPECT_EQ(payload.count(), 1u);
  EXPECT_TRUE(payload.test(static_cast<uint8_t>(MessageType::kBufferResponse)));
  for (size_t t = 0; t < 256; ++t) {
    EXPECT_EQ(known.test(t), IsKnownMessageType(static_cast<uint8_t>(t))) << t;
  }
  EXPECT_EQ(MessageTypeName(MessageType::kBacklogAnnouncement), "BacklogAnnouncement");
  EXPECT_EQ(MessageTypeName(static_cast<MessageType>(99)), "Unknown");
}

TEST(MessageTypeTest, DataTypeConversions) {
  for (auto t :
       {buffer::DataType::kData, buffer::DataType::kEndOfPartition, buffer::DataType::kEvent}) {
    EXPECT_EQ(FromWire(ToWire(t)), t);
  }
  EXPECT_EQ(ToWire(buffer::DataType::kEndOfPartition), fb::DataType::EndOfPartition);
}

// ---- Round trips: every message type through MessageBuilder and its Parse function ----

TEST(MessageRoundTripTest, Hello) {
  MessageBuilder b;
  const uint8_t nonce[] = {1, 2, 3, 4, 5, 6, 7, 8};
  const uint8_t proof[] = {9, 8, 7};
  const Bytes msg = Copy(b.Hello({.protocol_version = 1,
                                  .segment_size = kSegment,
                                  .node_name = "node-a",
                                  .nonce = nonce,
                                  .auth_proof = proof}));
  auto r = ParseHello(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const fb::Hello* m = r.value();
  EXPECT_EQ(m->protocol_version(), 1);
  EXPECT_EQ(m->segment_size(), kSegment);
  EXPECT_EQ(m->node_name()->str(), "node-a");
  EXPECT_EQ(Bytes(m->nonce()->begin(), m->nonce()->end()),
            Bytes(std::begin(nonce), std::end(nonce)));
  EXPECT_EQ(Bytes(m->auth_proof()->begin(), m->auth_proof()->end()),
            Bytes(std::begin(proof), std::end(proof)));
  EXPECT_TRUE(CheckMessage(MessageType::kHello, msg, kSegment).ok());
}

TEST(MessageRoundTripTest, HelloAckWithoutAuth) {
  MessageBuilder b;
  const Bytes msg = Copy(b.HelloAck({.protocol_version = 1, .segment_size = 4096}));
  auto r = ParseHelloAck(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->segment_size(), 4096u);
  EXPECT_EQ(r.value()->node_name()->size(), 0u);
  EXPECT_EQ(r.value()->nonce()->size(), 0u);
  EXPECT_TRUE(CheckMessage(MessageType::kHelloAck, msg, kSegment).ok());
}

TEST(MessageRoundTripTest, PartitionRequest) {
  MessageBuilder b;
  const Bytes msg = Copy(b.PartitionRequest("job-1/stage-2/partition-3", 7, 0xABCDEF0123ull, 2));
  auto r = ParsePartitionRequest(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->partition_id()->str(), "job-1/stage-2/partition-3");
  EXPECT_EQ(r.value()->subpartition(), 7u);
  EXPECT_EQ(r.value()->receiver_id(), 0xABCDEF0123ull);
  EXPECT_EQ(r.value()->initial_credit(), 2);
  // Zero exclusive buffers (all floating) is a legal configuration.
  EXPECT_TRUE(ParsePartitionRequest(b.PartitionRequest("p", 0, 1, 0)).ok());
}

TEST(MessageRoundTripTest, AddCredit) {
  MessageBuilder b;
  const Bytes msg = Copy(b.AddCredit(42, 3));
  auto r = ParseAddCredit(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->receiver_id(), 42u);
  EXPECT_EQ(r.value()->credit(), 3);
}

TEST(MessageRoundTripTest, BufferResponse) {
  MessageBuilder b;
  const Bytes msg = Copy(b.BufferResponse({.receiver_id = 9,
                                           .sequence_number = 1234,
                                           .backlog = 5,
                                           .data_type = buffer::DataType::kEndOfPartition,
                                           .flags = kFlagChecksummed,
                                           .payload_size = kSegment,
                                           .checksum = 0xDEADBEEF}));
  auto r = ParseBufferResponse(msg, kSegment);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const fb::BufferResponse* m = r.value();
  EXPECT_EQ(m->receiver_id(), 9u);
  EXPECT_EQ(m->sequence_number(), 1234);
  EXPECT_EQ(m->backlog(), 5);
  EXPECT_EQ(FromWire(m->data_type()), buffer::DataType::kEndOfPartition);
  EXPECT_EQ(m->flags(), kFlagChecksummed);
  EXPECT_EQ(m->payload_size(), kSegment);
  EXPECT_EQ(m->checksum(), 0xDEADBEEFu);
}

TEST(MessageRoundTripTest, BacklogAnnouncement) {
  MessageBuilder b;
  const Bytes msg = Copy(b.BacklogAnnouncement(77, 0));
  auto r = ParseBacklogAnnouncement(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->receiver_id(), 77u);
  EXPECT_EQ(r.value()->backlog(), 0);
}

TEST(MessageRoundTripTest, CancelCloseHeartbeat) {
  MessageBuilder b;
  Bytes msg = Copy(b.CancelPartitionRequest(UINT64_MAX));
  auto cancel = ParseCancelPartitionRequest(msg);
  ASSERT_TRUE(cancel.ok()) << cancel.status().ToString();
  EXPECT_EQ(cancel.value()->receiver_id(), UINT64_MAX);

  msg = Copy(b.CloseRequest());
  EXPECT_TRUE(ParseCloseRequest(msg).ok());

  msg = Copy(b.Heartbeat(123456789012345ull));
  auto hb = ParseHeartbeat(msg);
  ASSERT_TRUE(hb.ok()) << hb.status().ToString();
  EXPECT_EQ(hb.value()->timestamp_ns(), 123456789012345ull);
}

TEST(MessageRoundTripTest, ErrorResponseWithAndWithoutReceiver) {
  MessageBuilder b;
  Bytes msg = Copy(b.ErrorResponse(fb::ErrorCode::PartitionNotFound, "partition p not found", 0));
  auto r = ParseErrorResponse(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->code(), fb::ErrorCode::PartitionNotFound);
  EXPECT_EQ(r.value()->message()->str(), "partition p not found");
  ASSERT_TRUE(r.value()->receiver_id().has_value());  // 0 is a receiver id, not "none"
  EXPECT_EQ(r.value()->receiver_id().value(), 0u);

  msg = Copy(b.ErrorResponse(fb::ErrorCode::ShuttingDown, "bye"));
  r = ParseErrorResponse(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r.value()->receiver_id().has_value());
}

TEST(MessageRoundTripTest, ErrorResponseMessageIsCutAtCharacterBoundary) {
  MessageBuilder b;
  // 4095 ASCII bytes then a 3-byte character: the character would straddle the limit.
  std::string text(kMaxErrorMessageLength - 1, 'x');
  text += "\xE2\x82\xAC";  // U+20AC
  auto r = ParseErrorResponse(b.ErrorResponse(fb::ErrorCode::Internal, text));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->message()->size(), kMaxErrorMessageLength - 1);

  r = ParseErrorResponse(b.ErrorResponse(fb::ErrorCode::Internal, std::string(10000, 'y')));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->message()->size(), kMaxErrorMessageLength);
}

// ---- Field checks the Verifier lets through ----

TEST(MessageFieldTest, AddCreditMustBePositive) {
  MessageBuilder b;
  ExpectProtocolError(ParseAddCredit(b.AddCredit(17, 0)).status(),
                      {"AddCredit", "receiver 17", "credit 0"});
  ExpectProtocolError(ParseAddCredit(b.AddCredit(17, -5)).status(), {"credit -5"});
  ExpectProtocolError(CheckMessage(MessageType::kAddCredit, b.AddCredit(1, INT32_MIN), kSegment),
                      {"credit -2147483648"});
}

TEST(MessageFieldTest, PartitionRequestFields) {
  MessageBuilder b;
  ExpectProtocolError(ParsePartitionRequest(b.PartitionRequest("", 0, 5, 2)).status(),
                      {"PartitionRequest", "receiver 5", "partition_id", "missing or empty"});
  const std::string long_id(kMaxPartitionIdLength + 1, 'p');
  ExpectProtocolError(ParsePartitionRequest(b.PartitionRequest(long_id, 0, 5, 2)).status(),
                      {"partition_id is 257 bytes", "256"});
  EXPECT_TRUE(
      ParsePartitionRequest(b.PartitionRequest(std::string(kMaxPartitionIdLength, 'p'), 0, 5, 2))
          .ok());
  ExpectProtocolError(ParsePartitionRequest(b.PartitionRequest("p", 0, 5, -1)).status(),
                      {"initial_credit -1"});

  // A message without the partition_id field at all.
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::CreatePartitionRequest(fbb, 0, 1, 5, 2));
  ExpectProtocolError(ParsePartitionRequest({fbb.GetBufferPointer(), fbb.GetSize()}).status(),
                      {"partition_id is missing"});
}

TEST(MessageFieldTest, BufferResponseFields) {
  MessageBuilder b;
  BufferResponseFields f{.receiver_id = 3, .sequence_number = 0, .backlog = 0, .payload_size = 100};
  ASSERT_TRUE(ParseBufferResponse(b.BufferResponse(f), kSegment).ok());

  BufferResponseFields bad = f;
  bad.sequence_number = -1;
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"BufferResponse", "receiver 3", "sequence_number -1"});
  bad = f;
  bad.backlog = -2;
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"backlog -2"});
  bad = f;
  bad.data_type = static_cast<buffer::DataType>(7);  // raw out-of-range enum value
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"data_type 7", "DataType"});
  bad = f;
  bad.flags = 0x04;
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"flags 0x04"});
  bad = f;
  bad.flags = kFlagCompressed | kFlagChecksummed;  // version 1 has no compression
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"flags 0x03", "compressed (0x01)", "version 1"});
  bad = f;
  bad.flags = kFlagChecksummed;
  EXPECT_TRUE(ParseBufferResponse(b.BufferResponse(bad), kSegment).ok());
  bad = f;
  bad.payload_size = kSegment + 1;
  ExpectProtocolError(ParseBufferResponse(b.BufferResponse(bad), kSegment).status(),
                      {"payload_size 32769", "segment size 32768"});
  ExpectProtocolError(CheckMessage(MessageType::kBufferResponse, b.BufferResponse(bad), kSegment),
                      {"payload_size 32769"});
}

TEST(MessageFieldTest, BacklogAnnouncementNegative) {
  MessageBuilder b;
  ExpectProtocolError(ParseBacklogAnnouncement(b.BacklogAnnouncement(8, -1)).status(),
                      {"BacklogAnnouncement", "receiver 8", "backlog -1"});
}

TEST(MessageFieldTest, ErrorResponseFields) {
  MessageBuilder b;
  ExpectProtocolError(
      ParseErrorResponse(b.ErrorResponse(static_cast<fb::ErrorCode>(200), "x")).status(),
      {"ErrorResponse", "code 200", "ErrorCode"});
  // The builder truncates; a peer's encoder may not.
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(fb::CreateErrorResponseDirect(fbb, fb::ErrorCode::Internal,
                                           std::string(kMaxErrorMessageLength + 1, 'z').c_str()));
  ExpectProtocolError(ParseErrorResponse({fbb.GetBufferPointer(), fbb.GetSize()}).status(),
                      {"message is 4097 bytes"});
}

TEST(MessageFieldTest, HandshakeFields) {
  MessageBuilder b;
  HandshakeFields f{.protocol_version = 1, .segment_size = kSegment, .node_name = "n"};
  ASSERT_TRUE(ParseHello(b.Hello(f)).ok());

  HandshakeFields bad = f;
  bad.protocol_version = 0;
  ExpectProtocolError(ParseHello(b.Hello(bad)).status(), {"Hello", "protocol_version 0"});
  for (uint32_t seg : {0u, 2048u, 5000u, 2u * 1024 * 1024}) {
    bad = f;
    bad.segment_size = seg;
    ExpectProtocolError(ParseHelloAck(b.HelloAck(bad)).status(),
                        {"HelloAck", "segment_size " + std::to_string(seg)});
  }
  const std::string long_name(kMaxNodeNameLength + 1, 'n');
  bad = f;
  bad.node_name = long_name;
  ExpectProtocolError(ParseHello(b.Hello(bad)).status(), {"node_name is 257 bytes"});
  const Bytes big(kMaxNonceLength + 1, 1);
  bad = f;
  bad.nonce = big;
  ExpectProtocolError(ParseHello(b.Hello(bad)).status(), {"nonce is 65 bytes"});
  bad = f;
  bad.auth_proof = big;
  ExpectProtocolError(ParseHello(b.Hello(bad)).status(), {"auth_proof is 65 bytes"});
}

TEST(MessageFieldTest, VerifyMessageTellsMalformedFromWrongField) {
  MessageBuilder b;
  const Bytes zero_credit = Copy(b.AddCredit(1, 0));
  EXPECT_TRUE(VerifyMessage(MessageType::kAddCredit, zero_credit).ok());
  EXPECT_FALSE(CheckMessage(MessageType::kAddCredit, zero_credit, kSegment).ok());

  const Bytes garbage(16, 0xFF);
  ExpectProtocolError(VerifyMessage(MessageType::kAddCredit, garbage), {"malformed AddCredit"});
  ExpectProtocolError(CheckMessage(MessageType::kAddCredit, garbage, kSegment),
                      {"malformed AddCredit"});
  ExpectProtocolError(CheckMessage(static_cast<MessageType>(60), zero_credit, kSegment),
                      {"message type 60"});
}

// ---- Malformed input ----

TEST(MessageMalformedTest, EmptyAndTinyInput) {
  ExpectProtocolError(ParseAddCredit({}).status(), {"malformed AddCredit", "0 bytes"});
  const uint8_t three[] = {1, 2, 3};
  ExpectProtocolError(ParseHeartbeat(three).status(), {"malformed Heartbeat", "3 bytes"});
}

TEST(MessageMalformedTest, TruncatedMessagesFail) {
  MessageBuilder b;
  const Bytes msg = Copy(b.PartitionRequest("some-partition", 1, 2, 3));
  for (size_t n = 0; n < msg.size(); ++n) {
    auto r = ParsePartitionRequest({msg.data(), n});
    // The string is laid out last; only its alignment padding (< 4 bytes) may be cut.
    if (r.ok()) {
      EXPECT_GE(n + 4, msg.size()) << n;
      EXPECT_EQ(r.value()->partition_id()->str(), "some-partition");
    }
  }
  EXPECT_FALSE(ParsePartitionRequest({msg.data(), msg.size() - 4}).ok());
}

TEST(MessageMalformedTest, RandomBytesAndBitFlipsNeverCrash) {
  std::mt19937 rng(20240611);
  MessageBuilder b;
  const Bytes valid[] = {
      Copy(b.Hello({.segment_size = kSegment, .node_name = "a", .nonce = {}})),
      Copy(b.PartitionRequest("partition", 1, 2, 3)),
      Copy(b.BufferResponse({.receiver_id = 1, .payload_size = 10})),
      Copy(b.ErrorResponse(fb::ErrorCode::Internal, "oops", 5)),
  };
  size_t rejected = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes msg;
    if (i % 2 == 0) {
      msg.resize(rng() % 96);
      for (auto& byte : msg) byte = static_cast<uint8_t>(rng());
    } else {
      msg = valid[rng() % std::size(valid)];
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < flips; ++k)
        msg[rng() % msg.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    const auto type = static_cast<MessageType>(1 + rng() % 10);
    if (!CheckMessage(type, msg, kSegment).ok()) ++rejected;
  }
  EXPECT_GT(rejected, 10000u);
}

// ---- Allocation-free steady state ----

TEST(MessageBuilderTest, SteadyStateEncodingAllocatesNothing) {
  MessageBuilder b;
  const uint8_t nonce[16] = {};
  auto encode_all = [&] {
    size_t total = 0;
    total += b.Hello({.segment_size = kSegment, .node_name = "node", .nonce = nonce}).size();
    total += b.PartitionRequest("partition-id", 1, 2, 3).size();
    total += b.AddCredit(1, 1).size();
    total += b.BufferResponse({.receiver_id = 1, .payload_size = 10}).size();
    total += b.BacklogAnnouncement(1, 1).size();
    total += b.CancelPartitionRequest(1).size();
    total += b.CloseRequest().size();
    total += b.ErrorResponse(fb::ErrorCode::Internal, "x", 1).size();
    total += b.Heartbeat(1).size();
    return total;
  };
  const size_t first = encode_all();
  g_allocations = 0;
  g_counting = true;
  size_t again = 0;
  for (int i = 0; i < 100; ++i) again = encode_all();
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), 0u);
  EXPECT_EQ(again, first);
}

TEST(MessageBuilderTest, ParsingAllocatesNothing) {
  MessageBuilder b;
  const Bytes msg = Copy(b.BufferResponse({.receiver_id = 1, .payload_size = 10}));
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 100; ++i) {
    auto r = ParseBufferResponse(msg, kSegment);
    if (!r.ok()) break;
  }
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), 0u);
}

}  // namespace
}  // namespace sluice::schema

namespace sluice::schema {
namespace {

// Buffer debloating's announcement (MessageType 12): round trip, and 0 refused as a wrong field
// (the Verifier passes it) with the receiver and the value named.
TEST(MessageRoundTripTest, BufferSizeAnnouncement) {
  MessageBuilder b;
  Bytes msg = Copy(b.BufferSizeAnnouncement(0x1234567890ull, 4096));
  auto r = ParseBufferSizeAnnouncement(msg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value()->receiver_id(), 0x1234567890ull);
  EXPECT_EQ(r.value()->buffer_size(), 4096u);
  EXPECT_TRUE(CheckMessage(MessageType::kBufferSizeAnnouncement, msg, 0).ok());
  EXPECT_EQ(MessageTypeName(MessageType::kBufferSizeAnnouncement), "BufferSizeAnnouncement");

  msg = Copy(b.BufferSizeAnnouncement(0xFFFFFFFFull, UINT32_MAX));  // huge: the server clamps
  EXPECT_TRUE(ParseBufferSizeAnnouncement(msg).ok());

  msg = Copy(b.BufferSizeAnnouncement(7, 0));
  r = ParseBufferSizeAnnouncement(msg);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), sluice::StatusCode::kProtocolError);
  EXPECT_NE(r.status().message().find("receiver 7: buffer_size 0"), std::string::npos)
      << r.status().message();
  EXPECT_TRUE(VerifyMessage(MessageType::kBufferSizeAnnouncement, msg).ok());  // a field error
}

}  // namespace
}  // namespace sluice::schema
