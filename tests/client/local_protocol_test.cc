// The local writer protocol without sockets: frame parsing, every message's codec and its
// refusals, and the record-framing check the daemon runs on every Filled buffer.
#include "client/local_protocol.h"

#include <gtest/gtest.h>

#include <cstring>

#include "shuffle/record_serializer.h"

namespace sluice::client::local {
namespace {

std::span<const uint8_t> Body(const std::vector<uint8_t>& frame) {
  return std::span<const uint8_t>(frame).subspan(kLocalHeaderBytes);
}

TEST(LocalProtocolTest, OpenWriterRoundTripsAndRefusesBadFields) {
  OpenWriterMsg m{"job-1", "tok", 5, 2, 16, WireMode::kBlocking, 8};
  const auto frame = EncodeOpenWriter(m);
  EXPECT_EQ(frame[4], static_cast<uint8_t>(LocalType::kOpenWriter));
  auto back = ParseOpenWriter(Body(frame));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->job, "job-1");
  EXPECT_EQ(back->token, "tok");
  EXPECT_EQ(back->partition, 5u);
  EXPECT_EQ(back->attempt, 2u);
  EXPECT_EQ(back->subpartitions, 16u);
  EXPECT_EQ(back->mode, WireMode::kBlocking);
  EXPECT_EQ(back->credit, 8u);

  auto bad = [&](OpenWriterMsg msg, const char* fragment) {
    auto f = EncodeOpenWriter(msg);
    auto r = ParseOpenWriter(Body(f));
    ASSERT_FALSE(r.ok()) << fragment;
    EXPECT_EQ(r.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().message();
  };
  bad({"", "t", 0, 0, 1}, "job id of 0 bytes");
  bad({std::string(257, 'j'), "t", 0, 0, 1}, "job id of 257 bytes");
  bad({"j", std::string(257, 't'), 0, 0, 1}, "token of 257 bytes");
  bad({"j", "t", 0, 0, 0}, "subpartitions 0");
  bad({"j", "t", 0, 0, 1, WireMode::kPipelined, kMaxWriterCredit + 1}, "credit 1025");
  auto f = EncodeOpenWriter(m);
  f[kLocalHeaderBytes + 12] = 7;  // mode
  EXPECT_NE(ParseOpenWriter(Body(f)).status().message().find("mode 7"), std::string::npos);
  f = EncodeOpenWriter(m);
  EXPECT_FALSE(ParseOpenWriter(Body(f).first(Body(f).size() - 1)).ok());  // lengths disagree
  EXPECT_FALSE(ParseOpenWriter(Body(f).first(10)).ok());
  EXPECT_EQ(back->retention_s, 0u) << "no trailing retention: the daemon's";
}

TEST(LocalProtocolTest, OpenWriterCarriesAnOptionalRetention) {
  OpenWriterMsg m{"job-1", "tok", 5, 2, 16, WireMode::kBlocking, 8, 90};
  auto f = EncodeOpenWriter(m);
  EXPECT_EQ(Body(f).size(), 24u + 5 + 3 + 4);
  auto back = ParseOpenWriter(Body(f));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->retention_s, 90u);
  EXPECT_EQ(back->token, "tok");
  // A hostile trailing retention: 0 (it must be left out instead) and over a year.
  for (const uint32_t bad : {0u, kMaxRetentionSeconds + 1}) {
    auto g = EncodeOpenWriter(m);
    const size_t at = kLocalHeaderBytes + 24 + 5 + 3;
    for (int i = 0; i < 4; ++i) g[at + i] = static_cast<uint8_t>(bad >> (8 * i));
    auto r = ParseOpenWriter(Body(g));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(r.status().message().find("retention of " + std::to_string(bad) + " s"),
              std::string::npos)
        << r.status().message();
  }
  // Neither the plain length nor the length with the retention: refused.
  f.push_back(0);
  EXPECT_FALSE(ParseOpenWriter(Body(f)).ok());
}

TEST(LocalProtocolTest, GrantFilledCreditErrorAndText) {
  auto g = ParseGrant(Body(EncodeGrant({32768, 8})));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->segment_size, 32768u);
  EXPECT_EQ(g->slots, 8u);
  EXPECT_FALSE(ParseGrant(Body(EncodeGrant({3000, 8}))).ok());
  EXPECT_FALSE(ParseGrant(Body(EncodeGrant({4096, 0}))).ok());

  uint8_t filled[kFilledFrameBytes];
  EncodeFilled({3, 1, 100}, filled);
  auto fm = ParseFilled({filled + kLocalHeaderBytes, 12});
  ASSERT_TRUE(fm.ok());
  EXPECT_EQ(fm->subpartition, 3u);
  EXPECT_EQ(fm->slot, 1u);
  EXPECT_EQ(fm->size, 100u);
  EXPECT_FALSE(ParseFilled({filled + kLocalHeaderBytes, 11}).ok());

  const std::vector<uint32_t> slots{4, 0, 7};
  auto c = ParseCredit(Body(EncodeCredit(slots)));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, slots);
  auto cf = EncodeCredit(slots);
  cf.pop_back();
  EXPECT_FALSE(ParseCredit(Body(cf)).ok());
  EXPECT_FALSE(ParseCredit(Body(EncodeCredit({}))).ok());

  auto e = ParseError(Body(EncodeError(Status(StatusCode::kPermissionDenied, "no"))));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(ToStatus(*e).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ToStatus(*e).message(), "no");
  std::vector<uint8_t> zero{0, 0};
  EXPECT_FALSE(ParseError(zero).ok());  // OK is no error

  const auto text = EncodeText(LocalType::kAbort, std::string(5000, 'x'));
  EXPECT_EQ(Body(text).size(), kMaxReasonLength);  // cut
  EXPECT_FALSE(ParseText(LocalType::kAbort, Body(text), 100).ok());
}

