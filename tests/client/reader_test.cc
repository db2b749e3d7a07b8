// Reader end to end against in-process daemons: writers append to each daemon's store with
// pool buffers (the store's Append, as the local writer service does), readers read one
// subpartition with one channel per daemon. Every test ends with the daemons' leak check (and
// the writers' pool), and no spill file left after release.
#include "client/reader.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "client/ext_control.h"
#include "client/writer.h"
#include "shuffle/auth.h"
#include "shuffle/shuffle_environment.h"
#include "store/spill_file.h"
#include "store/store_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"
#include "tools/daemon/daemon_test_util.h"

namespace sluice::client {
namespace {

using daemon::Daemon;
using daemon::testing::Cluster;
using store::PartitionMode;
using store::testing::TestWriter;

constexpr uint32_t kSegment = 32 * 1024;
const std::string kToken = shuffle::auth::MakeJobToken();

size_t SpillFilesUnder(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    n += it->path().filename().string().starts_with(store::kSpillFilePrefix) ? 1 : 0;
  }
  return n;
}

class ReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { pool_ = testutil::MakeNetworkBufferPool(2048, kSegment); }
  void TearDown() override { testutil::ExpectAllSegmentsBack(*pool_, "writers' pool"); }

  void StartCluster(int n, uint64_t store_memory) {
    cluster_ = std::make_unique<Cluster>(n, [&](daemon::DaemonConfig& c) {
      c.spill_dir = spill_.root();
      c.store_memory = store_memory;
    });
    ASSERT_TRUE(cluster_->ok());
  }

  std::string Node(int i) { return "127.0.0.1:" + std::to_string(cluster_->daemons[i]->port()); }

  // Opens, writes `n` records to every subpartition and commits; returns the descriptor.
  MapOutput WriteOutput(int node, uint32_t partition, uint32_t attempt, uint32_t subs,
                        uint64_t n, PartitionMode mode = PartitionMode::kBlocking) {
    store::PartitionStore* s = cluster_->daemons[node]->store();
    auto id = s->OpenWriter({"job", kToken, partition, attempt, subs, mode});
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    if (!id.ok()) return {};
    TestWriter w(s, pool_, *id);
    for (uint32_t sp = 0; sp < subs; ++sp) {
      Status st = w.Write(partition, attempt, sp, 0, n, 100);
      EXPECT_TRUE(st.ok()) << st.ToString();
    }
    auto out = s->Commit(*id);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? *out : MapOutput{};
  }

  ReaderOptions Options(uint32_t sub, std::vector<MapOutput> outputs) {
    ReaderOptions o;
    o.job = "job";
    o.token = kToken;
    o.subpartition = sub;
    o.map_outputs = std::move(outputs);
    o.secret = daemon::testing::kTestSecret;
    o.timeout = std::chrono::seconds(30);
    return o;
  }

  void ReleaseEverywhere() {
    for (auto& c : cluster_->clients) {
      Status st = ReleaseExternalJob(*c, "job", kToken);
      EXPECT_TRUE(st.ok()) << st.ToString();
    }
    EXPECT_EQ(SpillFilesUnder(spill_.root()), 0u);
  }

  testutil::TempDir spill_{"reader-spill"};
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  std::unique_ptr<Cluster> cluster_;
};

// Per writer ("p<P>a<A>"), the sequence numbers in the order read.
std::map<std::string, std::vector<uint64_t>> ReadAll(Reader& r, Status* error) {
  std::map<std::string, std::vector<uint64_t>> by_writer;
  while (true) {
    auto rec = r.Next();
    if (!rec.ok()) {
      *error = rec.status();
      return by_writer;
    }
    if (!rec->has_value()) return by_writer;
    std::string text(reinterpret_cast<const char*>((*rec)->data()), (*rec)->size());
    text = text.substr(0, text.find('.'));
    const size_t s = text.find('s');
    const size_t hash = text.find('#');
    by_writer[text.substr(0, s)].push_back(std::stoull(text.substr(hash + 1)));
  }
}

