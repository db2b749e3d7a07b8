// Tests of RecordWriter and the partitioners. Every test ends with the leak check.
#include "shuffle/record_writer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/record_serializer.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

using buffer::DataType;
using buffer::NetworkBufferPool;

constexpr uint32_t kSegment = 4096;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(RoundRobinPartitionerTest, Cycles) {
  RoundRobinPartitioner rr;
  std::vector<uint32_t> got;
  for (int i = 0; i < 7; ++i) got.push_back(rr.Select(Bytes("x"), 3));
  EXPECT_EQ(got, (std::vector<uint32_t>{0, 1, 2, 0, 1, 2, 0}));
  EXPECT_EQ(rr.Select(Bytes("x"), 1), 0u);
  EXPECT_EQ(rr.Select(Bytes("x"), 1), 0u);
}

TEST(HashTest, StableAcrossBuildsAndHosts) {
  // Pinned values: changing the hash would move keys between subpartitions of running jobs.
  EXPECT_EQ(HashBytes(Bytes("")), 0x2d993ab65a618067ull);
  const uint64_t a = HashBytes(Bytes("user-42"));
  EXPECT_EQ(a, HashBytes(Bytes("user-42")));
  EXPECT_NE(a, HashBytes(Bytes("user-43")));
  EXPECT_NE(HashBytes(Bytes("user-42"), 1), a) << "the seed matters";
  EXPECT_EQ(HashBytes(Bytes("sluice")), 0x4984c3b5fd0dd48full);
  EXPECT_EQ(HashBytes(Bytes("a key that is longer than eight bytes")), 0xd16fd4088387fc98ull);
  EXPECT_EQ(Mix64(1), 0xb456bcfc34c2cb2cull);
}

TEST(HashTest, EveryInputBitMatters) {
  // Flipping any one input bit flips about half of the output bits.
  std::vector<uint8_t> key(24, 0x5A);
  const uint64_t base = HashBytes(key);
  int total = 0;
  for (size_t i = 0; i < key.size() * 8; ++i) {
    key[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
    const int flipped = __builtin_popcountll(base ^ HashBytes(key));
    key[i / 8] ^= static_cast<uint8_t>(1u << (i % 8));
    EXPECT_GT(flipped, 12) << "bit " << i;
    total += flipped;
  }
  const double mean = static_cast<double>(total) / (key.size() * 8);
  EXPECT_NEAR(mean, 32.0, 2.0);
}

TEST(KeyHashPartitionerTest, SameKeySameSubpartition) {
  KeyHashPartitioner p = KeyHashPartitioner::OnFixedRange(0, 8);
  std::string a = "key00001|payload one";
  std::string b = "key00001|another payload entirely";
  for (uint32_t n : {1u, 2u, 7u, 64u, 1000u}) {
    EXPECT_EQ(p.Select(Bytes(a), n), p.Select(Bytes(b), n));
    EXPECT_LT(p.Select(Bytes(a), n), n);
  }
  KeyHashPartitioner again = KeyHashPartitioner::OnFixedRange(0, 8);
  EXPECT_EQ(p.Select(Bytes(a), 13), again.Select(Bytes(a), 13)) << "stable between instances";
  // A record shorter than the range hashes what it has.
  EXPECT_LT(p.Select(Bytes("k"), 5), 5u);
  EXPECT_LT(p.Select({}, 5), 5u);
}

TEST(KeyHashPartitionerTest, SpreadsKeysEvenly) {
  constexpr uint32_t kN = 8;
  constexpr int kKeys = 16000;
  struct Case {
    const char* name;
    KeyHashPartitioner partitioner;
  };
  std::vector<Case> cases;
  cases.push_back({"whole record", KeyHashPartitioner()});
  cases.push_back({"key bytes", KeyHashPartitioner::OnKeyBytes(
                                    [](std::span<const uint8_t> r) { return r.subspan(0, 8); })});
  cases.push_back({"integer key", KeyHashPartitioner::OnKey([](std::span<const uint8_t> r) {
                     uint64_t k;
                     std::memcpy(&k, r.data(), 8);
                     return k;  // consecutive integers: the mix must spread them
                   })});
  for (Case& c : cases) {
    std::vector<int> counts(kN, 0);
    for (uint64_t k = 0; k < kKeys; ++k) {
      uint8_t rec[12];
      std::memcpy(rec, &k, 8);
      std::memset(rec + 8, 0xEE, 4);
      ++counts[c.partitioner.Select(rec, kN)];
    }
    for (uint32_t i = 0; i < kN; ++i) {
      EXPECT_NEAR(counts[i], kKeys / kN, kKeys / kN / 8) << c.name << ", subpartition " << i;
    }
  }
}

class RecordWriterTest : public ::testing::Test {
 protected:
  void SetUp() override { global_ = testutil::MakeNetworkBufferPool(64, kSegment); }
  void TearDown() override {
    const buffer::NetworkBufferPoolStats s = global_->Stats();
    EXPECT_EQ(s.available, s.total) << "leak check: " << global_->DebugString();
    EXPECT_EQ(s.local_pools, 0u);
  }
  std::shared_ptr<ResultPartition> NewPartition(uint32_t n) {
    ShuffleOptions o;
    o.credit.segment_size = kSegment;
    o.buffer_timeout = kBufferTimeoutOff;
    return std::move(ResultPartition::Create("writer-test", n, global_, o)).value();
  }
  // Every record and event of a finished subpartition, events as "#event".
  static std::vector<std::string> ReadAll(ResultPartition& p, uint32_t sp) {
    std::vector<std::string> out;
    auto view = std::move(p.CreateView(sp, nullptr)).value();
    RecordDeserializer de;
    while (true) {
      auto r = view->PollNext();
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok() || !r.value().has_value()) break;
      buffer::Buffer b = std::move(r.value()->buffer);
      if (b.type() == DataType::kEndOfPartition) {
        out.push_back("#eop");
      } else if (b.type() == DataType::kEvent) {
        out.push_back("#" + std::string(reinterpret_cast<const char*>(b.data()), b.size()));
      } else {
        de.SetNextBuffer(std::move(b));
        std::span<const uint8_t> rec;
        while (de.GetNext(&rec).value() == RecordDeserializer::Next::kRecord) {
          out.emplace_back(reinterpret_cast<const char*>(rec.data()), rec.size());
        }
      }
    }
    return out;
  }
  std::shared_ptr<NetworkBufferPool> global_;
};

