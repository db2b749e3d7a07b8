#include "shuffle/record_serializer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

using buffer::Buffer;
using buffer::NetworkBufferPool;

class RecordSerializerTest : public ::testing::Test {
 protected:
  void SetUp() override { pool_ = testutil::MakeNetworkBufferPool(256, 4096); }
  void TearDown() override {
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << "segments leaked";
  }
  Buffer NewBuffer() {
    buffer::MemorySegment* s = pool_->TryRequestSegment();
    EXPECT_NE(s, nullptr);
    return Buffer::Wrap(s, pool_->direct_recycler());
  }
  // Serializes every record into as many buffers as needed.
  std::vector<Buffer> Serialize(const std::vector<std::string>& records) {
    std::vector<Buffer> out;
    RecordSerializer ser;
    Buffer cur = NewBuffer();
    for (const std::string& r : records) {
      EXPECT_TRUE(ser.Begin({reinterpret_cast<const uint8_t*>(r.data()), r.size()}).ok());
      while (true) {
        const auto p = ser.CopyTo(cur);
        if (p == RecordSerializer::Progress::kRecordDoneBufferHasRoom) break;
        out.push_back(std::move(cur));
        cur = NewBuffer();
        if (p == RecordSerializer::Progress::kRecordDoneBufferFull) break;
      }
    }
    if (cur.size() > 0) out.push_back(std::move(cur));
    return out;
  }
  std::vector<std::string> Deserialize(std::vector<Buffer> buffers) {
    std::vector<std::string> got;
    RecordDeserializer de;
    for (Buffer& b : buffers) {
      de.SetNextBuffer(std::move(b));
      std::span<const uint8_t> rec;
      while (true) {
        auto r = de.GetNext(&rec);
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        if (!r.ok() || *r == RecordDeserializer::Next::kNeedMoreData) break;
        got.emplace_back(reinterpret_cast<const char*>(rec.data()), rec.size());
      }
    }
    EXPECT_FALSE(de.HasPartialRecord());
    return got;
  }
  std::shared_ptr<NetworkBufferPool> pool_;
};

TEST_F(RecordSerializerTest, SmallRecordsPackIntoOneBuffer) {
  std::vector<std::string> records = {"a", "bc", "", "defg"};
  auto buffers = Serialize(records);
  ASSERT_EQ(buffers.size(), 1u);
  EXPECT_EQ(buffers[0].size(), 4u * 4 + 1 + 2 + 0 + 4);
  EXPECT_EQ(Deserialize(std::move(buffers)), records);
}

TEST_F(RecordSerializerTest, RecordLargerThanSeveralSegments) {
  std::string big(3 * 4096 + 123, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  std::vector<std::string> records = {"head", big, "tail"};
  auto buffers = Serialize(records);
  EXPECT_EQ(buffers.size(), 4u);
  EXPECT_EQ(Deserialize(std::move(buffers)), records);
}

TEST_F(RecordSerializerTest, RandomSizesRoundTripWithSplitPrefixes) {
  std::mt19937 rng(42);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::string> records;
    size_t total = 0;
    while (total < 60 * 4096) {
      // Mostly tiny records so that length prefixes straddle buffer ends often.
      const size_t n = rng() % 10 == 0 ? rng() % 9000 : rng() % 7;
      std::string r(n, '\0');
      for (char& c : r) c = static_cast<char>(rng());
      total += n + 4;
      records.push_back(std::move(r));
    }
    auto buffers = Serialize(records);
    EXPECT_EQ(Deserialize(std::move(buffers)), records) << "round " << round;
  }
}

TEST_F(RecordSerializerTest, CorruptLengthIsAnError) {
  Buffer b = NewBuffer();
  const uint8_t bad[4] = {0xFF, 0xFF, 0xFF, 0xFF};
  std::memcpy(b.data(), bad, 4);
  b.SetSize(4);
  RecordDeserializer de;
  de.SetNextBuffer(std::move(b));
  std::span<const uint8_t> rec;
  auto r = de.GetNext(&rec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolError);
  EXPECT_NE(r.status().message().find("record of 4294967295 bytes is longer than the limit of " +
                                      std::to_string(kMaxRecordLength) + " bytes"),
            std::string::npos)
      << r.status().message();
  de.Clear();
}