// Options that cannot work are refused before any connection, naming what to fix.
TEST(ReaderOptionsTest, BadOptionsAreRefusedBeforeAnyConnection) {
  ReaderOptions o;
  o.job = "j";
  o.secret = "0123456789abcdef-secret";
  MapOutput m;
  m.node = "127.0.0.1:1";  // nothing listens: a connection attempt would fail differently
  m.job = "j";
  o.map_outputs = {m, m};
  const auto refused = [&](const ReaderOptions& bad, const std::string& says) {
    auto r = Reader::OpenSubpartition(bad);
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().ToString();
  };
  ReaderOptions no_secret = o;
  no_secret.secret.clear();
  refused(no_secret, "no secret: give ReaderOptions::secret");
  ReaderOptions none = o;
  none.map_outputs.clear();
  refused(none, "no map outputs to read");
  ReaderOptions other_job = o;
  other_job.map_outputs[0].job = "k";
  refused(other_job, "map output of job 'k' given to a reader of job 'j'");
  refused(o, "partition 0 is named twice");
}

TEST_F(ReaderTest, SixtyFourWritersPerHostOnThreeHostsOneChannelPerHost) {
  StartCluster(3, 2ull << 20);  // 2 MiB in memory per store: most of it spills
  constexpr uint32_t kWriters = 64, kSubs = 4, kRecords = 120;
  std::vector<MapOutput> named;
  for (int node = 0; node < 3; ++node) {
    for (uint32_t i = 0; i < kWriters; ++i) {
      const uint32_t partition = static_cast<uint32_t>(node) * kWriters + i;
      named.push_back(WriteOutput(node, partition, 0, kSubs, kRecords));
    }
  }
  // Map 5 ran twice (on node 1 the second time) and both attempts committed: name attempt 1.
  MapOutput rerun = WriteOutput(1, 5, 1, kSubs, kRecords + 7);
  named[5] = rerun;
  ASSERT_EQ(EncodeMapOutput(*DecodeMapOutput(EncodeMapOutput(rerun))), EncodeMapOutput(rerun));
  for (auto& d : cluster_->daemons) EXPECT_GT(d->store()->Stats().spill_bytes_total, 0u);

  for (int round = 0; round < 2; ++round) {  // blocking: read twice
    auto reader = Reader::OpenSubpartition(Options(2, named));
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    EXPECT_EQ((*reader)->nodes().size(), 3u);
    for (auto& d : cluster_->daemons) {
      EXPECT_TRUE(testutil::PollUntil([&] { return d->store()->Stats().readers == 1; },
                                      std::chrono::seconds(10)))
          << "one channel per host";
    }
    Status error;
    auto got = ReadAll(**reader, &error);
    ASSERT_TRUE(error.ok()) << error.ToString();
    EXPECT_EQ(got.size(), 3u * kWriters);
    EXPECT_EQ(got.count("p5a0"), 0u) << "the attempt not named is never read";
    for (const MapOutput& m : named) {
      const std::string key = "p" + std::to_string(m.partition) + "a" + std::to_string(m.attempt);
      const uint64_t n = m.attempt == 1 ? kRecords + 7 : kRecords;
      std::vector<uint64_t> want(n);
      for (uint64_t i = 0; i < n; ++i) want[i] = i;
      EXPECT_EQ(got[key], want) << key << ": every record exactly once, in order";
    }
    EXPECT_EQ((*reader)->records(), 3u * kWriters * kRecords + 7);
  }
  ReleaseEverywhere();
  cluster_->End();
}

