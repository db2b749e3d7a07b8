// The --external job's record check (exactly once, in order, intact, per writer per
// subpartition), its task output parsing, and the --external option defaults: without
// processes or sockets.
#include "tools/harness/ext_task.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tools/harness/harness_options.h"

namespace sluice::harness {
namespace {

std::vector<uint8_t> Record(uint32_t partition, uint32_t attempt, uint32_t sub, uint64_t seq,
                            size_t size = 100) {
  std::vector<uint8_t> r(size);
  FillRecord(r, partition, attempt, sub, seq, /*seed=*/7);
  return r;
}

struct Checker {
  std::map<uint64_t, ReadTally> tallies;
  std::map<uint64_t, uint64_t> next;
  ReadChecks checks;
  void Read(const std::vector<uint8_t>& r, uint32_t sub = 2) {
    CheckRecord(r, sub, &tallies, &next, &checks);
  }
  uint64_t Records(uint32_t partition, uint32_t attempt) {
    return tallies[(uint64_t{partition} << 32) | attempt].records;
  }
};

TEST(ExtRecordTest, InOrderRecordsAreCountedPerPartitionAndAttempt) {
  Checker c;
  for (uint64_t s = 0; s < 3; ++s) c.Read(Record(5, 0, 2, s, 32 + s));
  c.Read(Record(5, 1, 2, 0));
  EXPECT_EQ(c.Records(5, 0), 3u);
  EXPECT_EQ(c.tallies[uint64_t{5} << 32].bytes, 32u + 33 + 34);
  EXPECT_EQ(c.Records(5, 1), 1u);
  EXPECT_EQ(c.checks.duplicated + c.checks.reordered + c.checks.corrupted, 0u);
}

TEST(ExtRecordTest, ADuplicateIsCountedAndNotTallied) {
  Checker c;
  c.Read(Record(1, 0, 2, 0));
  c.Read(Record(1, 0, 2, 1));
  c.Read(Record(1, 0, 2, 1));
  c.Read(Record(1, 0, 2, 0));
  EXPECT_EQ(c.checks.duplicated, 2u);
  EXPECT_EQ(c.Records(1, 0), 2u);
}

TEST(ExtRecordTest, AGapIsReordered) {
  Checker c;
  c.Read(Record(1, 0, 2, 0));
  c.Read(Record(1, 0, 2, 2));
  EXPECT_EQ(c.checks.reordered, 1u);
  EXPECT_EQ(c.Records(1, 0), 2u);
}

TEST(ExtRecordTest, CorruptionIsCaught) {
  Checker c;
  auto flipped = Record(1, 0, 2, 0);
  flipped[60] ^= 0x10;  // payload
  c.Read(flipped);
  auto header = Record(1, 0, 2, 0);
  header[17] ^= 0x01;  // seq
  c.Read(header);
  auto short_one = Record(1, 0, 2, 0);
  short_one.resize(20);
  c.Read(short_one);
  auto cut = Record(1, 0, 2, 0);
  cut.pop_back();  // length field no longer matches
  c.Read(cut);
  c.Read(Record(1, 0, 3, 0));  // another subpartition's record
  EXPECT_EQ(c.checks.corrupted, 5u);
  EXPECT_TRUE(c.tallies.empty());
  c.Read(Record(1, 0, 2, 0));
  EXPECT_EQ(c.Records(1, 0), 1u);
}

TEST(ExtRecordTest, TaskOutputLines) {
  auto out = ParseTaskOutput("opened\noutput 0 1 5 500\noutput 3 0 2 64\nchecks 0 0 0\nend\n");
  EXPECT_EQ(out.count("opened"), 1u);
  EXPECT_EQ(out.count("output"), 2u);
  EXPECT_EQ(out.find("checks")->second, "0 0 0");
  EXPECT_EQ(out.find("end")->second, "");
  EXPECT_EQ(out.count("error"), 0u);
}

int Parse(std::vector<std::string> args, Options* o) {
  args.insert(args.begin(), "sluice-harness");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return ParseOptions(static_cast<int>(argv.size()), argv.data(), o);
}

TEST(ExtOptionsTest, Defaults) {
  Options o;
  ASSERT_EQ(Parse({"--external", "--nodes", "2"}, &o), -1);
  EXPECT_TRUE(o.external);
  EXPECT_FALSE(o.ext_pipelined);
  EXPECT_EQ(o.writers, 4);
  EXPECT_EQ(o.readers, 2);
  EXPECT_EQ(o.attempts, 1);
  EXPECT_EQ(o.total_bytes, 32ull << 20);
}

TEST(ExtOptionsTest, DiskQuotaSetsOrReadsTheQuota) {
  Options o;
  ASSERT_EQ(Parse({"--external", "--fault", "disk-quota"}, &o), -1);
  EXPECT_EQ(o.spill_quota, 2ull << 20);
  EXPECT_EQ(o.daemon_args, (std::vector<std::string>{"--store-memory", "256k",
                                                      "--spill-max-bytes", "2m"}));
  Options given;
  ASSERT_EQ(Parse({"--external", "--fault", "disk-quota", "--daemon-arg",
                   "--spill-max-bytes=3m"},
                  &given),
            -1);
  EXPECT_EQ(given.spill_quota, 3ull << 20);
  EXPECT_EQ(given.daemon_args, (std::vector<std::string>{"--store-memory", "256k",
                                                          "--spill-max-bytes=3m"}));
  Options both;
  ASSERT_EQ(Parse({"--external", "--fault", "disk-quota", "--daemon-arg", "--store-memory=1m",
                   "--daemon-arg", "--spill-max-bytes=3m"},
                  &both),
            -1);
  EXPECT_EQ(both.daemon_args,
            (std::vector<std::string>{"--store-memory=1m", "--spill-max-bytes=3m"}));
}

TEST(ExtOptionsTest, Refusals) {
  Options o;
  EXPECT_EQ(Parse({"--fault", "kill-daemon"}, &o), 2);
  EXPECT_EQ(Parse({"--writers", "3"}, &o), 2);
  EXPECT_EQ(Parse({"--external", "--fault", "sigterm"}, &o), 2);
  EXPECT_EQ(Parse({"--external", "--mode", "pipelined", "--fault", "disk-quota"}, &o), 2);
  EXPECT_EQ(Parse({"--external", "--record-size", "28"}, &o), 2);
  EXPECT_EQ(Parse({"--external", "--producers", "2"}, &o), 2);
  EXPECT_EQ(Parse({"--external", "--nodes", "1", "--fault", "kill-daemon"}, &o), 2);
}

}  // namespace
}  // namespace sluice::harness
