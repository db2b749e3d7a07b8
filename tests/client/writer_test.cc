// The local write path end to end: client::Writer against a LocalWriterService with a recording
// sink, in-process and with the writer in a forked process. Every test ends with the leak check:
// every segment back in the pool, every arena freed, the socket file removed.
#include "client/writer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <thread>

#include "tests/client/forked_writer.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "tests/client/writer_test_util.h"

namespace sluice::client {
namespace {

using testutil::kWriterSecret;
using testutil::RecordingSink;

class WriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    buffer::NetworkBufferPoolOptions po;
    po.network_memory = 64 * 4096;
    po.segment_size = 4096;
    pool_ = buffer::NetworkBufferPool::Create(po).value();
    Start();
  }
  void Start(uint32_t credit = 4,
             std::chrono::milliseconds reserve_timeout = std::chrono::milliseconds(200)) {
    daemon::LocalWriterServiceOptions o;
    o.socket_path = dir_.Path("sluiced.sock");
    o.auth.secret = kWriterSecret;
    o.writer_credit = credit;
    o.node_name = "test-node";
    o.handshake_timeout = std::chrono::milliseconds(3000);
    o.reserve_timeout = reserve_timeout;
    auto s = daemon::LocalWriterService::Start(o, pool_, &sink_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    service_ = std::move(*s);
  }
  // Stops the service (its thread), runs `fork_child` while the process is single-threaded
  // (see forked_writer.h), and starts the service again with the same options.
  void Restart(const std::function<void()>& fork_child) {
    service_->Stop();
    service_.reset();
    fork_child();
    Start();
  }
  void TearDown() override {
    service_->Stop();
    sink_.Clear();
    testutil::ExpectAllSegmentsBack(*pool_, "local writer service");
    EXPECT_TRUE(testutil::PollUntil([&] { return service_->Stats().arenas == 0; },
                                    std::chrono::seconds(5)));
    EXPECT_EQ(service_->Stats().connections, 0u);
    EXPECT_FALSE(std::filesystem::exists(dir_.Path("sluiced.sock")));
  }
  WriterOptions Options(const std::string& job, uint32_t partition, uint32_t subpartitions) {
    WriterOptions w;
    w.socket_path = dir_.Path("sluiced.sock");
    w.secret = kWriterSecret;
    w.job = job;
    w.token = testutil::TokenOf(job);
    w.partition = partition;
    w.subpartitions = subpartitions;
    return w;
  }

  testutil::TempDir dir_{"writer-test"};
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  RecordingSink sink_;
  std::unique_ptr<daemon::LocalWriterService> service_;
};

std::string Rec(uint32_t sub, uint32_t i, size_t size = 0) {
  std::string r = "s" + std::to_string(sub) + "-" + std::to_string(i);
  if (size > r.size()) r.resize(size, static_cast<char>('a' + i % 26));
  return r;
}

TEST_F(WriterTest, WritesClaimsAndCommitsEveryRecordInOrder) {
  auto w = Writer::Open(Options("job-a", 7, 3));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)->segment_size(), 4096u);
  EXPECT_EQ((*w)->credit(), 4u);
  std::vector<std::vector<std::string>> expected(3);
  for (uint32_t i = 0; i < 3000; ++i) {
    const uint32_t sub = i % 3;
    // Small records, records spanning segments (10 KiB > a 4 KiB segment) and empty ones.
    const std::string r = i % 97 == 0 ? Rec(sub, i, 10000) : i % 50 == 1 ? "" : Rec(sub, i, 100);
    ASSERT_TRUE((*w)->Write(sub, r).ok());
    expected[sub].push_back(r);
  }
  for (uint32_t i = 0; i < 100; ++i) {  // in place
    auto span = (*w)->Claim(1, 200);
    ASSERT_TRUE(span.ok()) << span.status().ToString();
    const std::string r = Rec(1, 5000 + i);
    std::memcpy(span->data(), r.data(), r.size());
    ASSERT_TRUE((*w)->CommitClaim(static_cast<uint32_t>(r.size())).ok());
    expected[1].push_back(r);
  }
  auto out = (*w)->Commit();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->job, "job-a");
  EXPECT_EQ(out->partition, 7u);
  EXPECT_EQ(out->records, 3100u);
  auto outputs = sink_.outputs();
  ASSERT_EQ(outputs.size(), 1u);
  const auto& o = outputs.begin()->second;
  EXPECT_TRUE(o.committed);
  EXPECT_FALSE(o.aborted);
  EXPECT_EQ(o.spec.token, testutil::TokenOf("job-a"));
  EXPECT_EQ(o.counted, 3100u);  // the service's framing walk counted every record
  EXPECT_EQ(o.records, expected);
  EXPECT_EQ(o.buffers, (*w)->stats().buffers);
  EXPECT_EQ(service_->Stats().writers_committed, 1u);
  const std::string metrics = daemon::RenderLocalWriterMetrics("n\"1", service_->Stats());
  EXPECT_NE(metrics.find("sluice_local_writers_committed_total{node=\"n\\\"1\"} 1\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("# TYPE sluice_local_writer_arenas gauge"), std::string::npos);
  // A committed writer refuses more work.
  EXPECT_EQ((*w)->Write(0, "late").code(), StatusCode::kInvalidArgument);
}

TEST_F(WriterTest, ClaimLargerThanASegmentIsRefused) {
  auto w = Writer::Open(Options("job-claim", 1, 1));
  ASSERT_TRUE(w.ok());
  auto span = (*w)->Claim(0, 4093);
  ASSERT_FALSE(span.ok());
  EXPECT_EQ(span.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(span.status().message().find("at most 4092"), std::string::npos);
  EXPECT_EQ((*w)->Claim(1, 10).status().code(), StatusCode::kInvalidArgument);  // subpartition
  ASSERT_TRUE((*w)->Claim(0, 10).ok());
  EXPECT_EQ((*w)->Write(0, "x").code(), StatusCode::kInvalidArgument);  // claim open
  EXPECT_EQ((*w)->CommitClaim(11).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE((*w)->CommitClaim(0).ok());
  ASSERT_TRUE((*w)->Commit().ok());
}

TEST_F(WriterTest, WriterInAnotherProcessCommits) {
  const WriterOptions opts = Options("job-fork", 3, 2);
  std::optional<testing::ForkedWriter> child;
  Restart([&] {
    child.emplace([&](int report_fd) {
      auto w = Writer::Open(opts);
      if (!w.ok()) return 2;
      for (uint32_t i = 0; i < 20000; ++i) {
        if (!(*w)->Write(i % 2, Rec(i % 2, i, 100)).ok()) return 3;
      }
      auto out = (*w)->Commit();
      if (!out.ok()) return 4;
      const std::string text = EncodeMapOutput(*out);
      (void)!::write(report_fd, text.data(), text.size());
      return 0;
    });
  });
  child->Go();
  const std::string report = child->ReadReport(std::chrono::seconds(60));
  const int status = child->Wait();
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_FALSE(report.empty());
  auto out = DecodeMapOutput(report);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->records, 20000u);
  auto outputs = sink_.outputs();
  ASSERT_EQ(outputs.size(), 1u);
  const auto& o = outputs.begin()->second;
  ASSERT_EQ(o.records[0].size(), 10000u);
  ASSERT_EQ(o.records[1].size(), 10000u);
  for (uint32_t i = 0; i < 20000; ++i) ASSERT_EQ(o.records[i % 2][i / 2], Rec(i % 2, i, 100));
}

TEST_F(WriterTest, CreditIsBackpressureAndMemoryStaysBounded) {
  sink_.hold(true);
  auto w = Writer::Open(Options("job-bp", 1, 1));
  ASSERT_TRUE(w.ok());
  std::atomic<bool> done{false};
  std::thread t([&] {
    for (uint32_t i = 0; i < 2000; ++i) ASSERT_TRUE((*w)->Write(0, Rec(0, i, 100)).ok());
    done = true;
  });
  // 2000 records of 104 bytes need ~51 segments; the writer holds 4: it must wait.
  ASSERT_TRUE(testutil::PollUntil([&] { return sink_.held() == 4; }, std::chrono::seconds(10)));
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_waiting == 1; },
                                  std::chrono::seconds(10)));
  EXPECT_FALSE(done.load());
  EXPECT_EQ(sink_.held(), 4u);  // never more than the credit
  // The sink is told the writer waits (and again every 200 ms while it lasts): a store then
  // keeps its output, unless a reader is streaming it.
  EXPECT_TRUE(testutil::PollUntil([&] { return sink_.waiting_calls() >= 1; },
                                  std::chrono::seconds(10)));
  EXPECT_EQ(sink_.held(), 4u);
  // 4 reserved for the arena, nothing else taken from the pool.
  EXPECT_EQ(pool_->Stats().exclusive, 4u);
  sink_.hold(false);
  sink_.Release();
  t.join();
  EXPECT_TRUE(done.load());
  EXPECT_GT((*w)->stats().credit_waits, 0u);
  ASSERT_TRUE((*w)->Commit().ok());
  auto o = sink_.outputs().begin()->second;
  ASSERT_EQ(o.records[0].size(), 2000u);
  for (uint32_t i = 0; i < 2000; ++i) ASSERT_EQ(o.records[0][i], Rec(0, i, 100));
}