// A local writer process's blocking output that nobody reads fills its whole credit; the store's
// thread spills it and the credit comes back, again and again, until 16x the store's memory has
// gone to disk. Then every record reads back exactly once, in order. (A service that stopped
// returning credit after a spill, or that missed a second starvation, hangs here.)
TEST_F(ReaderTest, ALocalWriterSpillsWhatNobodyReadsAndItIsReadBackExactly) {
  cluster_ = std::make_unique<Cluster>(1, [&](daemon::DaemonConfig& c) {
    c.spill_dir = spill_.root();
    c.store_memory = 1ull << 20;
    c.local_socket = spill_.Path("w.sock");
  });
  ASSERT_TRUE(cluster_->ok());
  WriterOptions wo;
  wo.socket_path = spill_.Path("w.sock");
  wo.secret = daemon::testing::kTestSecret;
  wo.job = "job";
  wo.token = kToken;
  wo.partition = 3;
  wo.subpartitions = 2;
  wo.mode = WriteMode::kBlocking;
  wo.credit = 4;
  auto w = Writer::Open(wo);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  constexpr uint64_t kRecords = 160000;  // ~16 MiB with the padding
  const std::string pad(90, '.');
  for (uint64_t i = 0; i < kRecords; ++i) {
    const uint32_t sp = static_cast<uint32_t>(i % 2);
    const std::string rec = store::testing::RecordText(3, 0, sp, i / 2) + pad;
    ASSERT_TRUE((*w)->Write(sp, rec).ok()) << i;
  }
  auto out = (*w)->Commit();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_GT((*w)->stats().credit_waits, 0u) << "the writer did wait for credit";
  const auto st = cluster_->daemons[0]->store()->Stats();
  EXPECT_GE(st.spill_bytes_total, 14ull << 20) << "almost everything went to disk";
  // What fit under store_memory was kept (copied) until the output outgrew it; after its first
  // spill, the rest went straight to disk.
  EXPECT_GT(st.copied_bytes_total, 0u);
  EXPECT_LE(st.copied_bytes_total, 1ull << 20);
  // The operator sees the same in /metrics. A spill may still finish after Commit returned:
  // compare the metric with a Stats() taken on both sides of it, once the two agree.
  std::string metrics;
  uint64_t spilled = 0;
  for (int i = 0; i < 250; ++i) {
    const uint64_t before = cluster_->daemons[0]->store()->Stats().spill_bytes_total;
    metrics = cluster_->daemons[0]->Prometheus();
    spilled = cluster_->daemons[0]->store()->Stats().spill_bytes_total;
    if (before == spilled) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (const std::string name : {"sluice_spill_bytes_total", "sluice_store_copied_bytes_total",
                                 "sluice_spill_files", "sluice_store_bytes_in_memory",
                                 "sluice_local_writers_waiting"}) {
    EXPECT_NE(metrics.find("\n" + name + "{"), std::string::npos) << name;
  }
  EXPECT_NE(metrics.find("sluice_spill_bytes_total{node=\"sluiced@" + Node(0) + "\"} " +
                         std::to_string(spilled)),
            std::string::npos)
      << metrics;
  for (uint32_t sp = 0; sp < 2; ++sp) {
    auto reader = Reader::OpenSubpartition(Options(sp, {*out}));
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    Status error;
    auto got = ReadAll(**reader, &error);
    ASSERT_TRUE(error.ok()) << error.ToString();
    std::vector<uint64_t> want(kRecords / 2);
    for (uint64_t i = 0; i < want.size(); ++i) want[i] = i;
    EXPECT_EQ(got["p3a0"], want) << "subpartition " << sp;
  }
  w->reset();
  ReleaseEverywhere();
  cluster_->End();
}

// The job's first writer sets its retention through the local protocol: a blocking output kept
// for 1 s is released by the daemon on its own (spill files gone), another job stays.
TEST_F(ReaderTest, AWritersRetentionReleasesItsJob) {
  cluster_ = std::make_unique<Cluster>(1, [&](daemon::DaemonConfig& c) {
    c.spill_dir = spill_.root();
    c.store_memory = 256 * 1024;
    c.local_socket = spill_.Path("w.sock");
  });
  ASSERT_TRUE(cluster_->ok());
  auto write = [&](const std::string& job, std::chrono::seconds retention) {
    WriterOptions wo;
    wo.socket_path = spill_.Path("w.sock");
    wo.secret = daemon::testing::kTestSecret;
    wo.job = job;
    wo.token = kToken;
    wo.mode = WriteMode::kBlocking;
    wo.retention = retention;
    auto w = Writer::Open(wo);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    for (int i = 0; i < 20000; ++i) ASSERT_TRUE((*w)->Write(0, std::string(100, 'r')).ok());
    ASSERT_TRUE((*w)->Commit().ok());
  };
  write("short", std::chrono::seconds(1));
  write("job", std::chrono::seconds(0));  // the daemon's retention (1 h)
  store::PartitionStore* s = cluster_->daemons[0]->store();
  EXPECT_EQ(s->Stats().jobs, 2u);
  EXPECT_GT(SpillFilesUnder(spill_.root()), 2u) << "both jobs spilled";
  EXPECT_TRUE(testutil::PollUntil([&] { return s->Stats().jobs == 1u; },
                                  std::chrono::seconds(20)));
  EXPECT_EQ(s->List("short").size(), 0u);
  EXPECT_EQ(s->List("job").size(), 1u);
  EXPECT_EQ(SpillFilesUnder(spill_.root()), 2u) << "only the kept job's data and index";
  ReleaseEverywhere();
  cluster_->End();
}

TEST_F(ReaderTest, PipelinedReaderStreamsAndAWriterAbortIsProducerFailed) {
  StartCluster(1, 8ull << 20);
  store::PartitionStore* s = cluster_->daemons[0]->store();
  auto a = s->OpenWriter({"job", kToken, 1, 0, 2, PartitionMode::kPipelined});
  auto b = s->OpenWriter({"job", kToken, 2, 0, 2, PartitionMode::kPipelined});
  ASSERT_TRUE(a.ok() && b.ok());
  TestWriter wa(s, pool_, *a), wb(s, pool_, *b);
  MapOutput ma{Node(0), "job", 1, 0, 2, 0, 0}, mb{Node(0), "job", 2, 0, 2, 0, 0};
  auto reader = Reader::OpenSubpartition(Options(1, {ma, mb}));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  ASSERT_TRUE(wa.Write(1, 0, 1, 0, 50).ok());
  for (int i = 0; i < 50; ++i) {  // streamed before the commit
    auto rec = (*reader)->Next();
    ASSERT_TRUE(rec.ok() && rec->has_value()) << rec.status().ToString();
  }
  ASSERT_TRUE(s->Commit(*a).ok());
  ASSERT_TRUE(wb.Write(2, 0, 1, 0, 10).ok());
  s->Abort(*b, "writer process 99 died");
  Status error;
  auto got = ReadAll(**reader, &error);
  EXPECT_EQ(error.code(), StatusCode::kIoError) << error.ToString();
  EXPECT_NE(error.message().find("job 'job' partition 2 attempt 0 failed on " + Node(0) +
                                 ": writer process 99 died"),
            std::string::npos)
      << error.message();
  reader->reset();
  ReleaseEverywhere();
  cluster_->End();
}

TEST_F(ReaderTest, ADaemonThatGoesAwayIsNamed) {
  StartCluster(1, 8ull << 20);
  store::PartitionStore* s = cluster_->daemons[0]->store();
  auto a = s->OpenWriter({"job", kToken, 1, 0, 1, PartitionMode::kBlocking});
  ASSERT_TRUE(a.ok());
  auto reader = Reader::OpenSubpartition(Options(0, {{Node(0), "job", 1, 0, 1, 0, 0}}));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const std::string node = Node(0);
  s->Abort(*a, "test over");  // nothing committed; the daemon stops under the reader
  cluster_->clients[0].reset();
  auto report = cluster_->daemons[0]->Shutdown(std::chrono::milliseconds(0));
  EXPECT_EQ(report.leaked_segments, 0u);
  Status error;
  ReadAll(**reader, &error);
  EXPECT_FALSE(error.ok());
  EXPECT_NE(error.message().find("127.0.0.1"), std::string::npos) << error.message();
  reader->reset();
  cluster_->daemons.clear();
  cluster_->clients.clear();
}

TEST_F(ReaderTest, HostileReadSetsAreRefusedAndTheDaemonGoesOn) {
  StartCluster(1, 8ull << 20);
  MapOutput m = WriteOutput(0, 1, 0, 2, 10);
  auto& c = *cluster_->clients[0];
  // Wrong token, unknown job, an attempt that does not exist.
  auto wrong = RegisterReadSet(c, "job", "bad-token", {{1, 0}});
  EXPECT_EQ(wrong.status().code(), StatusCode::kPermissionDenied);
  auto unknown = RegisterReadSet(c, "nojob", kToken, {{1, 0}});
  EXPECT_EQ(unknown.status().code(), StatusCode::kPermissionDenied);
  auto absent = RegisterReadSet(c, "job", kToken, {{1, 3}});
  EXPECT_EQ(absent.status().code(), StatusCode::kNotFound);
  EXPECT_NE(absent.status().message().find("partition 1 attempt 3 does not exist"),
            std::string::npos);
  // A list over what a read set carries is refused before it is sent...
  std::vector<MapOutputKey> huge(schema::kMaxReadSetEntries + 1);
  for (uint32_t i = 0; i < huge.size(); ++i) huge[i].partition = i;
  EXPECT_EQ(RegisterReadSet(c, "job", kToken, huge).status().code(),
            StatusCode::kInvalidArgument);
  // ...and by the daemon when a peer sends it anyway.
  auto r = daemon::testing::Call(*cluster_->daemons[0], schema::MessageType::kExtRegisterReadSet,
                                 EncodeExtRegisterReadSet("job", kToken, huge));
  EXPECT_EQ(daemon::testing::ResultOf(r).code(), StatusCode::kProtocolError);
  // Releases with a wrong token or of an unknown job, and malformed store requests, change
  // nothing; the job's output stays listed.
  daemon::Daemon& d = *cluster_->daemons[0];
  EXPECT_EQ(ReleaseExternalJob(c, "job", "x" + kToken.substr(1)).code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(ReleaseExternalJob(c, "nojob", kToken).code(), StatusCode::kNotFound);
  const std::vector<uint8_t> garbage = {0xff, 0xff, 0xff, 0x7f, 1, 2, 3};
  for (const auto type : {schema::MessageType::kExtReleaseJob, schema::MessageType::kExtListRequest,
                          schema::MessageType::kExtRegisterReadSet}) {
    EXPECT_EQ(daemon::testing::ResultOf(daemon::testing::Call(d, type, garbage)).code(),
              StatusCode::kProtocolError)
        << schema::MessageTypeName(type);
  }
  auto listed = ListExternal(c, "");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->partitions.size(), 1u);
  EXPECT_EQ(listed->total, 1u);
  EXPECT_EQ(listed->partitions[0].state, "committed");
  // A PartitionRequest with a wrong proof for a registered read set: AuthenticationFailed.
  ReaderOptions o = Options(0, {m});
  auto id = RegisterReadSet(c, "job", kToken, {{1, 0}});
  ASSERT_TRUE(id.ok());
  o.token = "not-the-job-token";
  auto bad = Reader::OpenSubpartition(o);
  EXPECT_EQ(bad.status().code(), StatusCode::kPermissionDenied);
  // Map outputs of another job, or one partition twice, never leave the reader.
  MapOutput other = m;
  other.job = "other";
  EXPECT_EQ(Reader::OpenSubpartition(Options(0, {m, other})).status().code(),
            StatusCode::kInvalidArgument);
  MapOutput twice = m;
  twice.attempt = 1;
  EXPECT_EQ(Reader::OpenSubpartition(Options(0, {m, twice})).status().code(),
            StatusCode::kInvalidArgument);
  // The daemon still serves: the good read works.
  auto good = Reader::OpenSubpartition(Options(1, {m}));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  Status error;
  auto got = ReadAll(**good, &error);
  EXPECT_TRUE(error.ok()) << error.ToString();
  EXPECT_EQ(got["p1a0"].size(), 10u);
  good->reset();
  ReleaseEverywhere();
  cluster_->End();
}

// PartitionRequests for "ext/..." ids straight through a ShuffleEnvironment (no Reader): a
// wrong proof, an unregistered read set, a pipelined subpartition twice. Each fails its channel
// with the ErrorCode's text; the daemon goes on serving.
TEST_F(ReaderTest, HostilePartitionRequestsFailTheirChannelOnly) {
  StartCluster(1, 8ull << 20);
  WriteOutput(0, 1, 0, 2, 10);
  auto id = RegisterReadSet(*cluster_->clients[0], "job", kToken, {{1, 0}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  shuffle::EnvironmentConfig ec;
  ec.listen = false;
  ec.memory.segment_size = kSegment;
  ec.memory.network_memory = 64ull * kSegment;
  ec.auth.secret = daemon::testing::kTestSecret;
  ec.options.request_timeout = std::chrono::milliseconds(500);
  auto env = shuffle::ShuffleEnvironment::Start(ec);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  const transport::Endpoint ep{"127.0.0.1", cluster_->daemons[0]->port()};
  auto expect_channel_error = [&](shuffle::ChannelSpec spec, const std::string& fragment) {
    spec.remote = ep;
    auto gate = (*env)->CreateInputGate("hostile", {spec});
    ASSERT_TRUE(gate.ok()) << gate.status().ToString();
    Status error;
    for (int i = 0; i < 100 && error.ok(); ++i) {
      auto item = (*gate)->GetNext(std::chrono::milliseconds(100));
      if (!item.ok()) error = item.status();
    }
    EXPECT_NE(error.message().find(fragment), std::string::npos) << error.ToString();
  };
  expect_channel_error({*id, 0, std::nullopt, "wrong-token"}, "denied");
  expect_channel_error({"ext/job/ffffffffffffffffffffffffffffffff", 0, std::nullopt, kToken},
                       "not registered");
  expect_channel_error({"ext/", 0, std::nullopt, kToken}, "not");
  expect_channel_error({*id, 5, std::nullopt, kToken}, "subpartitions");
  (*env)->Stop();
  env->reset();
  // Still serving: the good read works.
  auto good = Reader::OpenSubpartition(Options(1, {{Node(0), "job", 1, 0, 2, 0, 0}}));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  Status error;
  auto got = ReadAll(**good, &error);
  EXPECT_TRUE(error.ok()) << error.ToString();
  EXPECT_EQ(got["p1a0"].size(), 10u);
  good->reset();
  ReleaseEverywhere();
  cluster_->End();
}

}  // namespace
}  // namespace sluice::client
