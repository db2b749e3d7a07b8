// PartitionStore without sockets: writers append pool buffers, views are drained the way the
// network server drains them. Every test ends with the leak check and no spill file left.
#include "store/partition_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "shuffle/record_serializer.h"

#include "shuffle/auth.h"
#include "store/spill_dir.h"
#include "store/spill_file.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "store/store_test_util.h"

namespace sluice::store {
namespace {

using testing::CountingListener;
using testing::Drained;
using testing::DrainAvailable;
using testing::Expected;
using testing::Stripped;
using testing::TestWriter;

constexpr uint32_t kSegment = 4096;
const std::string kToken = "job-token-0123456789abcdef0123456789abcdef";

size_t SpillFilesIn(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    n += e.path().filename().string().starts_with(kSpillFilePrefix) ? 1 : 0;
  }
  return n;
}

// `s` is an error of `code` whose message contains `text`.
void ExpectRefused(const Status& s, StatusCode code, const std::string& text) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(text), std::string::npos) << s.ToString();
}

class PartitionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    writer_pool_ = sluice::testutil::MakeNetworkBufferPool(512, kSegment);
    read_pool_ = sluice::testutil::MakeNetworkBufferPool(32, kSegment);
  }
  void TearDown() override {
    store_.reset();
    sluice::testutil::ExpectAllSegmentsBack(*writer_pool_, "writers");
    sluice::testutil::ExpectAllSegmentsBack(*read_pool_, "store reads");
    if (std::filesystem::exists(dir_.Path("spill"))) {
      EXPECT_EQ(SpillFilesIn(dir_.Path("spill")), 0u);
    }
  }

  void MakeStore(uint64_t budget, uint64_t quota = 0, bool spill = true) {
    PartitionStoreOptions o;
    o.node = "127.0.0.1:7000";
    o.spill_dir = spill ? dir_.Path("spill") : "";
    o.spill_max_bytes = quota;
    o.memory_budget_bytes = budget;
    o.read_pool = read_pool_;
    o.read_segments = 8;
    o.maintenance_interval = std::chrono::milliseconds(20);
    o.max_held_subpartitions = max_held_subpartitions_;
    o.max_held_read_set_entries = max_held_read_set_entries_;
    auto s = PartitionStore::Create(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }

  TestWriter Open(uint32_t partition, uint32_t attempt, uint32_t subs, PartitionMode mode,
                  const std::string& job = "j1") {
    WriterSpec spec{job, kToken, partition, attempt, subs, mode};
    auto id = store_->OpenWriter(spec);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    return TestWriter(store_.get(), writer_pool_, id.ok() ? *id : 0);
  }

  std::string Register(const std::vector<MapOutputRef>& refs, const std::string& job = "j1") {
    auto id = store_->RegisterReadSet(job, kToken, refs);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    return id.ok() ? *id : "";
  }

  Result<std::unique_ptr<shuffle::SubpartitionView>> View(const std::string& id, uint32_t sub,
                                                          CountingListener* l) {
    auto proof = shuffle::auth::MakePartitionProof(kToken, id, sub);
    return store_->CreateView(id, sub, proof, l);
  }

  Drained ReadAll(const std::string& id, uint32_t sub) {
    CountingListener l;
    auto v = View(id, sub, &l);
    Drained d;
    if (!v.ok()) {
      d.error = v.status();
      return d;
    }
    DrainAvailable(v->get(), &d);
    return d;
  }

  // The end of a WriterWaiting test: `w` (partition 0, 400 records in subpartition 1) writes
  // 100 more, commits, all 500 read back in order, and the job is released.
  void WriteOnCommitAndReadBack(TestWriter& w) {
    ASSERT_TRUE(w.Write(0, 0, 1, 400, 100, 30).ok());
    ASSERT_TRUE(store_->Commit(w.id()).ok());
    Drained d = ReadAll(Register({{0, 0}}), 1);
    EXPECT_TRUE(d.ended) << d.error.ToString();
    EXPECT_EQ(Stripped(d.records), Expected(0, 0, 1, 500));
    EXPECT_TRUE(store_->Release("j1", kToken).ok());
  }

  uint64_t max_held_subpartitions_ = PartitionStoreOptions{}.max_held_subpartitions;
  uint64_t max_held_read_set_entries_ = PartitionStoreOptions{}.max_held_read_set_entries;
  sluice::testutil::TempDir dir_{"store"};
  std::shared_ptr<buffer::NetworkBufferPool> writer_pool_;
  std::shared_ptr<buffer::NetworkBufferPool> read_pool_;
  std::unique_ptr<PartitionStore> store_;
};