TEST_F(WriterTest, CreditTimeoutFailsTheWriterAndCommitsNothing) {
  sink_.hold(true);
  WriterOptions o = Options("job-timeout", 5, 1);
  o.credit_timeout = std::chrono::milliseconds(200);
  auto w = Writer::Open(o);
  ASSERT_TRUE(w.ok());
  Status s;
  for (uint32_t i = 0; i < 2000 && s.ok(); ++i) s = (*w)->Write(0, Rec(0, i, 100));
  EXPECT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("waited 200 ms for write credit"), std::string::npos) << s.ToString();
  EXPECT_EQ(sink_.held(), 4u);
  EXPECT_EQ((*w)->Commit().status().code(), StatusCode::kTimeout);  // failed: stays failed
  w->reset();
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_aborted == 1; },
                                  std::chrono::seconds(5)));
  EXPECT_FALSE(sink_.outputs().begin()->second.committed);
}

TEST_F(WriterTest, ManySubpartitionsOnFewSegmentsDoNotDeadlock) {
  auto w = Writer::Open(Options("job-wide", 1, 64));  // 64 subpartitions, 4 segments
  ASSERT_TRUE(w.ok());
  for (uint32_t i = 0; i < 6400; ++i) ASSERT_TRUE((*w)->Write(i % 64, Rec(i % 64, i, 20)).ok());
  auto out = (*w)->Commit();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  auto o = sink_.outputs().begin()->second;
  for (uint32_t s = 0; s < 64; ++s) ASSERT_EQ(o.records[s].size(), 100u) << s;
}