TEST_F(RecordWriterTest, KeyHashRoutesRecordsAndBroadcastReachesAll) {
  constexpr uint32_t kN = 3;
  std::shared_ptr<ResultPartition> p = NewPartition(kN);
  RecordWriter w(p, std::make_unique<KeyHashPartitioner>(KeyHashPartitioner::OnKeyBytes(
                        [](std::span<const uint8_t> r) { return r.subspan(0, 2); })));
  KeyHashPartitioner expected =
      KeyHashPartitioner::OnKeyBytes([](std::span<const uint8_t> r) { return r.subspan(0, 2); });
  std::map<uint32_t, std::vector<std::string>> want;
  for (int i = 0; i < 60; ++i) {
    const std::string rec = "k" + std::to_string(i % 10) + "-" + std::to_string(i);
    ASSERT_TRUE(w.Emit(Bytes(rec)).ok());
    want[expected.Select(Bytes(rec), kN)].push_back(rec);
  }
  ASSERT_TRUE(w.Broadcast(Bytes("to-all")).ok());
  ASSERT_TRUE(w.BroadcastEvent(Bytes("barrier")).ok());
  ASSERT_TRUE(w.EmitTo(Bytes("direct"), 2).ok());
  ASSERT_TRUE(w.Finish().ok());
  std::set<uint32_t> used;
  for (uint32_t sp = 0; sp < kN; ++sp) {
    std::vector<std::string> expect = want[sp];
    if (!expect.empty()) used.insert(sp);
    expect.push_back("to-all");
    expect.push_back("#barrier");
    if (sp == 2) expect.push_back("direct");
    expect.push_back("#eop");
    EXPECT_EQ(ReadAll(*p, sp), expect) << "subpartition " << sp;
  }
  EXPECT_GE(used.size(), 2u) << "ten keys over three subpartitions";
  p->Release();
}