TEST_F(PartitionStoreTest, BlockingOutputIsReadAfterCommitAgainAndByTwoReaders) {
  MakeStore(64u << 20);
  TestWriter w = Open(3, 0, 2, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(3, 0, 1, 0, 500).ok());
  const std::string id = Register({{3, 0}});
  EXPECT_EQ(id.rfind("ext/j1/", 0), 0u);
  // Not committed yet: nothing is readable, no end.
  CountingListener early;
  auto v = View(id, 1, &early);
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE((*v)->IsAvailable(1));
  auto out = store_->Commit(w.id());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->records, 500u);
  EXPECT_EQ(out->node, "127.0.0.1:7000");
  EXPECT_GE(early.notifications.load(), 1);  // the commit made it readable
  Drained first;
  DrainAvailable(v->get(), &first);
  EXPECT_TRUE(first.ended);
  EXPECT_EQ(first.records, Expected(3, 0, 1, 500));
  // Read again, and a second reader at once; subpartition 0 is empty but ends.
  EXPECT_EQ(ReadAll(id, 1).records, Expected(3, 0, 1, 500));
  Drained empty = ReadAll(id, 0);
  EXPECT_TRUE(empty.ended);
  EXPECT_TRUE(empty.records.empty());
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, PipelinedStreamsWhileWritingAndFreesWhatWasSent) {
  MakeStore(64u << 20);
  TestWriter w = Open(0, 0, 1, PartitionMode::kPipelined);
  const std::string id = Register({{0, 0}});
  CountingListener l;
  auto v = View(id, 0, &l);
  ASSERT_TRUE(v.ok());
  const uint32_t free_before = writer_pool_->available_segments();
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 300).ok());
  EXPECT_GE(l.notifications.load(), 1);
  Drained d;
  DrainAvailable(v->get(), &d);
  EXPECT_FALSE(d.ended);  // not committed: no end of partition
  EXPECT_EQ(d.records, Expected(0, 0, 0, 300));
  // Everything sent was released: the writer has its segments back (its credit).
  EXPECT_EQ(writer_pool_->available_segments(), free_before);
  EXPECT_EQ(store_->Stats().bytes_in_memory, 0u);
  ASSERT_TRUE(w.Write(0, 0, 0, 300, 10).ok());
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  DrainAvailable(v->get(), &d);
  EXPECT_TRUE(d.ended);
  EXPECT_EQ(d.records, Expected(0, 0, 0, 310));
  // A pipelined subpartition has one reader.
  CountingListener l2;
  auto second = View(id, 0, &l2);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second.status().message().find("already has its one reader"), std::string::npos);
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

