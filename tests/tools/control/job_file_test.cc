// Job files (tools/control/job_file.h): a good file gives the JobSpec it says; an unknown key,
// a wrong type, an absurd size, a token or a broken file is refused naming the key and the file.
#include "tools/control/job_file.h"

#include <gtest/gtest.h>

#include <string>

namespace sluice::control {
namespace {

void ExpectRefused(const std::string& text, const std::string& what) {
  auto spec = ParseJobFile(text, "job.toml");
  ASSERT_FALSE(spec.ok()) << text;
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("job.toml"), std::string::npos)
      << spec.status().ToString();
  EXPECT_NE(spec.status().message().find(what), std::string::npos) << spec.status().ToString();
}

TEST(JobFileTest, GoodFilePartitionJob) {
  auto spec = ParseJobFile(R"(
job_id = "words-1"
kind = "file-partition"
nodes = ["127.0.0.1:7001", "127.0.0.1:7002", "[::1]:7003"]
producer_nodes = [0, 1, 2]
consumer_nodes = [2, 1, 0]
input_files = ["a.csv", "b.csv", "sub/c.csv"]
key_field = 2
delimiter = ";"
output_dir = "out"
checksums = true
timeout_ms = 30000
)",
                           "job.toml");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->job_id, "words-1");
  EXPECT_EQ(spec->kind, JobKind::kFilePartition);
  EXPECT_EQ(spec->nodes, (std::vector<std::string>{"127.0.0.1:7001", "127.0.0.1:7002",
                                                   "[::1]:7003"}));
  EXPECT_EQ(spec->producer_nodes, (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(spec->consumer_nodes, (std::vector<uint32_t>{2, 1, 0}));
  EXPECT_EQ(spec->input_files, (std::vector<std::string>{"a.csv", "b.csv", "sub/c.csv"}));
  EXPECT_EQ(spec->key_field, 2u);
  EXPECT_EQ(spec->delimiter, ';');
  EXPECT_EQ(spec->output_dir, "out");
  EXPECT_TRUE(spec->checksums);
  EXPECT_EQ(spec->timeout_ms, 30000u);
  EXPECT_EQ(spec->token, "");
}

TEST(JobFileTest, GoodGeneratedJobWithoutAnId) {
  auto spec = ParseJobFile(R"(
kind = "generated"
nodes = ["h:1"]
producer_nodes = [0]
consumer_nodes = [0]
pattern = "pointwise"
records_per_producer = 5000000000
record_size_min = 28
record_size_max = 4096
keys = "zipf"
zipf_s = 1.5
key_count = 1000
partitioner = "round-robin"
seed = 7
throttled_consumer = 0
throttle_mib_per_second = 2
)",
                           "job.toml");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->job_id, "");
  EXPECT_EQ(spec->pattern, Pattern::kPointwise);
  EXPECT_EQ(spec->records_per_producer, 5000000000u);
  EXPECT_EQ(spec->record_size_min, 28u);
  EXPECT_EQ(spec->record_size_max, 4096u);
  EXPECT_EQ(spec->keys, KeyDistribution::kZipf);
  EXPECT_DOUBLE_EQ(spec->zipf_s, 1.5);
  EXPECT_EQ(spec->key_count, 1000u);
  EXPECT_EQ(spec->partitioner, Partitioner::kRoundRobin);
  EXPECT_EQ(spec->seed, 7u);
  EXPECT_EQ(spec->throttled_consumer, 0);
  EXPECT_DOUBLE_EQ(spec->throttle_mib_per_second, 2.0);
  const std::string id = MakeJobId();
  EXPECT_EQ(id.rfind("job-", 0), 0u) << id;
  EXPECT_EQ(id.size(), 26u) << id;
  EXPECT_NE(MakeJobId(), id);
}

TEST(JobFileTest, UnknownKeyIsRefusedNamingIt) {
  ExpectRefused("nodez = [\"h:1\"]\n", "unknown key 'nodez'");
  ExpectRefused("[section]\nnodes = 1\n", "unknown key 'section'");
}

TEST(JobFileTest, WrongTypesAreRefusedNamingTheKey) {
  ExpectRefused("nodes = \"h:1\"\n", "nodes must be an array");
  ExpectRefused("nodes = [1]\n", "nodes[0] must be a string");
  ExpectRefused("producer_nodes = [\"0\"]\n", "producer_nodes[0] must be an integer");
  ExpectRefused("records_per_producer = \"10\"\n", "records_per_producer must be an integer");
  ExpectRefused("checksums = 1\n", "checksums must be true or false");
  ExpectRefused("kind = \"sort\"\n", "kind = \"sort\" is not one of");
  ExpectRefused("delimiter = \"::\"\n", "delimiter must be one character");
  ExpectRefused("zipf_s = \"x\"\n", "zipf_s must be a number");
}

TEST(JobFileTest, AbsurdSizesAreRefused) {
  ExpectRefused("record_size_max = 1099511627776\n",
                "record_size_max = 1099511627776 is out of range (0..4294967295)");
  ExpectRefused("records_per_producer = -1\n", "records_per_producer = -1 is out of range");
  ExpectRefused("consumer_nodes = [4294967296]\n", "consumer_nodes[0] = 4294967296 is out of range");
  ExpectRefused("throttled_consumer = 3000000000\n", "throttled_consumer = 3000000000 is out");
  std::string many = "input_files = [";
  for (size_t i = 0; i <= kMaxJobFileArray; ++i) many += "\"f\",";
  many += "]\n";
  ExpectRefused(many, "input_files has 4097 entries, above the 4096");
}

TEST(JobFileTest, TokenAndBrokenFilesAreRefused) {
  ExpectRefused("token = \"abc\"\n", "carries no token");
  ExpectRefused("nodes = [\n", "job file job.toml:");
  auto missing = LoadJobFile("/nonexistent/job.toml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/job.toml"), std::string::npos);
}

}  // namespace
}  // namespace sluice::control