TEST(LocalProtocolTest, ParserSplitsFramesAndRefusesBadHeaders) {
  LocalFrameParser p;
  auto a = EncodeText(LocalType::kCommit, "");
  auto b = EncodeText(LocalType::kAbort, "why");
  std::vector<uint8_t> stream = a;
  stream.insert(stream.end(), b.begin(), b.end());
  // Fed one byte at a time: frames come out whole and in order.
  std::vector<std::pair<uint8_t, std::string>> got;
  for (uint8_t byte : stream) {
    auto tail = p.WritableTail(1);
    tail[0] = byte;
    p.Commit(1);
    while (true) {
      auto f = p.Next();
      ASSERT_TRUE(f.ok());
      if (!f->has_value()) break;
      got.emplace_back((*f)->type, std::string((*f)->body.begin(), (*f)->body.end()));
    }
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, static_cast<uint8_t>(LocalType::kCommit));
  EXPECT_EQ(got[1].second, "why");
  EXPECT_EQ(p.buffered(), 0u);

  LocalFrameParser q;
  uint8_t hdr[8] = {0, 0, 0, 0, 63, 0, 0, 0};
  std::memcpy(q.WritableTail(8).data(), hdr, 8);
  q.Commit(8);
  EXPECT_NE(q.Next().status().message().find("unknown type 63"), std::string::npos);
  LocalFrameParser r;
  const uint32_t big = kMaxLocalBody + 1;
  std::memcpy(hdr, &big, 4);
  hdr[4] = 69;
  std::memcpy(r.WritableTail(8).data(), hdr, 8);
  r.Commit(8);
  EXPECT_NE(r.Next().status().message().find("at most 65536"), std::string::npos);
}

// Frames records with the real RecordSerializer into buffers of `seg` bytes.
std::vector<std::vector<uint8_t>> Serialize(const std::vector<std::string>& records, uint32_t seg) {
  std::vector<std::vector<uint8_t>> out;
  shuffle::RecordSerializer ser;
  buffer::Buffer b = buffer::AllocateUnpooled(seg);
  for (const std::string& r : records) {
    EXPECT_TRUE(ser.Begin({reinterpret_cast<const uint8_t*>(r.data()), r.size()}).ok());
    while (true) {
      auto progress = ser.CopyTo(b);
      if (progress == shuffle::RecordSerializer::Progress::kRecordDoneBufferHasRoom) break;
      out.emplace_back(b.data(), b.data() + b.size());
      b.SetSize(0);
      if (progress == shuffle::RecordSerializer::Progress::kRecordDoneBufferFull) break;
    }
  }
  if (b.size() > 0) out.emplace_back(b.data(), b.data() + b.size());
  return out;
}

TEST(RecordFramingTest, AcceptsWhatRecordSerializerWritesAcrossBuffers) {
  std::vector<std::string> records;
  for (int i = 0; i < 200; ++i) records.push_back(std::string(i * 37 % 300, 'x'));
  records.push_back(std::string(10000, 'L'));  // spans three 4 KiB buffers
  records.push_back("");
  for (uint32_t seg : {4096u, 4099u}) {  // 4099: prefixes split across buffers too
    RecordFraming framing;
    uint64_t counted = 0;
    for (const auto& buf : Serialize(records, seg)) {
      auto n = framing.Check(buf);
      ASSERT_TRUE(n.ok()) << n.status().ToString();
      counted += *n;
    }
    EXPECT_EQ(counted, records.size());
    EXPECT_TRUE(framing.AtBoundary());
  }
}

TEST(RecordFramingTest, EveryCutOfAStreamCountsTheSameRecords) {
  const std::vector<std::string> records{"", "a", "bcdefgh", std::string(300, 'x'), "yz", ""};
  const auto buffers = Serialize(records, 1u << 16);  // one buffer: the whole stream
  ASSERT_EQ(buffers.size(), 1u);
  const std::vector<uint8_t>& stream = buffers[0];
  for (size_t a = 0; a <= stream.size(); a += 1) {
    for (size_t b = a; b <= stream.size(); b += 7) {
      RecordFraming framing;
      uint64_t counted = 0;
      for (auto [from, to] : {std::pair{size_t{0}, a}, std::pair{a, b}, std::pair{b, stream.size()}}) {
        auto n = framing.Check(std::span<const uint8_t>(stream).subspan(from, to - from));
        ASSERT_TRUE(n.ok()) << a << " " << b;
        counted += *n;
      }
      ASSERT_EQ(counted, records.size()) << "cuts at " << a << " and " << b;
      ASSERT_TRUE(framing.AtBoundary()) << a << " " << b;
    }
  }
}

TEST(RecordFramingTest, RefusesOverlongPrefixesAndReportsAnUnfinishedRecord) {
  RecordFraming framing(1000);
  uint8_t buf[12] = {};
  shuffle::StoreRecordLength(buf, 4);
  shuffle::StoreRecordLength(buf + 8, 1001);
  auto r = framing.Check(buf);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("length prefix 1001 at offset 8 is over the limit of 1000"),
            std::string::npos)
      << r.status().message();

  RecordFraming open;
  uint8_t part[6] = {};
  shuffle::StoreRecordLength(part, 10);  // 10 bytes announced, 2 present
  ASSERT_TRUE(open.Check(part).ok());
  EXPECT_FALSE(open.AtBoundary());
  RecordFraming split;
  ASSERT_TRUE(split.Check(std::span<const uint8_t>(part, 2)).ok());  // half a prefix
  EXPECT_FALSE(split.AtBoundary());
}

}  // namespace
}  // namespace sluice::client::local