// An append wakes the readers of its subpartition only: with a reader per subpartition, a
// buffer appended used to notify every one of them (each a wake-up of the server's loop).
TEST_F(PartitionStoreTest, AnAppendWakesOnlyTheReadersOfItsSubpartition) {
  MakeStore(64u << 20);
  TestWriter w = Open(0, 0, 3, PartitionMode::kPipelined);
  const std::string id = Register({{0, 0}});
  CountingListener l0, l1, l2;
  auto v0 = View(id, 0, &l0);
  auto v1 = View(id, 1, &l1);
  auto v2 = View(id, 2, &l2);
  ASSERT_TRUE(v0.ok() && v1.ok() && v2.ok());
  ASSERT_TRUE(w.Write(0, 0, 1, 0, 20).ok());
  EXPECT_EQ(l1.notifications.load(), 1);  // armed until it polls
  EXPECT_EQ(l0.notifications.load(), 0);
  EXPECT_EQ(l2.notifications.load(), 0);
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 20).ok());
  EXPECT_EQ(l0.notifications.load(), 1);
  EXPECT_EQ(l2.notifications.load(), 0);
  Drained d0, d1;
  DrainAvailable(v0->get(), &d0);
  DrainAvailable(v1->get(), &d1);
  EXPECT_EQ(d0.records, Expected(0, 0, 0, 20));
  EXPECT_EQ(d1.records, Expected(0, 0, 1, 20));
  // The commit concerns every reader: each is told (the end of partition is readable).
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  EXPECT_GE(l2.notifications.load(), 1);
  Drained d2;
  DrainAvailable(v2->get(), &d2);
  EXPECT_TRUE(d2.ended);
  EXPECT_TRUE(d2.records.empty());
  v0->reset();
  v1->reset();
  v2->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, AbortFailsReadersNamingJobAndPartition) {
  MakeStore(64u << 20);
  TestWriter a = Open(0, 0, 1, PartitionMode::kBlocking);
  TestWriter b = Open(1, 0, 1, PartitionMode::kBlocking);
  ASSERT_TRUE(a.Write(0, 0, 0, 0, 10).ok());
  ASSERT_TRUE(store_->Commit(a.id()).ok());
  ASSERT_TRUE(b.Write(1, 0, 0, 0, 10).ok());
  const std::string id = Register({{0, 0}, {1, 0}});
  CountingListener l;
  auto v = View(id, 0, &l);
  ASSERT_TRUE(v.ok());
  store_->Abort(b.id(), "writer process 4242 exited");
  Drained d;
  DrainAvailable(v->get(), &d);
  EXPECT_FALSE(d.ended);  // never a short partition presented as complete
  EXPECT_EQ(d.error.message(),
            "job 'j1' partition 1 attempt 0 failed on 127.0.0.1:7000: writer process 4242 exited");
  EXPECT_EQ(writer_pool_->available_segments(), writer_pool_->total_segments() - 1);
  // Appending to an aborted writer is refused.
  EXPECT_EQ(b.Write(1, 0, 0, 10, 1).code(), StatusCode::kClosed);
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, ReadsExactlyTheNamedAttempts) {
  MakeStore(64u << 20);
  TestWriter first = Open(5, 0, 1, PartitionMode::kBlocking);
  TestWriter rerun = Open(5, 1, 1, PartitionMode::kBlocking);
  TestWriter other = Open(6, 0, 1, PartitionMode::kBlocking);
  ASSERT_TRUE(first.Write(5, 0, 0, 0, 20).ok());
  ASSERT_TRUE(rerun.Write(5, 1, 0, 0, 20).ok());
  ASSERT_TRUE(other.Write(6, 0, 0, 0, 7).ok());
  for (auto* w : {&first, &rerun, &other}) ASSERT_TRUE(store_->Commit(w->id()).ok());
  Drained d = ReadAll(Register({{5, 1}, {6, 0}}), 0);
  EXPECT_TRUE(d.ended);
  std::vector<std::string> want = Expected(5, 1, 0, 20);
  for (auto& r : Expected(6, 0, 0, 7)) want.push_back(r);
  EXPECT_EQ(d.records, want);
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, HostileReadSetsAndRequests) {
  MakeStore(64u << 20);
  TestWriter w = Open(0, 0, 2, PartitionMode::kBlocking);
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  auto unknown_job = store_->RegisterReadSet("nope", kToken, {{0, 0}});
  EXPECT_EQ(unknown_job.status().code(), StatusCode::kPermissionDenied);
  auto wrong_token = store_->RegisterReadSet("j1", "x" + kToken.substr(1), {{0, 0}});
  EXPECT_EQ(wrong_token.status().code(), StatusCode::kPermissionDenied);
  auto missing = store_->RegisterReadSet("j1", kToken, {{0, 0}, {0, 9}});
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);  // partition 0 twice
  auto absent = store_->RegisterReadSet("j1", kToken, {{0, 0}, {4, 2}});
  EXPECT_EQ(absent.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(absent.status().message(),
            "job 'j1' partition 4 attempt 2 does not exist on 127.0.0.1:7000");
  EXPECT_EQ(store_->RegisterReadSet("j1", kToken, {}).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<MapOutputRef> huge(70000);
  for (uint32_t i = 0; i < huge.size(); ++i) huge[i].partition = i;
  auto too_many = store_->RegisterReadSet("j1", kToken, huge);
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("max_read_set_entries"), std::string::npos);

  const std::string id = Register({{0, 0}});
  CountingListener l;
  auto no_proof = store_->CreateView(id, 0, {}, &l);
  EXPECT_EQ(no_proof.status().code(), StatusCode::kPermissionDenied);
  auto wrong_sub_proof =
      store_->CreateView(id, 0, shuffle::auth::MakePartitionProof(kToken, id, 1), &l);
  EXPECT_EQ(wrong_sub_proof.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(View(id, 2, &l).status().code(), StatusCode::kNotFound);  // 2 subpartitions
  EXPECT_EQ(View("ext/j1/00000000000000000000000000000000", 0, &l).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(View("ext/ghost/0", 0, &l).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(View("ext/", 0, &l).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(l.notifications.load(), 0);
  // Writers: a second token, a duplicate attempt, bad subpartitions.
  WriterSpec spec{"j1", "other-token", 1, 0, 1, PartitionMode::kBlocking};
  EXPECT_EQ(store_->OpenWriter(spec).status().code(), StatusCode::kPermissionDenied);
  spec = {"j1", kToken, 0, 0, 1, PartitionMode::kBlocking};
  EXPECT_EQ(store_->OpenWriter(spec).status().code(), StatusCode::kInvalidArgument);
  spec = {"j1", kToken, 1, 0, 0, PartitionMode::kBlocking};
  EXPECT_EQ(store_->OpenWriter(spec).status().code(), StatusCode::kInvalidArgument);
  spec = {"a/b", kToken, 1, 0, 1, PartitionMode::kBlocking};
  EXPECT_EQ(store_->OpenWriter(spec).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Release("j1", "bad").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(store_->Release("nope", kToken).code(), StatusCode::kNotFound);
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

// A writer names how many subpartitions it wants, and each costs bookkeeping while the store
// holds its output (released or expired with the job): they are budgeted across jobs. A writer
// past the budget is refused naming the option, and its job is not created; a release makes
// room again.
// Each read set entry (a map output named) costs bookkeeping until its job goes, and a reader
// names as many as it likes, in up to max_read_sets_per_job sets: budgeted across jobs. A set
// past the budget is refused naming the option; the same set again costs nothing; a release
// makes room again.
TEST_F(PartitionStoreTest, ReadSetEntriesAreBudgetedAcrossJobs) {
  max_held_read_set_entries_ = 5;
  MakeStore(64u << 20);
  for (uint32_t p = 0; p < 3; ++p) {
    TestWriter w = Open(p, 0, 1, PartitionMode::kBlocking, "j1");
    ASSERT_TRUE(store_->Commit(w.id()).ok());
  }
  TestWriter other = Open(0, 0, 1, PartitionMode::kBlocking, "j2");
  ASSERT_TRUE(store_->Commit(other.id()).ok());
  const std::string all = Register({{0, 0}, {1, 0}, {2, 0}});
  EXPECT_EQ(Register({{0, 0}, {1, 0}, {2, 0}}), all);  // the same set: no new entries
  EXPECT_EQ(store_->Stats().read_set_entries, 3u);
  ExpectRefused(store_->RegisterReadSet("j1", kToken, {{0, 0}, {1, 0}, {2, 0}, {0, 1}}).status(),
                StatusCode::kInvalidArgument, "names partition 0 twice");
  Register({{1, 0}, {2, 0}});  // exactly up to the budget
  EXPECT_EQ(store_->Stats().read_set_entries, 5u);
  ExpectRefused(store_->RegisterReadSet("j1", kToken, {{0, 0}, {1, 0}}).status(),
                StatusCode::kResourceExhausted,
                "a read set of 2 map outputs would pass the 5 read set entries the store holds "
                "at most (5 held; store_max_read_set_entries)");
  EXPECT_FALSE(store_->RegisterReadSet("j2", kToken, {{0, 0}}).ok());
  ASSERT_TRUE(store_->Release("j1", kToken).ok());
  EXPECT_EQ(store_->Stats().read_set_entries, 0u);
  Register({{0, 0}}, "j2");
  EXPECT_EQ(store_->Stats().read_set_entries, 1u);
  ASSERT_TRUE(store_->Release("j2", kToken).ok());
  EXPECT_EQ(store_->Stats().read_set_entries, 0u);
}

TEST_F(PartitionStoreTest, HeldSubpartitionsAreBudgetedAcrossJobs) {
  max_held_subpartitions_ = 100;
  MakeStore(64u << 20);
  TestWriter a = Open(0, 0, 60, PartitionMode::kBlocking, "j1");
  ASSERT_TRUE(store_->Commit(a.id()).ok());
  EXPECT_EQ(store_->Stats().subpartitions, 60u);
  ExpectRefused(store_->OpenWriter({"j2", kToken, 0, 0, 41, PartitionMode::kBlocking}).status(),
                StatusCode::kResourceExhausted,
                "its 41 subpartitions would pass the 100 the store holds at most (60 held; "
                "store_max_subpartitions)");
  EXPECT_EQ(store_->Stats().jobs, 1u) << "the refused writer's job was not created";
  TestWriter b = Open(0, 0, 40, PartitionMode::kPipelined, "j2");  // exactly up to the budget
  store_->Abort(b.id(), "test");  // an aborted output is held until its job goes
  EXPECT_EQ(store_->Stats().subpartitions, 100u);
  EXPECT_FALSE(store_->OpenWriter({"j1", kToken, 1, 0, 1, PartitionMode::kBlocking}).ok());
  ASSERT_TRUE(store_->Release("j1", kToken).ok());
  EXPECT_EQ(store_->Stats().subpartitions, 40u);
  TestWriter c = Open(1, 0, 60, PartitionMode::kBlocking, "j2");
  ASSERT_TRUE(store_->Commit(c.id()).ok());
  ASSERT_TRUE(store_->Release("j2", kToken).ok());
  EXPECT_EQ(store_->Stats().subpartitions, 0u);
}

// A blocking subpartition may be read again, but a read set's live readers are capped (twice
// its subpartitions, +16): a reader opening views in a loop gets ResourceExhausted, and a
// released view makes room. Views register with their read set, not with each output.
TEST_F(PartitionStoreTest, LiveViewsOfAReadSetAreCapped) {
  MakeStore(64u << 20);
  TestWriter w = Open(0, 0, 2, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 3).ok());
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  const std::string id = Register({{0, 0}});
  CountingListener l;
  std::vector<std::unique_ptr<shuffle::SubpartitionView>> views;
  for (int i = 0; i < 20; ++i) {
    auto v = View(id, i % 2, &l);
    ASSERT_TRUE(v.ok()) << i << ": " << v.status().ToString();
    views.push_back(std::move(*v));
  }
  ExpectRefused(View(id, 0, &l).status(), StatusCode::kResourceExhausted,
                "already has 20 readers, its limit (twice its 2 subpartitions, +16)");
  EXPECT_EQ(store_->Stats().readers, 20u);
  views.back()->Release();
  views.pop_back();
  Drained d = ReadAll(id, 0);  // room again: a whole read
  EXPECT_TRUE(d.ended) << d.error.ToString();
  EXPECT_EQ(Stripped(d.records), Expected(0, 0, 0, 3));
  for (auto& v : views) v->Release();
  views.clear();
  EXPECT_EQ(store_->Stats().readers, 0u);
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

// A listing copies at most what its caller can send, and says how many there are.
TEST_F(PartitionStoreTest, ListingsAreCutAndCounted) {
  MakeStore(64u << 20);
  for (uint32_t p = 0; p < 5; ++p) {
    TestWriter w = Open(p, 0, 1, PartitionMode::kBlocking, p < 3 ? "j1" : "j2");
    ASSERT_TRUE(store_->Commit(w.id()).ok());
  }
  size_t total = 0;
  EXPECT_EQ(store_->List("", 2, &total).size(), 2u);
  EXPECT_EQ(total, 5u);
  EXPECT_EQ(store_->List("j2", 10, &total).size(), 2u);
  EXPECT_EQ(total, 2u);
  EXPECT_EQ(store_->List("").size(), 5u);
  ASSERT_TRUE(store_->Release("j1", kToken).ok());
  ASSERT_TRUE(store_->Release("j2", kToken).ok());
}

TEST_F(PartitionStoreTest, SpillsOverBudgetAndReadsBackWithChecksums) {
  MakeStore(16 * kSegment);  // 16 segments in memory at most
  TestWriter w = Open(0, 0, 3, PartitionMode::kBlocking);
  for (uint32_t sp = 0; sp < 3; ++sp) ASSERT_TRUE(w.Write(0, 0, sp, 0, 2000, 40).ok());
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  PartitionStoreStats s = store_->Stats();
  EXPECT_GT(s.spill_bytes_total, 0u);
  EXPECT_EQ(s.spill_files, 2u);  // one data file and one index for the map output
  EXPECT_EQ(SpillFilesIn(dir_.Path("spill")), 2u);
  EXPECT_LE(writer_pool_->used_segments(), 16u);
  const std::string id = Register({{0, 0}});
  for (uint32_t sp = 0; sp < 3; ++sp) {
    Drained d;
    CountingListener l;
    auto v = View(id, sp, &l);
    ASSERT_TRUE(v.ok());
    DrainAvailable(v->get(), &d);  // releases each buffer: read segments come back
    EXPECT_TRUE(d.ended) << d.error.ToString();
    EXPECT_EQ(Stripped(d.records), Expected(0, 0, sp, 2000));
  }
  auto info = store_->List("j1");
  ASSERT_EQ(info.size(), 1u);
  EXPECT_GT(info[0].bytes_on_disk, 0u);
  EXPECT_EQ(info[0].state, "committed");
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
  EXPECT_EQ(SpillFilesIn(dir_.Path("spill")), 0u);
  EXPECT_EQ(store_->Stats().disk_bytes, 0u);
}

TEST_F(PartitionStoreTest, CorruptSpillFileIsNamedInTheError) {
  MakeStore(4 * kSegment);
  TestWriter w = Open(0, 0, 1, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 3000, 20).ok());
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  std::string data;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.Path("spill"))) {
    if (e.path().extension() == ".data") data = e.path().string();
  }
  ASSERT_FALSE(data.empty());
  // One flipped bit in the last stripe of the first buffer (a 4 KiB segment).
  {
    std::fstream f(data, std::ios::in | std::ios::out | std::ios::binary);
    char c = 0;
    f.seekg(kSpillBufferHeaderBytes + 4000);
    f.get(c);
    f.seekp(kSpillBufferHeaderBytes + 4000);
    f.put(static_cast<char>(c ^ 0x01));
  }
  Drained d = ReadAll(Register({{0, 0}}), 0);
  EXPECT_FALSE(d.ended);
  EXPECT_EQ(d.error.code(), StatusCode::kIoError);
  EXPECT_NE(d.error.message().find("spill file " + data + " at offset 0: checksum mismatch"),
            std::string::npos)
      << d.error.message();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, AtTheQuotaWritersWaitAndNothingGoesOverIt) {
  const uint64_t quota = 40 * (kSegment + kSpillBufferHeaderBytes) + 32 * 4;
  MakeStore(8 * kSegment, quota);
  TestWriter w = Open(0, 0, 1, PartitionMode::kBlocking);
  // ~120 segments of records: more than budget + quota.
  Status st = w.Write(0, 0, 0, 0, 120 * 100, 30);
  ASSERT_TRUE(st.ok()) << st.ToString();
  PartitionStoreStats s = store_->Stats();
  EXPECT_LE(s.disk_bytes, quota);
  EXPECT_GT(s.disk_bytes, 0u);
  EXPECT_EQ(s.writers_waiting, 1u);  // the writer's buffers are held: its credit stopped
  EXPECT_GT(writer_pool_->used_segments(), 8u);
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  // Another job's release frees nothing here; releasing this one frees everything.
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
  EXPECT_EQ(store_->Stats().disk_bytes, 0u);
}

TEST_F(PartitionStoreTest, QuotaFreedByReleaseLetsHeldDataSpill) {
  const uint64_t quota = 20 * (kSegment + kSpillBufferHeaderBytes) + 32 * 4;
  MakeStore(4 * kSegment, quota);
  TestWriter old = Open(0, 0, 1, PartitionMode::kBlocking, "old");
  ASSERT_TRUE(old.Write(0, 0, 0, 0, 30 * 100, 30).ok());
  ASSERT_TRUE(store_->Commit(old.id()).ok());
  TestWriter w = Open(0, 0, 1, PartitionMode::kBlocking, "new");
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 10 * 100, 30).ok());
  EXPECT_EQ(store_->Stats().writers_waiting, 1u);
  EXPECT_TRUE(store_->Release("old", kToken).ok());
  store_->WaitForSpills();  // the release asked the store's thread to spill what it held
  EXPECT_GT(store_->List("new")[0].bytes_on_disk, 0u);
  EXPECT_EQ(store_->Stats().writers_waiting, 0u);
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  Drained d = ReadAll(Register({{0, 0}}, "new"), 0);
  EXPECT_TRUE(d.ended) << d.error.ToString();
  EXPECT_EQ(Stripped(d.records), Expected(0, 0, 0, 1000));
  EXPECT_TRUE(store_->Release("new", kToken).ok());
}

TEST_F(PartitionStoreTest, NoSpaceFailsTheWriterAndCommittedDataStaysReadable) {
  MakeStore(4 * kSegment);
  TestWriter done = Open(0, 0, 1, PartitionMode::kBlocking);
  ASSERT_TRUE(done.Write(0, 0, 0, 0, 300, 30).ok());
  ASSERT_TRUE(store_->Commit(done.id()).ok());
  SpillFile::SetWriteFaultForTesting(ENOSPC);
  TestWriter w = Open(1, 0, 1, PartitionMode::kBlocking);
  Status st = w.Write(1, 0, 0, 0, 3000, 30);
  SpillFile::SetWriteFaultForTesting(0);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kIoError);
  EXPECT_NE(st.message().find("No space left on device"), std::string::npos) << st.message();
  // The writer failed in the store: its Commit names why (the spill's error), not just "closed".
  const Status commit = store_->Commit(w.id()).status();
  EXPECT_EQ(commit.code(), StatusCode::kIoError);
  EXPECT_NE(commit.message().find("No space left on device"), std::string::npos)
      << commit.message();
  Drained d = ReadAll(Register({{0, 0}}), 0);
  EXPECT_TRUE(d.ended) << d.error.ToString();
  EXPECT_EQ(Stripped(d.records), Expected(0, 0, 0, 300));
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, AReaderThatNeverComesLeavesMemoryBounded) {
  MakeStore(8 * kSegment);
  TestWriter w = Open(0, 0, 4, PartitionMode::kPipelined);
  for (uint32_t round = 0; round < 20; ++round) {
    for (uint32_t sp = 0; sp < 4; ++sp) {
      ASSERT_TRUE(w.Write(0, 0, sp, round * 200, 200, 30).ok());
    }
    EXPECT_LE(writer_pool_->used_segments(), 9u);  // budget + the buffer being appended
  }
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  EXPECT_GT(store_->Stats().spill_bytes_total, 0u);
  Drained d = ReadAll(Register({{0, 0}}), 2);
  EXPECT_TRUE(d.ended) << d.error.ToString();
  EXPECT_EQ(Stripped(d.records), Expected(0, 0, 2, 4000));
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, PipelinedReaderKeepsItsPlaceAcrossSpills) {
  MakeStore(6 * kSegment);
  TestWriter w = Open(0, 0, 2, PartitionMode::kPipelined);
  const std::string id = Register({{0, 0}});
  CountingListener l;
  auto v = View(id, 1, &l);
  ASSERT_TRUE(v.ok());
  Drained d;
  uint64_t next = 0;
  for (int round = 0; round < 12; ++round) {
    // Subpartition 0 has no reader: it fills memory and forces spills of the whole output,
    // while the reader of subpartition 1 is part way through what is in memory.
    ASSERT_TRUE(w.Write(0, 0, 0, round * 300, 300, 30).ok());
    ASSERT_TRUE(w.Write(0, 0, 1, next, 150, 30).ok());
    next += 150;
    if (round % 3 == 0) DrainAvailable(v->get(), &d);
  }
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  EXPECT_GT(store_->Stats().spill_bytes_total, 0u);
  DrainAvailable(v->get(), &d);
  EXPECT_TRUE(d.ended) << d.error.ToString();
  EXPECT_EQ(Stripped(d.records), Expected(0, 0, 1, next));
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, ConcurrentWritersAndReadersWithSpills) {
  MakeStore(16 * kSegment);
  constexpr uint32_t kWriters = 4, kRecords = 3000;
  std::vector<TestWriter> writers;
  std::vector<MapOutputRef> refs;
  for (uint32_t p = 0; p < kWriters; ++p) {
    writers.push_back(Open(p, 0, 2, PartitionMode::kBlocking));
    refs.push_back({p, 0});
  }
  const std::string id = Register(refs);
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < kWriters; ++p) {
    threads.emplace_back([&, p] {
      for (uint32_t sp = 0; sp < 2; ++sp) {
        EXPECT_TRUE(writers[p].Write(p, 0, sp, 0, kRecords, 20).ok());
      }
      EXPECT_TRUE(store_->Commit(writers[p].id()).ok());
    });
  }
  // Two readers of subpartition 1 poll while the writers write and the store spills.
  std::vector<Drained> got(2);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CountingListener l;
      auto v = View(id, 1, &l);
      ASSERT_TRUE(v.ok());
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (!got[r].ended && got[r].error.ok() && std::chrono::steady_clock::now() < deadline) {
        DrainAvailable(v->get(), &got[r]);
        std::this_thread::yield();
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::string> want;
  for (uint32_t p = 0; p < kWriters; ++p) {
    for (auto& rec : Expected(p, 0, 1, kRecords)) want.push_back(rec);
  }
  for (const Drained& d : got) {
    EXPECT_TRUE(d.ended) << d.error.ToString();
    EXPECT_EQ(Stripped(d.records), want);
  }
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

// A writer's recycler may take locks and call the store (the local writer service returns the
// segment as credit): the store never releases a writer's buffer under its own lock. This
// recycler calls the store; under the store's lock it would deadlock (the test times out).
class CallingRecycler : public buffer::BufferRecycler {
 public:
  CallingRecycler(PartitionStore** store, buffer::NetworkBufferPool* pool)
      : store_(store), pool_(pool) {}
  void Recycle(buffer::MemorySegment* segment) override {
    if (*store_ != nullptr) (void)(*store_)->Stats();
    calls.fetch_add(1);
    pool_->RecycleSegment(segment);
  }
  std::atomic<int> calls{0};

 private:
  PartitionStore** store_;
  buffer::NetworkBufferPool* pool_;
};

TEST_F(PartitionStoreTest, WritersBuffersAreReleasedOutsideTheStoresLock) {
  MakeStore(2 * kSegment);
  PartitionStore* raw = store_.get();
  CallingRecycler recycler(&raw, writer_pool_.get());
  auto append = [&](WriterId w, uint32_t sp) {
    buffer::Buffer b = buffer::Buffer::Wrap(writer_pool_->TryRequestSegment(), &recycler);
    shuffle::StoreRecordLength(b.data(), 3);
    std::memcpy(b.data() + 4, "abc", 3);
    b.SetSize(7);
    return store_->Append(w, sp, std::move(b), 1);
  };
  auto piped = store_->OpenWriter({"j1", kToken, 0, 0, 1, PartitionMode::kPipelined});
  auto spilled = store_->OpenWriter({"j1", kToken, 1, 0, 1, PartitionMode::kBlocking});
  auto aborted = store_->OpenWriter({"j1", kToken, 2, 0, 1, PartitionMode::kBlocking});
  ASSERT_TRUE(piped.ok() && spilled.ok() && aborted.ok());
  const std::string id = Register({{0, 0}});
  CountingListener l;
  auto v = View(id, 0, &l);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(append(*piped, 0).ok());
  Drained d;
  DrainAvailable(v->get(), &d);  // trimmed after it was read
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(append(*spilled, 0).ok());  // over budget: spilled
  store_->WaitForSpills();  // on the store's thread: its releases call the recycler there
  ASSERT_TRUE(append(*aborted, 0).ok());
  store_->Abort(*aborted, "test");
  EXPECT_EQ(d.records, std::vector<std::string>{"abc"});
  EXPECT_GE(recycler.calls.load(), 2);
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
  EXPECT_EQ(recycler.calls.load(), 6);
  raw = nullptr;
}

// A writer whose every segment the store holds (WriterWaiting) gets its credit back either way:
// under the budget its buffers are copied into the store's own segments (no disk IO), and when
// the store cannot take segments for them they are spilled, whatever the budget.
TEST_F(PartitionStoreTest, AWaitingWriterUnderTheBudgetIsCopiedNotSpilled) {
  MakeStore(64u << 20);  // far from the budget
  TestWriter w = Open(0, 0, 2, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(0, 0, 1, 0, 400, 30).ok());
  const uint32_t held = writer_pool_->used_segments();
  EXPECT_GT(held, 2u);
  store_->WriterWaiting(w.id());  // the writer service: no credit left
  EXPECT_TRUE(testutil::PollUntil([&] { return writer_pool_->used_segments() == 0u; },
                                  std::chrono::seconds(10)));
  PartitionStoreStats st = store_->Stats();
  EXPECT_EQ(st.spill_bytes_total, 0u);
  EXPECT_GT(st.copied_bytes_total, 0u);
  EXPECT_EQ(read_pool_->used_segments(), held) << "the copies live in the store's segments";
  WriteOnCommitAndReadBack(w);
  EXPECT_EQ(read_pool_->used_segments(), 0u) << "the release gives the copies back";
}

TEST_F(PartitionStoreTest, AWaitingWriterIsSpilledWhenTheStoreCannotCopy) {
  MakeStore(64u << 20);
  auto hog = read_pool_->RequestExclusiveSegments(read_pool_->total_segments());
  ASSERT_TRUE(hog.ok()) << hog.status().ToString();
  TestWriter w = Open(0, 0, 2, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(0, 0, 1, 0, 400, 30).ok());
  EXPECT_EQ(store_->Stats().spill_bytes_total, 0u);
  store_->WriterWaiting(w.id());
  EXPECT_TRUE(testutil::PollUntil([&] { return writer_pool_->used_segments() == 0u; },
                                  std::chrono::seconds(10)));
  EXPECT_GT(store_->Stats().spill_bytes_total, 0u);
  EXPECT_EQ(store_->Stats().copied_bytes_total, 0u);
  read_pool_->RecycleExclusiveSegments(*hog);
  WriteOnCommitAndReadBack(w);
}

// A starved pipelined writer whose reader reads on is backpressured (the store keeps nothing);
// once that reader stalls, or for a writer whose output nobody is reading, the store keeps it.
TEST_F(PartitionStoreTest, APipelinedWriterIsBackpressuredWhileItsReaderReadsOn) {
  MakeStore(64u << 20);
  TestWriter read = Open(0, 0, 1, PartitionMode::kPipelined);
  TestWriter unread = Open(1, 0, 1, PartitionMode::kPipelined);
  CountingListener l;
  auto v = View(Register({{0, 0}, {1, 0}}), 0, &l);  // reads partition 0 first, then 1
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(read.Write(0, 0, 0, 0, 300, 30).ok());
  ASSERT_TRUE(unread.Write(1, 0, 0, 0, 300, 30).ok());
  auto take_one = [&] {
    auto item = (*v)->PollNext();
    ASSERT_TRUE(item.ok() && item->has_value());
  };
  take_one();  // the reader is on partition 0
  store_->WriterWaiting(read.id());
  store_->WriterWaiting(unread.id());
  store_->WaitForSpills();
  PartitionStoreStats st = store_->Stats();
  EXPECT_EQ(st.spill_bytes_total, 0u);
  const uint64_t kept_unread = st.copied_bytes_total;
  EXPECT_GT(kept_unread, 0u) << "nobody reads partition 1 yet: kept";
  take_one();  // still reading on: backpressure again
  store_->WriterWaiting(read.id());
  store_->WaitForSpills();
  EXPECT_EQ(store_->Stats().copied_bytes_total, kept_unread);
  store_->WriterWaiting(read.id());  // the reader stalled since the last call: kept now
  store_->WaitForSpills();
  EXPECT_GT(store_->Stats().copied_bytes_total, kept_unread);
  ASSERT_TRUE(store_->Commit(read.id()).ok());
  ASSERT_TRUE(store_->Commit(unread.id()).ok());
  Drained d;
  DrainAvailable(v->get(), &d);
  EXPECT_TRUE(d.ended) << d.error.ToString();
  // Every record after the two buffers taken above, in order per writer, nothing lost.
  const auto got = Stripped(d.records);
  const auto p0 = Expected(0, 0, 0, 300), p1 = Expected(1, 0, 0, 300);
  ASSERT_GT(got.size(), 300u);
  const size_t rest0 = got.size() - 300;
  EXPECT_EQ(std::vector<std::string>(got.begin(), got.begin() + rest0),
            std::vector<std::string>(p0.end() - rest0, p0.end()));
  EXPECT_EQ(std::vector<std::string>(got.begin() + rest0, got.end()), p1);
  v->reset();
  EXPECT_TRUE(store_->Release("j1", kToken).ok());
}

TEST_F(PartitionStoreTest, RetentionReleasesIdleJobs) {
  MakeStore(4 * kSegment);
  WriterSpec spec{"short", kToken, 0, 0, 1, PartitionMode::kBlocking, std::chrono::seconds(5)};
  auto id = store_->OpenWriter(spec);
  ASSERT_TRUE(id.ok());
  TestWriter w(store_.get(), writer_pool_, *id);
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 2000, 30).ok());
  ASSERT_TRUE(store_->Commit(*id).ok());
  TestWriter keep = Open(0, 0, 1, PartitionMode::kBlocking, "long");  // default 1 h
  ASSERT_TRUE(store_->Commit(keep.id()).ok());
  auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(store_->ExpireRetention(now), 0u);
  EXPECT_EQ(store_->ExpireRetention(now + std::chrono::seconds(6)), 1u);
  EXPECT_TRUE(store_->List("short").empty());
  EXPECT_EQ(store_->List("long").size(), 1u);
  EXPECT_EQ(SpillFilesIn(dir_.Path("spill")), 0u);
  EXPECT_EQ(store_->Release("short", kToken).code(), StatusCode::kNotFound);
  EXPECT_TRUE(store_->Release("long", kToken).ok());
}

