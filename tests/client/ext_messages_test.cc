// The external store's control messages (client/ext_messages.h): a listing fits one frame and
// says what it left out.
#include "client/ext_messages.h"

#include <gtest/gtest.h>

#include "schema/control.h"
#include "schema/messages.h"

namespace sluice::client {
namespace {

ExternalList ListOf(uint32_t n, uint32_t total) {
  ExternalList list;
  for (uint32_t i = 0; i < n; ++i) {
    ExternalPartition p;
    p.job = "job-" + std::to_string(i % 7);
    p.partition = i;
    p.subpartitions = 4;
    p.state = "committed";
    p.bytes = 1000 + i;
    list.partitions.push_back(p);
  }
  list.total = total;
  return list;
}

ExternalList RoundTrip(const ExternalList& list) {
  const std::vector<uint8_t> bytes = EncodeExtList(list);
  EXPECT_LE(bytes.size(), size_t{0xFFFF}) << "over one frame's metadata (kMaxMetadataLength)";
  auto m = schema::ParseExtListResponse(bytes);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? DecodeExtList(**m) : ExternalList{};
}

TEST(ExtMessagesTest, AWholeListingRoundTrips) {
  const ExternalList back = RoundTrip(ListOf(3, 3));
  ASSERT_EQ(back.partitions.size(), 3u);
  EXPECT_EQ(back.total, 3u);
  EXPECT_EQ(back.note, "");
  EXPECT_EQ(back.partitions[2].job, "job-2");
  EXPECT_EQ(back.partitions[2].bytes, 1002u);
}

// More entries than a frame carries: the first that fit, the count of all, and a note.
TEST(ExtMessagesTest, ALongListingIsCutToOneFrameAndSaysSo) {
  const ExternalList back = RoundTrip(ListOf(5000, 5000));
  ASSERT_GT(back.partitions.size(), 100u);
  ASSERT_LT(back.partitions.size(), 5000u);
  EXPECT_EQ(back.total, 5000u);
  EXPECT_EQ(back.note, "listing the first " + std::to_string(back.partitions.size()) +
                           " of 5000 map outputs (ask for one job)");
}

// The store copied only some entries (its cut) but counted them all: the note says so too.
TEST(ExtMessagesTest, AListingCutByTheStoreNamesTheTotal) {
  const ExternalList back = RoundTrip(ListOf(10, 250000));
  EXPECT_EQ(back.partitions.size(), 10u);
  EXPECT_EQ(back.total, 250000u);
  EXPECT_EQ(back.note, "listing the first 10 of 250000 map outputs (ask for one job)");
}

}  // namespace
}  // namespace sluice::client
