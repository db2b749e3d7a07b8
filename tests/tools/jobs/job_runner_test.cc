// The job runner between two or three ShuffleEnvironments in one process (each a "node" on its
// own loopback port): generated jobs verified record by record, key skew, round robin,
// pointwise, records larger than a segment, file-partition jobs, validation and memory
// refusals, cancel, timeout, throttling and a producer node that dies. Every test ends with
// the leak check: after the runners are gone every environment's pool has all its segments.
#include "tools/daemon/job_runner.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/rss.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "tools/daemon/job_files.h"
#include "tools/daemon/job_records.h"

namespace sluice::daemon {
namespace {

using namespace std::chrono_literals;
using control::JobSpec;
using control::JobState;
using control::JobStatus;

constexpr uint32_t kSegment = 4096;

shuffle::EnvironmentConfig NodeConfig(uint32_t i, uint64_t memory) {
  shuffle::EnvironmentConfig c =
      shuffle::testing::TestEnvironmentConfig("node" + std::to_string(i), memory, kSegment);
  c.options.request_backoff_initial = 20ms;
  c.options.request_timeout = 10s;
  return c;
}

// N environments on loopback; nodes[i] is environment i's endpoint.
struct Cluster {
  explicit Cluster(uint32_t n, uint64_t memory = 8u << 20) {
    for (uint32_t i = 0; i < n; ++i) {
      auto env = shuffle::ShuffleEnvironment::Start(NodeConfig(i, memory));
      EXPECT_TRUE(env.ok()) << env.status().ToString();
      if (!env.ok()) return;
      nodes.push_back(env.value()->endpoint().ToString());
      envs.push_back(std::move(*env));
    }
  }
  ~Cluster() {
    // Runners must be gone first: they hold partitions and gates of these environments.
    for (auto& e : envs) e->Stop();
  }
  std::vector<std::unique_ptr<shuffle::ShuffleEnvironment>> envs;
  std::vector<std::string> nodes;
};

// Every segment back in the pool (buffers in flight come home asynchronously: allow a moment).
void ExpectNoLeak(const Cluster& cluster) {
  for (const auto& env : cluster.envs) {
    testutil::ExpectAllSegmentsBack(*env->pool(), env->config().node_name);
    EXPECT_EQ(env->registry().size(), 0u) << env->config().node_name;
  }
}

JobSpec GeneratedSpec(const Cluster& c, const std::string& id, std::vector<uint32_t> producers,
                      std::vector<uint32_t> consumers, uint64_t records) {
  JobSpec s;
  s.job_id = id;
  s.nodes = c.nodes;
  s.producer_nodes = std::move(producers);
  s.consumer_nodes = std::move(consumers);
  s.records_per_producer = records;
  s.record_size_min = 28;
  s.record_size_max = 200;
  s.key_count = 10000;
  s.seed = 42;
  s.timeout_ms = 60000;
  s.token = std::string(64, 'a');
  return s;
}

std::vector<std::unique_ptr<JobRunner>> StartAll(Cluster& c, const JobSpec& spec,
                                                 const JobRunnerOptions& options = {}) {
  std::vector<std::unique_ptr<JobRunner>> runners;
  for (uint32_t n = 0; n < c.envs.size(); ++n) {
    auto r = JobRunner::Start(c.envs[n].get(), spec, n, options);
    EXPECT_TRUE(r.ok()) << "node " << n << ": " << r.status().ToString();
    if (r.ok()) runners.push_back(std::move(*r));
  }
  return runners;
}

// Runs the job on every node to its end, destroys the runners and returns each node's status.
std::vector<JobStatus> RunToEnd(Cluster& c, const JobSpec& spec,
                                const JobRunnerOptions& options = {}) {
  auto runners = StartAll(c, spec, options);
  std::vector<JobStatus> out;
  for (auto& r : runners) {
    EXPECT_TRUE(r->Wait(60s)) << "job did not end";
    out.push_back(r->Status());
  }
  runners.clear();
  return out;
}

struct Totals {
  std::map<uint32_t, control::ProducerStatus> producers;
  std::map<uint32_t, control::ConsumerStatus> consumers;
};

Totals Gather(const std::vector<JobStatus>& statuses) {
  Totals t;
  for (const JobStatus& s : statuses) {
    for (const auto& p : s.producers) t.producers[p.index] = p;
    for (const auto& c : s.consumers) t.consumers[c.index] = c;
  }
  return t;
}

// Every node succeeded and every channel delivered exactly what its producer sent, with no
// duplicate, reorder or corruption.
Totals ExpectExactlyOnce(const JobSpec& spec, const std::vector<JobStatus>& statuses) {
  for (const JobStatus& s : statuses) {
    EXPECT_EQ(s.state, JobState::kSucceeded) << s.error;
    EXPECT_TRUE(s.error.empty()) << s.error;
  }
  Totals t = Gather(statuses);
  EXPECT_EQ(t.producers.size(), spec.producer_nodes.size());
  EXPECT_EQ(t.consumers.size(), spec.consumer_nodes.size());
  const bool pointwise = spec.pattern == control::Pattern::kPointwise;
  uint64_t received = 0;
  for (const auto& [ci, c] : t.consumers) {
    EXPECT_TRUE(c.done) << "consumer " << ci;
    EXPECT_EQ(c.duplicated, 0u) << "consumer " << ci;
    EXPECT_EQ(c.reordered, 0u) << "consumer " << ci;
    EXPECT_EQ(c.corrupted, 0u) << "consumer " << ci;
    EXPECT_TRUE(c.error.empty()) << c.error;
    EXPECT_EQ(c.records_per_producer.size(), spec.producer_nodes.size());
    uint64_t sum = 0;
    for (uint32_t p = 0; p < c.records_per_producer.size(); ++p) {
      const auto& prod = t.producers[p];
      const uint64_t sent = pointwise ? (p == ci ? prod.records_per_consumer.at(0) : 0)
                                      : prod.records_per_consumer.at(ci);
      EXPECT_EQ(c.records_per_producer[p], sent)
          << "channel producer " << p << " -> consumer " << ci;
      sum += c.records_per_producer[p];
    }
    EXPECT_EQ(c.records, sum);
    received += c.records;
  }
  uint64_t sent = 0;
  for (const auto& [pi, p] : t.producers) {
    EXPECT_TRUE(p.done) << "producer " << pi;
    EXPECT_TRUE(p.error.empty()) << p.error;
    sent += p.records;
  }
  if (spec.kind == control::JobKind::kGenerated) {
    EXPECT_EQ(sent, spec.records_per_producer * spec.producer_nodes.size());
  }
  EXPECT_EQ(received, sent);
  return t;
}

// --- The pieces (job_records.h) ---

TEST(JobRecordsTest, GeneratedRecordRoundTripsAndCorruptionIsCaught) {
  std::vector<uint8_t> rec(97);
  WriteGeneratedRecord(rec, 7, 3, 12345, 99);
  GeneratedRecord r;
  ASSERT_TRUE(ParseGeneratedRecord(rec, &r));
  EXPECT_EQ(r.producer, 3u);
  EXPECT_EQ(r.sequence, 12345u);
  EXPECT_EQ(r.key, 99u);
  EXPECT_EQ(r.size, 97u);
  // Deterministic: the same inputs give the same bytes.
  std::vector<uint8_t> again(97);
  WriteGeneratedRecord(again, 7, 3, 12345, 99);
  EXPECT_EQ(rec, again);
  for (size_t i : {size_t{0}, size_t{30}, size_t{96}}) {
    auto bad = rec;
    bad[i] ^= 0x10;
    EXPECT_FALSE(ParseGeneratedRecord(bad, &r)) << "flipped byte " << i;
  }
  EXPECT_FALSE(ParseGeneratedRecord(std::span(rec).first(96), &r)) << "truncated";
  std::vector<uint8_t> smallest(28);
  WriteGeneratedRecord(smallest, 1, 0, 0, 0);
  EXPECT_TRUE(ParseGeneratedRecord(smallest, &r));
}

TEST(JobRecordsTest, SequenceTrackerTellsDuplicatesFromReorders) {
  SequenceTracker t;
  using O = SequenceTracker::Outcome;
  EXPECT_EQ(t.Observe(0), O::kInOrder);
  EXPECT_EQ(t.Observe(1), O::kInOrder);
  EXPECT_EQ(t.Observe(1), O::kDuplicate);
  EXPECT_EQ(t.Observe(4), O::kInOrder);  // 2 and 3 missing so far
  EXPECT_EQ(t.missing(), 2u);
  EXPECT_EQ(t.Observe(3), O::kReordered);
  EXPECT_EQ(t.Observe(3), O::kDuplicate);
  EXPECT_EQ(t.Observe(0), O::kDuplicate);
  EXPECT_EQ(t.Observe(4), O::kDuplicate);
  EXPECT_EQ(t.missing(), 1u);
  EXPECT_EQ(t.Observe(2), O::kReordered);
  EXPECT_EQ(t.missing(), 0u);
  EXPECT_EQ(t.Observe(5), O::kInOrder);
  SequenceTracker late_start;
  EXPECT_EQ(late_start.Observe(2), O::kInOrder);
  EXPECT_EQ(late_start.Observe(0), O::kReordered);
  EXPECT_EQ(late_start.missing(), 1u);
}

TEST(JobRecordsTest, SequenceTrackerStaysBoundedUnderAdversarialSequences) {
  // The old tracker kept one map entry per hole: every other sequence is a hole here.
  static_assert(sizeof(SequenceTracker) <= 1024, "a fixed window, not a map");
  using O = SequenceTracker::Outcome;
  SequenceTracker t;
  const uint64_t rss_before = testutil::VmRssBytes();
  constexpr uint64_t kN = 2000000;
  for (uint64_t i = 0; i < kN; ++i) ASSERT_EQ(t.Observe(2 * i), O::kInOrder);
  EXPECT_EQ(t.missing(), kN - 1);
  // Holes inside the window fill as reorders; a repeat is a duplicate.
  const uint64_t top = 2 * (kN - 1);
  EXPECT_EQ(t.Observe(top - 1), O::kReordered);
  EXPECT_EQ(t.Observe(top - 1), O::kDuplicate);
  EXPECT_EQ(t.Observe(top - 2), O::kDuplicate);
  EXPECT_EQ(t.missing(), kN - 2);
  // Far below the window: too old to tell, reported as a duplicate (the documented
  // approximation), and the missing count does not move.
  EXPECT_EQ(t.Observe(1), O::kDuplicate);
  EXPECT_EQ(t.missing(), kN - 2);
  // A jump far ahead and huge sequence numbers cost nothing either.
  EXPECT_EQ(t.Observe(uint64_t{1} << 62), O::kInOrder);
  EXPECT_EQ(t.Observe((uint64_t{1} << 62) - 1), O::kReordered);
  const uint64_t rss_after = testutil::VmRssBytes();
  testutil::ExpectRssGrowthBounded(rss_before, rss_after, "tracking grew with the input", 4u << 20);
}

TEST(JobFilesTest, LineReaderBoundsLinesAndTreatsReadErrorsAsErrors) {
  const std::string path = ::testing::TempDir() + "/sluice-lines-" + std::to_string(::getpid());
  std::ofstream(path) << "one\n\n" << std::string(100, 'x') << "\nlast";
  LineReader r(::open(path.c_str(), O_RDONLY | O_CLOEXEC), "lines.txt", 100);
  std::string_view line;
  std::vector<std::string> got;
  while (true) {
    auto more = r.Next(&line);
    ASSERT_TRUE(more.ok()) << more.status().ToString();
    if (!*more) break;
    got.emplace_back(line);
  }
  EXPECT_EQ(got, (std::vector<std::string>{"one", "", std::string(100, 'x'), "last"}));
  LineReader too_long(::open(path.c_str(), O_RDONLY | O_CLOEXEC), "lines.txt", 99);
  ASSERT_TRUE(*too_long.Next(&line));
  ASSERT_TRUE(*too_long.Next(&line));
  auto bad = too_long.Next(&line);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'lines.txt' line 3 is longer than max_line_bytes (99"),
            std::string::npos)
      << bad.status().message();
  // read() failing (EISDIR on a directory) is an error, never the end of the file.
  LineReader dir(::open(::testing::TempDir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), "d",
                 100);
  auto err = dir.Next(&line);
  ASSERT_FALSE(err.ok());
  EXPECT_EQ(err.status().code(), StatusCode::kIoError);
  EXPECT_NE(err.status().message().find("reading input file 'd'"), std::string::npos);
  ::unlink(path.c_str());
}

TEST(JobRunnerTest, EstimateChargesRecordBuffersAsHeap) {
  JobSpec s;
  s.job_id = "heap";
  s.nodes = {"127.0.0.1:1", "127.0.0.1:2"};
  s.producer_nodes = {0, 0, 1};
  s.consumer_nodes = {0, 1};
  s.record_size_max = 1u << 20;
  buffer::CreditOptions credit;
  // Node 0: two producers' record buffers and one consumer's reassembly bound.
  EXPECT_EQ(EstimateJobMemory(s, 0, credit).heap_bytes, 3u << 20);
  EXPECT_EQ(EstimateJobMemory(s, 1, credit).heap_bytes, 2u << 20);
  s.kind = control::JobKind::kFilePartition;
  EXPECT_EQ(EstimateJobMemory(s, 1, credit, 1000).heap_bytes,
            1000 + LineReader::kChunk + 1000);
}

TEST(JobRecordsTest, ZipfSamplerMatchesTheDistribution) {
  constexpr uint64_t kKeys = 1000;
  constexpr double kS = 1.2;
  ZipfSampler zipf(kKeys, kS);
  SplitMix64 rng(5);
  constexpr int kDraws = 200000;
  std::vector<uint64_t> counts(kKeys);
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t k = zipf.Sample(rng);
    ASSERT_LT(k, kKeys);
    ++counts[k];
  }
  double norm = 0;
  for (uint64_t k = 1; k <= kKeys; ++k) norm += std::pow(static_cast<double>(k), -kS);
  for (uint64_t k : {0u, 1u, 9u}) {
    const double expected = std::pow(static_cast<double>(k + 1), -kS) / norm * kDraws;
    EXPECT_NEAR(counts[k], expected, 5 * std::sqrt(expected) + 1) << "key " << k;
  }
  // A million keys set up in O(1) and still sample in range.
  ZipfSampler big(1u << 20, 1.1);
  for (int i = 0; i < 1000; ++i) ASSERT_LT(big.Sample(rng), 1u << 20);
  ZipfSampler one(1, 2.0);
  EXPECT_EQ(one.Sample(rng), 0u);
}

TEST(JobRecordsTest, LineKeyPicksTheField) {
  std::string_view key;
  ASSERT_TRUE(LineKey("a,b,c", ',', 1, &key));
  EXPECT_EQ(key, "b");
  ASSERT_TRUE(LineKey("a,b,c", ',', 2, &key));
  EXPECT_EQ(key, "c");
  ASSERT_TRUE(LineKey("a,,c", ',', 1, &key));
  EXPECT_EQ(key, "");
  EXPECT_FALSE(LineKey("a,b", ',', 2, &key));
  ASSERT_TRUE(LineKey("", ',', 0, &key));
  EXPECT_EQ(key, "");
  EXPECT_LT(ConsumerOfKey("anything", 3), 3u);
}

// --- Generated jobs ---

TEST(JobRunnerTest, AllToAllAcrossThreeNodesEveryRecordVerified) {
  Cluster c(3);
  ASSERT_EQ(c.envs.size(), 3u);
  JobSpec spec = GeneratedSpec(c, "a2a", {0, 1, 2, 0}, {1, 2, 0}, 3000);
  auto statuses = RunToEnd(c, spec);
  ASSERT_EQ(statuses.size(), 3u);
  Totals t = ExpectExactlyOnce(spec, statuses);
  // Key hash over uniform keys: every channel carried something.
  for (const auto& [pi, p] : t.producers) {
    for (uint64_t n : p.records_per_consumer) EXPECT_GT(n, 500u) << "producer " << pi;
  }
  for (const JobStatus& s : statuses) EXPECT_GT(s.seconds, 0);
  ExpectNoLeak(c);
}

uint64_t MaxOverMean(const Totals& t) {
  uint64_t max = 0;
  uint64_t sum = 0;
  for (const auto& [ci, cs] : t.consumers) {
    max = std::max(max, cs.records);
    sum += cs.records;
  }
  return max * 100 * t.consumers.size() / std::max<uint64_t>(sum, 1);
}

TEST(JobRunnerTest, ZipfKeysSkewTheConsumers) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "zipf", {0, 1}, {0, 1, 0, 1}, 4000);
  spec.keys = control::KeyDistribution::kZipf;
  spec.zipf_s = 1.5;
  spec.key_count = 1000;
  const Totals skewed = ExpectExactlyOnce(spec, RunToEnd(c, spec));
  spec.job_id = "uniform";
  spec.keys = control::KeyDistribution::kUniform;
  const Totals even = ExpectExactlyOnce(spec, RunToEnd(c, spec));
  // Key 0 alone is ~39% of the records at s = 1.5: its consumer gets well over the mean.
  EXPECT_GE(MaxOverMean(skewed), 160u) << "largest consumer, percent of the mean";
  EXPECT_LE(MaxOverMean(even), 120u);
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, RoundRobinSpreadsEvenly) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "rr", {0, 1}, {1, 0, 1}, 3001);
  spec.partitioner = control::Partitioner::kRoundRobin;
  spec.keys = control::KeyDistribution::kZipf;  // keys do not matter to round robin
  const Totals t = ExpectExactlyOnce(spec, RunToEnd(c, spec));
  for (const auto& [pi, p] : t.producers) {
    EXPECT_EQ(p.records_per_consumer, (std::vector<uint64_t>{1001, 1000, 1000})) << pi;
  }
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, PointwiseFeedsOnlyTheMatchingConsumer) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "pw", {0, 1, 0}, {1, 1, 0}, 2000);
  spec.pattern = control::Pattern::kPointwise;
  const Totals t = ExpectExactlyOnce(spec, RunToEnd(c, spec));
  for (const auto& [ci, cs] : t.consumers) {
    for (uint32_t p = 0; p < 3; ++p) EXPECT_EQ(cs.records_per_producer[p], p == ci ? 2000u : 0u);
  }
  for (const auto& [pi, p] : t.producers) EXPECT_EQ(p.records_per_consumer.size(), 1u);
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, RecordsLargerThanASegment) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "big", {0, 1}, {1, 0}, 150);
  spec.record_size_min = 28;
  spec.record_size_max = 3 * kSegment + 123;
  const Totals t = ExpectExactlyOnce(spec, RunToEnd(c, spec));
  uint64_t bytes = 0;
  for (const auto& [pi, p] : t.producers) bytes += p.bytes;
  uint64_t got = 0;
  for (const auto& [ci, cs] : t.consumers) got += cs.bytes;
  EXPECT_EQ(got, bytes);
  // The mean record is ~1.5 segments: most records spanned buffers.
  EXPECT_GT(bytes / 300, uint64_t{kSegment});
  ExpectNoLeak(c);
}