// A length prefix over the reader's limit fails before anything is reserved for it, also when
// the prefix itself is split across buffers; records within the limit still pass.
TEST_F(RecordSerializerTest, LengthOverTheLimitIsRefusedBeforeReserving) {
  RecordDeserializer de;
  de.SetMaxRecordLength(100);
  EXPECT_EQ(de.max_record_length(), 100u);
  Buffer ok = NewBuffer();
  StoreRecordLength(ok.data(), 100);
  std::memset(ok.data() + 4, 7, 100);
  StoreRecordLength(ok.data() + 104, 101);  // complete in this buffer, but over the limit
  std::memset(ok.data() + 108, 7, 101);
  ok.SetSize(209);
  de.SetNextBuffer(std::move(ok));
  std::span<const uint8_t> rec;
  auto r = de.GetNext(&rec);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(*r, RecordDeserializer::Next::kRecord);
  EXPECT_EQ(rec.size(), 100u);
  r = de.GetNext(&rec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "record of 101 bytes is longer than the limit of 100 bytes (corrupt length prefix, or "
            "a producer over the job's record_size_max)");
  de.Clear();

  RecordDeserializer split;
  split.SetMaxRecordLength(1u << 20);
  Buffer first = NewBuffer();
  first.data()[0] = 0x40;  // 0x40000000 = 1 GiB, prefix split 2 + 2
  first.data()[1] = 0x00;
  first.SetSize(2);
  split.SetNextBuffer(std::move(first));
  r = split.GetNext(&rec);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, RecordDeserializer::Next::kNeedMoreData);
  Buffer second = NewBuffer();
  second.data()[0] = 0;
  second.data()[1] = 0;
  second.SetSize(2);
  split.SetNextBuffer(std::move(second));
  r = split.GetNext(&rec);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("record of 1073741824 bytes is longer than the limit of "
                                      "1048576 bytes"),
            std::string::npos)
      << r.status().message();
  split.Clear();
}

TEST_F(RecordSerializerTest, OversizedRecordRejectedAtBegin) {
  RecordSerializer ser;
  std::span<const uint8_t> fake(reinterpret_cast<const uint8_t*>(this), size_t{kMaxRecordLength} + 1);
  Status st = ser.Begin(fake);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(ser.HasPending());
}

}  // namespace
std::vector<std::span<const uint8_t>> Spans(const std::vector<std::string>& records) {
  std::vector<std::span<const uint8_t>> out;
  for (const std::string& r : records) {
    out.emplace_back(reinterpret_cast<const uint8_t*>(r.data()), r.size());
  }
  return out;
}

TEST_F(RecordSerializerTest, AppendWholeStopsAtTheFirstRecordThatDoesNotFit) {
  const std::vector<std::string> records = {std::string(100, 'a'), std::string(3980, 'b'),
                                            std::string(50, 'c'), "d"};
  const auto spans = Spans(records);
  RecordSerializer ser;
  Buffer first = NewBuffer();
  ASSERT_EQ(ser.AppendWhole(first, spans), 2u) << "104 + 3984 bytes leave 8: 'c' needs 54";
  EXPECT_EQ(first.size(), 104u + 3984u);
  EXPECT_FALSE(ser.HasPending());
  // The third is split by Begin/CopyTo, the fourth appended whole after it.
  ASSERT_TRUE(ser.Begin(spans[2]).ok());
  ASSERT_EQ(ser.CopyTo(first), RecordSerializer::Progress::kBufferFullRecordPending);
  Buffer second = NewBuffer();
  ASSERT_EQ(ser.CopyTo(second), RecordSerializer::Progress::kRecordDoneBufferHasRoom);
  EXPECT_EQ(ser.AppendWhole(second, std::span(spans).subspan(3)), 1u);
  EXPECT_EQ(ser.AppendWhole(second, {}), 0u);
  std::vector<Buffer> buffers;
  buffers.push_back(std::move(first));
  buffers.push_back(std::move(second));
  EXPECT_EQ(Deserialize(std::move(buffers)), records);
}

// AppendWhole writes the same bytes as Begin/CopyTo record by record.
TEST_F(RecordSerializerTest, AppendWholeMatchesCopyTo) {
  std::mt19937 rng(7);
  std::vector<std::string> records;
  for (int i = 0; i < 300; ++i) {
    std::string r(rng() % 3 == 0 ? rng() % 700 : rng() % 40, '\0');
    for (char& c : r) c = static_cast<char>(rng());
    records.push_back(std::move(r));
  }
  const std::vector<Buffer> expected = Serialize(records);
  const auto spans = Spans(records);
  std::vector<Buffer> got;
  RecordSerializer ser;
  Buffer cur = NewBuffer();
  size_t done = 0;
  while (done < spans.size()) {
    done += ser.AppendWhole(cur, std::span(spans).subspan(done));
    if (done == spans.size()) break;
    ASSERT_TRUE(ser.Begin(spans[done]).ok());
    while (ser.CopyTo(cur) != RecordSerializer::Progress::kRecordDoneBufferHasRoom) {
      got.push_back(std::move(cur));
      cur = NewBuffer();
    }
    ++done;
  }
  if (cur.size() > 0) got.push_back(std::move(cur));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].size(), expected[i].size()) << "buffer " << i;
    EXPECT_EQ(std::memcmp(got[i].data(), expected[i].data(), got[i].size()), 0) << "buffer " << i;
  }
}

TEST_F(RecordSerializerTest, CheckSize) {
  EXPECT_TRUE(RecordSerializer::CheckSize(0).ok());
  EXPECT_TRUE(RecordSerializer::CheckSize(kMaxRecordLength).ok());
  const Status s = RecordSerializer::CheckSize(size_t{kMaxRecordLength} + 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("larger than the maximum"), std::string::npos) << s.message();
}

}  // namespace sluice::shuffle