TEST_F(PartitionStoreTest, LeftoverSpillFilesAreRemovedAtStart) {
  std::filesystem::create_directories(dir_.Path("spill"));
  std::ofstream(dir_.Path("spill") + "/sluice-spill-j1-p0-a0.data") << "crash";
  std::ofstream(dir_.Path("spill") + "/sluice-spill-j1-p0-a0.index") << "crash";
  std::ofstream(dir_.Path("spill") + "/keep.txt") << "not ours";
  // A crashed daemon's node directory (its lock is free) and a live one's (locked).
  const std::string crashed = dir_.Path("spill") + "/node-127.0.0.1-7001";
  std::filesystem::create_directories(crashed);
  std::ofstream(crashed + "/lock");
  std::ofstream(crashed + "/sluice-spill-j9-p0-a0.data") << "crash";
  // A release cut short: the lock file went, the empty directory stayed.
  const std::string unlocked = dir_.Path("spill") + "/node-127.0.0.1-7002";
  std::filesystem::create_directories(unlocked);
  // A live daemon's directory with a file that is not Sluice's.
  const std::string live = dir_.Path("spill") + "/node-127.0.0.1-7003";
  std::filesystem::create_directories(live);
  std::ofstream(live + "/notes.txt") << "not ours";
  int live_lock = ::open((live + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(live_lock, 0);
  ASSERT_EQ(::flock(live_lock, LOCK_EX | LOCK_NB), 0);
  MakeStore(4 * kSegment);
  EXPECT_EQ(SpillFilesIn(dir_.Path("spill")), 0u);
  EXPECT_TRUE(std::filesystem::exists(dir_.Path("spill") + "/keep.txt"));
  EXPECT_FALSE(std::filesystem::exists(crashed)) << "a dead node's directory is removed";
  EXPECT_FALSE(std::filesystem::exists(unlocked));
  EXPECT_TRUE(std::filesystem::exists(live + "/lock")) << "a live node's directory stays";
  EXPECT_TRUE(std::filesystem::exists(live + "/notes.txt"));
  ::close(live_lock);
  // A second store for the same node cannot take the directory the first one holds.
  PartitionStoreOptions o;
  o.node = "127.0.0.1:7000";
  o.spill_dir = dir_.Path("spill");
  auto second = PartitionStore::Create(o);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("is in use by another daemon"), std::string::npos);
}

// A stopped store leaves nothing in spill_dir: its spill files, lock file and node directory go;
// a file that is not Sluice's keeps the directory (and its lock, for the next start to decide).
TEST_F(PartitionStoreTest, AStoppedStoreRemovesItsNodeDirectory) {
  MakeStore(4 * kSegment);
  const std::string own = dir_.Path("spill") + "/node-127.0.0.1-7000";
  ASSERT_TRUE(std::filesystem::exists(own + "/lock"));
  TestWriter w = Open(0, 0, 1, PartitionMode::kBlocking);
  ASSERT_TRUE(w.Write(0, 0, 0, 0, 3000, 20).ok());
  ASSERT_TRUE(store_->Commit(w.id()).ok());
  ASSERT_EQ(SpillFilesIn(own), 2u) << "the over-budget output spilled";
  store_.reset();  // a committed job still held: the shutdown releases it
  EXPECT_FALSE(std::filesystem::exists(own)) << "spill files, lock and directory are removed";
  EXPECT_TRUE(std::filesystem::exists(dir_.Path("spill"))) << "spill_dir itself stays";

  MakeStore(2 * kSegment);
  std::ofstream(own + "/notes.txt") << "not ours";
  store_.reset();
  EXPECT_TRUE(std::filesystem::exists(own + "/notes.txt"));
  EXPECT_TRUE(std::filesystem::exists(own + "/lock"));
}

// Stores for two nodes start and stop over and over in one spill_dir: each start removes the
// other's directory whenever that one is stopped, racing its next claim. Every claim succeeds
// (a claimer that opened a lock file being removed starts again) and nothing is left.
TEST(SpillDirTest, ClaimsRacingRemovalsAllSucceed) {
  sluice::testutil::TempDir dir("sluice-spill-race");
  const std::string root = dir.Path("spill");
  auto loop = [&](const std::string& node, std::atomic<int>* failures) {
    for (int i = 0; i < 200; ++i) {
      auto claim = ClaimSpillDir(root, node);
      if (!claim.ok()) {
        ADD_FAILURE() << node << ": " << claim.status().ToString();
        failures->fetch_add(1);
        return;
      }
      // The claim is live: its lock file is the one named in its directory, which takes files.
      std::ofstream spill(claim->dir + "/sluice-spill-x.data");
      spill << i << std::flush;
      if (!spill.good() || !std::filesystem::exists(claim->dir + "/lock")) {
        ADD_FAILURE() << node << ": claimed " << claim->dir << " but another store removed it";
        failures->fetch_add(1);
      }
      ReleaseSpillDir(*claim);
    }
  };
  std::atomic<int> failures{0};
  std::thread a(loop, "127.0.0.1:1", &failures);
  std::thread b(loop, "127.0.0.1:2", &failures);
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(std::filesystem::is_empty(root)) << "no node directory is left";
}

}  // namespace
}  // namespace sluice::store