// --- File-partition jobs ---

// A fresh directory that is both roots of a daemon here.
class TempDir : public testutil::TempDir {
 public:
  TempDir() : testutil::TempDir("sluice-jobs") {}
  JobRunnerOptions Roots() const {
    JobRunnerOptions o;
    o.input_dir = root();
    o.output_dir = root();
    return o;
  }
};

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(JobRunnerTest, FilePartitionWritesEachLineToItsKeysConsumer) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  TempDir dir;
  std::vector<std::vector<std::string>> inputs(2);
  for (uint32_t p = 0; p < 2; ++p) {
    std::ofstream out(dir.Path("in" + std::to_string(p) + ".csv"));
    for (int i = 0; i < 500; ++i) {
      const std::string line =
          std::to_string(p) + "-" + std::to_string(i) + ",user" + std::to_string(i % 37) + ",x";
      inputs[p].push_back(line);
      out << line << "\n";
    }
    out << "no-key-field\n\n";         // bad lines (no field 1): counted, skipped
    inputs[p].push_back("last,tail");  // no newline at the end
    out << "last,tail";
  }
  JobSpec spec;
  spec.job_id = "files";
  spec.kind = control::JobKind::kFilePartition;
  spec.nodes = c.nodes;
  spec.producer_nodes = {0, 1};
  spec.consumer_nodes = {1, 0, 1};
  spec.input_files = {"in0.csv", "in1.csv"};  // relative to the daemon's input_dir
  spec.key_field = 1;
  spec.output_dir = "out";
  spec.token = std::string(64, 'f');
  const auto statuses = RunToEnd(c, spec, dir.Roots());
  const Totals t = ExpectExactlyOnce(spec, statuses);
  std::vector<std::multiset<std::string>> expected(3);
  for (const auto& lines : inputs) {
    for (const std::string& line : lines) {
      std::string_view key;
      ASSERT_TRUE(LineKey(line, ',', 1, &key));
      expected[ConsumerOfKey(key, 3)].insert(line);
    }
  }
  for (const auto& [pi, p] : t.producers) {
    EXPECT_EQ(p.bad_lines, 2u);
    EXPECT_EQ(p.records, 501u);
  }
  for (uint32_t ci = 0; ci < 3; ++ci) {
    const auto& cs = t.consumers.at(ci);
    EXPECT_EQ(cs.output_file, spec.output_dir + "/files-part-" + std::to_string(ci) + ".txt");
    const auto lines = ReadLines(dir.Path(cs.output_file));
    struct stat st {};
    ASSERT_EQ(::stat(dir.Path(cs.output_file).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u) << "outputs are not world-readable";
    EXPECT_EQ(std::multiset<std::string>(lines.begin(), lines.end()), expected[ci])
        << "consumer " << ci;
    EXPECT_EQ(cs.records, lines.size());
    EXPECT_FALSE(expected[ci].empty());
    // Lines of one producer keep their order.
    std::vector<std::string> from0;
    for (const auto& l : lines) {
      if (l.rfind("0-", 0) == 0) from0.push_back(l);
    }
    std::vector<std::string> want0;
    for (const auto& l : inputs[0]) {
      std::string_view key;
      if (l.rfind("0-", 0) == 0 && LineKey(l, ',', 1, &key) && ConsumerOfKey(key, 3) == ci) {
        want0.push_back(l);
      }
    }
    EXPECT_EQ(from0, want0);
  }
  ExpectNoLeak(c);
}