TEST_F(WriterTest, WriterKilledMidWriteIsAbortedWithTheReason) {
  const WriterOptions opts = Options("job-kill", 9, 1);
  std::optional<testing::ForkedWriter> child;
  Restart([&] {
    child.emplace([&](int) {
      auto w = Writer::Open(opts);
      if (!w.ok()) return 2;
      for (uint32_t i = 0;; ++i) (void)(*w)->Write(0, Rec(0, i, 100));
    });
  });
  child->Go();
  const pid_t pid = child->pid();
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().buffers >= 10; },
                                  std::chrono::seconds(10)));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  (void)child->Wait();
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_aborted == 1; },
                                  std::chrono::seconds(10)));
  auto o = sink_.outputs().begin()->second;
  EXPECT_TRUE(o.aborted);
  EXPECT_FALSE(o.committed);
  EXPECT_NE(o.reason.find("closed its local connection before Commit"), std::string::npos)
      << o.reason;
  EXPECT_NE(o.reason.find("job-kill partition 9"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("pid " + std::to_string(pid)), std::string::npos) << o.reason;
}

TEST_F(WriterTest, AbortAndDestructionFailTheMapOutput) {
  {
    auto w = Writer::Open(Options("job-abort", 1, 1));
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write(0, "x").ok());
    ASSERT_TRUE((*w)->Abort("map task cancelled").ok());
    EXPECT_EQ((*w)->Write(0, "y").code(), StatusCode::kInvalidArgument);
  }
  {
    auto w = Writer::Open(Options("job-abort", 2, 1));
    ASSERT_TRUE(w.ok());
  }  // destroyed without Commit
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_aborted == 2; },
                                  std::chrono::seconds(10)));
  auto outs = sink_.outputs();
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_NE(outs[1].reason.find("aborted: map task cancelled"), std::string::npos) << outs[1].reason;
  EXPECT_NE(outs[2].reason.find("writer destroyed before Commit"), std::string::npos)
      << outs[2].reason;
}