TEST_F(RecordWriterTest, RoundRobinWriter) {
  std::shared_ptr<ResultPartition> p = NewPartition(2);
  RecordWriter w(p, std::make_unique<RoundRobinPartitioner>());
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(w.Emit(Bytes("r" + std::to_string(i))).ok());
  w.Flush();
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(ReadAll(*p, 0), (std::vector<std::string>{"r0", "r2", "r4", "#eop"}));
  EXPECT_EQ(ReadAll(*p, 1), (std::vector<std::string>{"r1", "r3", "r5", "#eop"}));
  EXPECT_EQ(w.EmitTo(Bytes("late"), 0).code(), StatusCode::kClosed);
  EXPECT_EQ(&w.partition(), p.get());
  p->Release();
}

}  // namespace
// EmitBatch groups by subpartition: every record reaches the subpartition the selector picks,
// in the order it had in the batch, and batches append after one another.
TEST_F(RecordWriterTest, EmitBatchGroupsBySubpartitionKeepingOrder) {
  constexpr uint32_t kN = 3;
  std::shared_ptr<ResultPartition> p = NewPartition(kN);
  RecordWriter w(p, std::make_unique<KeyHashPartitioner>());
  KeyHashPartitioner expected;
  std::map<uint32_t, std::vector<std::string>> want;
  for (int batch = 0; batch < 4; ++batch) {
    std::vector<std::string> recs;
    for (int i = 0; i < 50; ++i) {
      // Some records are larger than a segment, so a group spans buffers.
      const size_t pad = (i % 17 == 0) ? kSegment + 100 : static_cast<size_t>(i % 5);
      recs.push_back("b" + std::to_string(batch) + "-" + std::to_string(i) + std::string(pad, 'x'));
    }
    std::vector<std::span<const uint8_t>> spans;
    for (const std::string& r : recs) {
      spans.push_back(Bytes(r));
      want[expected.Select(Bytes(r), kN)].push_back(r);
    }
    ASSERT_TRUE(w.EmitBatch(spans).ok());
  }
  ASSERT_TRUE(w.EmitBatch({}).ok()) << "an empty batch is fine";
  ASSERT_TRUE(w.Finish().ok());
  uint64_t total = 0;
  for (uint32_t sp = 0; sp < kN; ++sp) {
    std::vector<std::string> expect = want[sp];
    total += expect.size();
    expect.push_back("#eop");
    EXPECT_EQ(ReadAll(*p, sp), expect) << "subpartition " << sp;
  }
  EXPECT_EQ(total, 200u);
  EXPECT_EQ(p->Stats().records, 200u);
  p->Release();
}

TEST_F(RecordWriterTest, EmitBatchToOneSubpartition) {
  std::shared_ptr<ResultPartition> p = NewPartition(2);
  RecordWriter w(p, std::make_unique<RoundRobinPartitioner>());
  const std::vector<std::string> recs = {"a", "", "ccc"};
  std::vector<std::span<const uint8_t>> spans;
  for (const std::string& r : recs) spans.push_back(Bytes(r));
  ASSERT_TRUE(w.EmitBatchTo(spans, 1).ok());
  EXPECT_EQ(w.EmitBatchTo(spans, 2).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(ReadAll(*p, 0), (std::vector<std::string>{"#eop"}));
  EXPECT_EQ(ReadAll(*p, 1), (std::vector<std::string>{"a", "", "ccc", "#eop"}));
  p->Release();
}

// In place through the writer: records filled into the buffers read back exactly, the empty
// record included; a bad subpartition or size writes nothing and never calls fill.
TEST_F(RecordWriterTest, EmitInPlaceToOneSubpartition) {
  std::shared_ptr<ResultPartition> p = NewPartition(2);
  RecordWriter w(p, std::make_unique<RoundRobinPartitioner>());
  auto put = [](const std::string& text) {
    return [text](std::span<uint8_t> out) {
      ASSERT_EQ(out.size(), text.size());
      std::memcpy(out.data(), text.data(), text.size());
    };
  };
  ASSERT_TRUE(w.EmitInPlaceTo(5, 1, put("hello")).ok());
  ASSERT_TRUE(w.EmitInPlaceTo(0, 1, put("")).ok());
  const std::string big(kSegment + 10, 'b');  // larger than a segment: the scratch path
  ASSERT_TRUE(w.EmitInPlaceTo(static_cast<uint32_t>(big.size()), 1, put(big)).ok());
  const std::vector<std::string> recs = {"x", "", "yz", std::string(300, 'q')};
  std::vector<uint32_t> sizes;
  for (const std::string& r : recs) sizes.push_back(static_cast<uint32_t>(r.size()));
  ASSERT_TRUE(w.EmitInPlaceBatchTo(sizes, 1, [&](size_t i, std::span<uint8_t> out) {
                 ASSERT_EQ(out.size(), recs[i].size());
                 std::memcpy(out.data(), recs[i].data(), out.size());
               }).ok());
  int calls = 0;
  auto count = [&](std::span<uint8_t>) { ++calls; };
  EXPECT_EQ(w.EmitInPlaceTo(3, 2, count).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w.EmitInPlaceTo(kMaxRecordLength + 1, 0, count).code(), StatusCode::kInvalidArgument);
  const std::vector<uint32_t> bad = {1, kMaxRecordLength + 1};
  EXPECT_EQ(w.EmitInPlaceBatchTo(bad, 0, [&](size_t, std::span<uint8_t>) { ++calls; }).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(ReadAll(*p, 0), (std::vector<std::string>{"#eop"}));
  EXPECT_EQ(ReadAll(*p, 1),
            (std::vector<std::string>{"hello", "", big, "x", "", "yz", recs[3], "#eop"}));
  EXPECT_EQ(w.EmitInPlaceTo(1, 0, count).code(), StatusCode::kClosed);
  EXPECT_EQ(calls, 0);
  p->Release();
}

}  // namespace sluice::shuffle