// --- Refusals ---

TEST(JobRunnerTest, ValidationErrorsNameTheField) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  TempDir dir;
  auto expect_invalid = [&](const JobSpec& spec, uint32_t node, const std::string& needle) {
    auto r = JobRunner::Start(c.envs[node].get(), spec, node, dir.Roots());
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  const JobSpec good = GeneratedSpec(c, "v", {0, 1}, {1, 0}, 10);
  EXPECT_TRUE(ValidateJobSpec(good).ok());

  JobSpec s = good;
  s.producer_nodes = {0, 5};
  expect_invalid(s, 0, "producer 1 is placed on node 5");
  s = good;
  s.pattern = control::Pattern::kPointwise;
  s.consumer_nodes = {1, 0, 1};
  expect_invalid(s, 0, "pointwise");
  s = good;
  s.record_size_min = 20;
  expect_invalid(s, 0, "record_size_min 20");
  s = good;
  s.job_id = "bad id!";
  expect_invalid(s, 0, "job_id");
  for (const char* dots : {".", ".."}) {
    s.job_id = dots;
    expect_invalid(s, 0, "job_id '" + std::string(dots) + "' must be 1 to 128 characters");
  }
  s.job_id = "..a";  // dots inside a name are fine
  EXPECT_TRUE(ValidateJobSpec(s).ok());
  s = good;
  s.nodes[1] = "no-port";
  expect_invalid(s, 0, "no-port");
  s = good;
  s.keys = control::KeyDistribution::kZipf;
  s.zipf_s = 0;
  expect_invalid(s, 0, "zipf_s");

  s = good;
  s.kind = control::JobKind::kFilePartition;
  s.input_files = {dir.Path("abs.csv"), "rel.csv"};
  s.output_dir = "out";
  expect_invalid(s, 0, "input_files[0] '" + dir.Path("abs.csv") + "' is absolute");
  s.input_files = {"ok.csv", "sub/../../escape.csv"};
  expect_invalid(s, 0, "input_files[1] 'sub/../../escape.csv' contains '..'");
  s.input_files = {"a.csv", "b.csv"};
  s.output_dir = "../out";
  expect_invalid(s, 0, "output_dir '../out' contains '..'");
  s.output_dir = "out";
  s.input_files.pop_back();
  expect_invalid(s, 0, "one input file per producer");
  // A daemon without roots refuses file jobs, naming the option.
  s.input_files = {"a.csv", "b.csv"};
  auto r = JobRunner::Start(c.envs[0].get(), s, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("--input-dir"), std::string::npos) << r.status().message();

  ExpectNoLeak(c);
}