TEST_F(WriterTest, WrongSecretAndWrongTokenAreRefused) {
  WriterOptions bad = Options("job-auth", 1, 1);
  bad.secret = "another-secret-of-enough-length";
  auto w = Writer::Open(bad);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kPermissionDenied) << w.status().ToString();
  const std::string wrong(40, 'w');
  sink_.deny_token(wrong);
  WriterOptions tok = Options("job-auth", 1, 1);
  tok.token = wrong;
  w = Writer::Open(tok);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(w.status().message().find("wrong token"), std::string::npos);
  EXPECT_TRUE(sink_.outputs().empty());
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().connections == 0; },
                                  std::chrono::seconds(5)));
}

TEST_F(WriterTest, CreditBeyondThePoolIsResourceExhausted) {
  WriterOptions o = Options("job-big", 1, 1);
  o.credit = 40;  // the pool is 64 segments: one such writer fits, a second does not
  auto first = Writer::Open(o);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  o.partition = 2;
  auto w = Writer::Open(o);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kResourceExhausted) << w.status().ToString();
  EXPECT_NE(w.status().message().find("write credit of 40 segments"), std::string::npos)
      << w.status().ToString();
  ASSERT_TRUE((*first)->Commit().ok());
  first->reset();
  o.credit = 65;
  w = Writer::Open(o);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument) << w.status().ToString();
  EXPECT_NE(w.status().message().find("writer_max_credit"), std::string::npos);
  // The refused writer was opened in the sink before its arena failed: it is aborted there.
  auto outs = sink_.outputs();
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_TRUE(outs[1].committed);
  EXPECT_TRUE(outs[2].aborted);
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().connections == 0; },
                                  std::chrono::seconds(5)));
}

// A writer whose credit has to wait for free segments waits on the reserver's thread: the
// writers already open go on writing and committing meanwhile (the service thread used to
// wait in the reservation, up to reserve_timeout, and every writer with it), and it opens as
// soon as segments come back.
TEST_F(WriterTest, AnOpenWaitingForSegmentsDoesNotHoldUpTheOtherWriters) {
  service_->Stop();
  Start(4, std::chrono::seconds(20));
  auto a = Writer::Open(Options("job-a", 1, 1));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  testutil::HeldSegments held(*pool_);  // every free segment: a new arena has to wait
  std::atomic<bool> b_returned{false};
  Result<std::unique_ptr<Writer>> b = Status(StatusCode::kInternal, "not opened");
  std::jthread opener([&] {  // joined before `held` lets go, should an ASSERT end the test
    b = Writer::Open(Options("job-b", 2, 1));
    b_returned = true;
  });
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_opened == 2; },
                                  std::chrono::seconds(10)));
  // 200 records of 100 bytes through 4 segments of 4 KiB: A needs its credit back many times.
  for (uint32_t i = 0; i < 200; ++i) ASSERT_TRUE((*a)->Write(0, Rec(0, i, 100)).ok());
  ASSERT_TRUE((*a)->Commit().ok());
  EXPECT_FALSE(b_returned.load());  // B still waits for its segments
  held.Release();
  opener.join();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE((*b)->Write(0, Rec(0, 0, 100)).ok());
  ASSERT_TRUE((*b)->Commit().ok());
  a->reset();
  b->reset();
  auto outs = sink_.outputs();
  EXPECT_TRUE(outs[1].committed);
  EXPECT_EQ(outs[1].records[0].size(), 200u);
  EXPECT_TRUE(outs[2].committed);
}