TEST(JobRunnerTest, WrongNodeIndexIsRefused) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  const JobSpec spec = GeneratedSpec(c, "idx", {0, 1}, {1, 0}, 10);
  auto r = JobRunner::Start(c.envs[0].get(), spec, 7);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("node index 7"), std::string::npos) << r.status().message();
  // Node 1's spec given to node 0's daemon: the ports disagree.
  r = JobRunner::Start(c.envs[0].get(), spec, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("listens on"), std::string::npos) << r.status().message();
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, NotEnoughNetworkMemoryIsRefusedWithTheNumbers) {
  Cluster c(2, 256u << 10);  // 64 segments of 4 KiB
  ASSERT_EQ(c.envs.size(), 2u);
  // Node 0: 8 partitions of 8 subpartitions (min 9 each = 72 segments) and 4 gates.
  JobSpec spec =
      GeneratedSpec(c, "big-job", std::vector<uint32_t>(8, 0), {0, 1, 0, 1, 0, 1, 0, 1}, 10);
  auto r = JobRunner::Start(c.envs[0].get(), spec, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  const std::string m = r.status().message();
  const buffer::MemoryEstimate e =
      EstimateJobMemory(spec, 0, c.envs[0]->config().options.credit).network;
  EXPECT_GT(e.min_segments, 64u);
  for (const std::string& needle :
       {std::string("network_memory"), std::string("job 'big-job' needs"),
        std::to_string(e.min_segments) + " segments", std::string("this daemon has 256.0 KiB"),
        std::string("--network-memory 1m")}) {
    EXPECT_NE(m.find(needle), std::string::npos) << "'" << needle << "' not in: " << m;
  }
  EXPECT_EQ(c.envs[0]->registry().size(), 0u) << "nothing registered after a refusal";
  ExpectNoLeak(c);
}

// --- Cancel, timeout, throttling, failures ---

TEST(JobRunnerTest, CancelMidJobReleasesEverything) {
  Cluster c(2, 2u << 20);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "cancel", {0, 0}, {1, 0}, 1u << 30);  // would run for ages
  auto runners = StartAll(c, spec);
  ASSERT_EQ(runners.size(), 2u);
  // Let data flow, and check it does.
  ASSERT_TRUE(testutil::PollUntil(
      [&] { return runners[1]->Status().consumers.at(0).records >= 1000; }, 10s, 5ms));
  EXPECT_EQ(runners[0]->Status().state, JobState::kRunning);
  EXPECT_GT(c.envs[0]->pool()->used_segments(), 0u);

  runners[0]->Cancel("operator asked");
  ASSERT_TRUE(runners[0]->Wait(10s));
  const JobStatus s0 = runners[0]->Status();
  EXPECT_EQ(s0.state, JobState::kCancelled);
  EXPECT_EQ(s0.error, "cancelled: operator asked");
  for (const auto& p : s0.producers) EXPECT_FALSE(p.done);
  // Node 0's tasks ended: its partitions and gates are released before the runner is gone.
  EXPECT_EQ(c.envs[0]->registry().size(), 0u);
  testutil::ExpectAllSegmentsBack(*c.envs[0]->pool());
  // The consumer on node 1 learns it from the failed partitions, with the reason.
  ASSERT_TRUE(runners[1]->Wait(15s));
  const JobStatus s1 = runners[1]->Status();
  EXPECT_EQ(s1.state, JobState::kFailed);
  EXPECT_NE(s1.error.find("consumer 0: "), std::string::npos) << s1.error;
  EXPECT_NE(s1.error.find("operator asked"), std::string::npos) << s1.error;
  // Seconds are frozen at the end.
  const double frozen = s0.seconds;
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(runners[0]->Status().seconds, frozen);
  runners[0]->Cancel("again");  // idempotent, no change after the end
  EXPECT_EQ(runners[0]->Status().state, JobState::kCancelled);
  runners.clear();
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, DestructorCancelsARunningJob) {
  Cluster c(1, 2u << 20);
  ASSERT_EQ(c.envs.size(), 1u);
  JobSpec spec = GeneratedSpec(c, "dtor", {0, 0}, {0, 0}, 1u << 30);
  auto runners = StartAll(c, spec);
  ASSERT_EQ(runners.size(), 1u);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(runners[0]->Status().state, JobState::kRunning);
  runners.clear();
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, JobTimesOut) {
  Cluster c(2, 2u << 20);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "slow", {0}, {1}, 1u << 30);
  spec.timeout_ms = 700;
  auto runners = StartAll(c, spec);
  ASSERT_EQ(runners.size(), 2u);
  for (auto& r : runners) ASSERT_TRUE(r->Wait(15s));
  // The first deadline ends the job everywhere: that node ran its full 700 ms; the other
  // started a moment later and may be failed (through the shuffle) just before its own.
  double longest = 0;
  for (auto& r : runners) {
    const JobStatus s = r->Status();
    EXPECT_EQ(s.state, JobState::kFailed);
    EXPECT_GE(s.seconds, 0.4);
    EXPECT_LT(s.seconds, 10);
    longest = std::max(longest, s.seconds);
  }
  EXPECT_GE(longest, 0.69);
  // The consumer's node says it timed out, itself or through node 0's failed partition. The
  // producer's node says so too, unless node 1's deadline (a moment later) came first and its
  // consumer left before node 0's own deadline: then its reader went away.
  const std::string e0 = runners[0]->Status().error;
  const std::string e1 = runners[1]->Status().error;
  EXPECT_NE(e1.find("job 'slow' timed out after 0.7 s on node "), std::string::npos) << e1;
  EXPECT_TRUE(e0.find("job 'slow' timed out after 0.7 s on node 0") != std::string::npos ||
              e0.find("consumer 0 (node 1, " + c.nodes[1] + ") went away") != std::string::npos)
      << e0;
  runners.clear();
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, ThrottledConsumerIsReallySlower) {
  Cluster c(2);
  ASSERT_EQ(c.envs.size(), 2u);
  // ~500 KiB to each consumer.
  JobSpec spec = GeneratedSpec(c, "fast", {0}, {1, 1}, 10000);
  spec.record_size_min = spec.record_size_max = 100;
  spec.partitioner = control::Partitioner::kRoundRobin;
  ExpectExactlyOnce(spec, RunToEnd(c, spec));
  spec.job_id = "throttled";
  spec.throttled_consumer = 1;
  spec.throttle_mib_per_second = 0.25;
  const auto started = std::chrono::steady_clock::now();
  const auto statuses = RunToEnd(c, spec);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const Totals slow = ExpectExactlyOnce(spec, statuses);
  const uint64_t bytes = slow.consumers.at(1).bytes;
  EXPECT_EQ(bytes, 5000u * 100);
  // The bucket's burst is 64 KiB; the rest goes at 0.25 MiB/s (~1.7 s).
  const double floor_s = (bytes - 64.0 * 1024) / (0.25 * 1048576) * 0.95;
  EXPECT_GE(took, floor_s);
  EXPECT_GE(statuses[1].seconds, floor_s);
  EXPECT_LT(statuses[1].seconds, 20);
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, ProducerNodeDeathFailsConsumersNamingThePeer) {
  Cluster c(2, 2u << 20);
  ASSERT_EQ(c.envs.size(), 2u);
  JobSpec spec = GeneratedSpec(c, "death", {0}, {1}, 1u << 30);
  auto runners = StartAll(c, spec);
  ASSERT_EQ(runners.size(), 2u);
  ASSERT_TRUE(testutil::PollUntil(
      [&] { return runners[1]->Status().consumers.at(0).records >= 500; }, 10s, 5ms));
  // Node 0's network goes away (as if the process died): its connections close.
  c.envs[0]->Stop();
  ASSERT_TRUE(runners[1]->Wait(20s)) << "the consumer hung after its producer's node died";
  const JobStatus s = runners[1]->Status();
  EXPECT_EQ(s.state, JobState::kFailed);
  EXPECT_NE(s.error.find("consumer 0: "), std::string::npos) << s.error;
  EXPECT_NE(s.error.find(c.nodes[0]), std::string::npos) << s.error;
  EXPECT_EQ(s.consumers.at(0).error, s.error);
  // The producer notices its reader is gone instead of writing into the void.
  ASSERT_TRUE(runners[0]->Wait(20s));
  const JobStatus s0 = runners[0]->Status();
  EXPECT_EQ(s0.state, JobState::kFailed);
  EXPECT_NE(s0.error.find("producer 0: consumer 0 (node 1, " + c.nodes[1] + ") went away"),
            std::string::npos)
      << s0.error;
  runners.clear();
  ExpectNoLeak(c);
}

TEST(JobRunnerTest, ANodeWithoutTasksSucceedsAtOnce) {
  Cluster c(3);
  ASSERT_EQ(c.envs.size(), 3u);
  JobSpec spec = GeneratedSpec(c, "idle", {0}, {1}, 100);
  const auto statuses = RunToEnd(c, spec);
  ExpectExactlyOnce(spec, statuses);
  EXPECT_TRUE(statuses[2].producers.empty() && statuses[2].consumers.empty());
  ExpectNoLeak(c);
}

}  // namespace
}  // namespace sluice::daemon