// An open that waits longer than reserve_timeout fails with Timeout naming the fix, is aborted
// in the sink, and a writer that comes after it opens normally once segments are back.
TEST_F(WriterTest, AnOpenThatCannotGetItsSegmentsInTimeFailsAlone) {
  testutil::HeldSegments held(*pool_);  // every free segment: the open has to wait
  auto w = Writer::Open(Options("job-late", 3, 1));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kTimeout) << w.status().ToString();
  EXPECT_NE(w.status().message().find("write credit of 4 segments"), std::string::npos)
      << w.status().ToString();
  EXPECT_NE(w.status().message().find("network_memory"), std::string::npos);
  held.Release();
  auto next = Writer::Open(Options("job-late", 4, 1));
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  ASSERT_TRUE((*next)->Commit().ok());
  next->reset();
  auto outs = sink_.outputs();
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_TRUE(outs[1].aborted);
  EXPECT_TRUE(outs[2].committed);
}

// Starting the service: a scratch socket path, a pool and a sink, the options to change.
class WriterServiceStartTest : public ::testing::Test {
 protected:
  WriterServiceStartTest() {
    o.socket_path = dir.Path("sluiced.sock");
    o.auth.secret = kWriterSecret;
  }
  testutil::TempDir dir{"writer-start"};
  std::shared_ptr<buffer::NetworkBufferPool> pool =
      buffer::NetworkBufferPool::Create({64 * 4096, 4096}).value();
  RecordingSink sink;
  daemon::LocalWriterServiceOptions o;
};

// sluiced serves no unauthenticated peer, local writers included: a service without the
// daemon's secret does not start, and no socket is made.
TEST_F(WriterServiceStartTest, RefusesToRunWithoutAuthentication) {
  o.auth = {"", true};
  auto s = daemon::LocalWriterService::Start(o, pool, &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("auth.off is not supported"), std::string::npos)
      << s.status().ToString();
  struct stat st{};
  EXPECT_NE(::stat(o.socket_path.c_str(), &st), 0) << "a socket was made";
}

TEST_F(WriterServiceStartTest, RefusesAPathThatIsNotASocketAndReplacesAStaleOne) {
  testutil::WriteFileWithMode(o.socket_path, "not a socket", 0600);
  auto s = daemon::LocalWriterService::Start(o, pool, &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("exists and is not a socket"), std::string::npos);
  ::unlink(o.socket_path.c_str());
  // A stale socket (bound, nobody listening) is replaced.
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, o.socket_path.data(), o.socket_path.size());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  s = daemon::LocalWriterService::Start(o, pool, &sink);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  struct stat st{};
  ASSERT_EQ(::stat(o.socket_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A second service on a live socket is refused.
  auto again = daemon::LocalWriterService::Start(o, pool, &sink);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("in use by another process"), std::string::npos);
  (*s)->Stop();
  EXPECT_FALSE(std::filesystem::exists(o.socket_path));
  testutil::ExpectAllSegmentsBack(*pool);
}

}  // namespace
}  // namespace sluice::client
