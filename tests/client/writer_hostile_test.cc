// Hostile local writers: frames a well-behaved Writer never sends, each answered with a named
// Error and a closed connection, while the service and a real writer go on; memory the writer
// was not granted stays out of reach. Every test ends with the leak check.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <optional>

#include "client/writer.h"
#include "shuffle/auth.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "tests/client/forked_writer.h"
#include "tests/client/writer_test_util.h"

namespace sluice::client {
namespace {

using local::LocalType;
using testutil::kWriterSecret;
using testutil::RawLocalClient;

class WriterHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    buffer::NetworkBufferPoolOptions po;
    po.network_memory = 64 * 4096;
    po.segment_size = 4096;
    pool_ = buffer::NetworkBufferPool::Create(po).value();
    StartServiceAndGoodWriter();
  }
  void StartServiceAndGoodWriter() {
    daemon::LocalWriterServiceOptions o;
    o.socket_path = dir_.Path("sluiced.sock");
    o.auth.secret = kWriterSecret;
    o.writer_credit = 4;
    o.node_name = "test-node";
    o.handshake_timeout = std::chrono::milliseconds(500);
    o.max_record = 1u << 20;
    o.max_reserved_segments = max_reserved_segments_;
    auto s = daemon::LocalWriterService::Start(o, pool_, &sink_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    service_ = std::move(*s);
    WriterOptions w;
    w.socket_path = o.socket_path;
    w.secret = kWriterSecret;
    w.job = "good";
    w.token = testutil::TokenOf("good");
    w.subpartitions = 1;
    auto good = Writer::Open(w);
    ASSERT_TRUE(good.ok()) << good.status().ToString();
    good_ = std::move(*good);
  }
  // Stops the good writer and the service (its thread), runs `fork_child` while the process is
  // single-threaded (see forked_writer.h), then starts both again.
  void Restart(const std::function<void()>& fork_child) {
    good_.reset();
    service_->Stop();
    service_.reset();
    fork_child();
    StartServiceAndGoodWriter();
  }
  void TearDown() override {
    // The well-behaved writer still works after every attack.
    for (uint32_t i = 0; i < 500; ++i) ASSERT_TRUE(good_->Write(0, "still-fine").ok());
    auto out = good_->Commit();
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(out->records, 500u);
    good_.reset();
    service_->Stop();
    sink_.Clear();
    testutil::ExpectAllSegmentsBack(*pool_, "local writer service");
    EXPECT_TRUE(testutil::PollUntil([&] { return service_->Stats().arenas == 0; },
                                    std::chrono::seconds(5)));
    EXPECT_FALSE(std::filesystem::exists(dir_.Path("sluiced.sock")));
  }
  // An authenticated raw client with an open writer of `subpartitions`.
  std::unique_ptr<RawLocalClient> OpenRaw(const std::string& job, uint32_t subpartitions = 2) {
    auto c = std::make_unique<RawLocalClient>(dir_.Path("sluiced.sock"));
    EXPECT_TRUE(c->connected());
    EXPECT_TRUE(c->Handshake(kWriterSecret).ok());
    local::OpenWriterMsg m;
    m.job = job;
    m.token = testutil::TokenOf(job);
    m.subpartitions = subpartitions;
    const Status s = c->Open(m);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return c;
  }
  std::vector<uint8_t> Filled(uint32_t sub, uint32_t slot, uint32_t size) {
    std::vector<uint8_t> f(local::kFilledFrameBytes);
    local::EncodeFilled({sub, slot, size}, f.data());
    return f;
  }
  // Writes a framed record of `len` bytes at the start of `slot` in the raw client's arena.
  void FrameRecord(RawLocalClient& c, uint32_t slot, uint32_t len, uint32_t claimed_len) {
    const size_t bytes = size_t{c.grant().slots} * c.grant().segment_size;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c.memfd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    uint8_t* s = static_cast<uint8_t*>(p) + size_t{slot} * c.grant().segment_size;
    shuffle::StoreRecordLength(s, claimed_len);
    std::memset(s + 4, 'r', len);
    ::munmap(p, bytes);
  }
  // The one aborted raw writer's reason in the sink.
  std::string AbortReason(const std::string& job) {
    EXPECT_TRUE(testutil::PollUntil(
        [&] {
          for (auto& [id, o] : sink_.outputs()) {
            if (o.spec.job == job && o.aborted) return true;
          }
          return false;
        },
        std::chrono::seconds(5)));
    for (auto& [id, o] : sink_.outputs()) {
      if (o.spec.job == job) return o.reason;
    }
    return "";
  }
  void ExpectFailed(RawLocalClient& c, const std::string& job, const std::string& fragment,
                    StatusCode code = StatusCode::kProtocolError) {
    const Status s = c.ExpectError();
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find(fragment), std::string::npos) << s.ToString();
    EXPECT_TRUE(c.ClosedByPeer());
    if (!job.empty()) {
      const std::string reason = AbortReason(job);
      EXPECT_NE(reason.find(fragment), std::string::npos) << reason;
    }
  }

  uint64_t max_reserved_segments_ = 0;
  testutil::TempDir dir_{"writer-hostile"};
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  testutil::RecordingSink sink_;
  std::unique_ptr<daemon::LocalWriterService> service_;
  std::unique_ptr<Writer> good_;
};

TEST_F(WriterHostileTest, SlotNeverGranted) {
  auto c = OpenRaw("h-slot");
  ASSERT_TRUE(c->Send(Filled(0, 4, 10)).ok());
  ExpectFailed(*c, "h-slot", "only 4 slots (0..3) were granted");
}

// A writer still waiting for its grant (the pool has no free segment for its arena yet) that
// hands over a slot anyway: refused, that writer fails alone, the arena reserved for it when
// segments come back is freed, and the good writer goes on (TearDown).
TEST_F(WriterHostileTest, FramesBeforeTheGrantAreRefused) {
  testutil::HeldSegments held(*pool_);  // every free segment: the open has to wait
  RawLocalClient c(dir_.Path("sluiced.sock"));
  ASSERT_TRUE(c.Handshake(kWriterSecret).ok());
  local::OpenWriterMsg m;
  m.job = "h-early";
  m.token = testutil::TokenOf("h-early");
  m.subpartitions = 1;
  ASSERT_TRUE(c.Send(local::EncodeOpenWriter(m)).ok());
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().writers_opened == 2; },
                                  std::chrono::seconds(5)));
  ASSERT_TRUE(c.Send(Filled(0, 0, 10)).ok());
  ExpectFailed(c, "h-early", "sent Filled before its credit was granted");
  held.Release();
  EXPECT_TRUE(testutil::PollUntil([&] { return service_->Stats().arenas == 1; },
                                  std::chrono::seconds(5)));  // the good writer's alone
}

TEST_F(WriterHostileTest, SlotHandedOverTwice) {
  sink_.hold(true);  // keep slot 0 in the sink
  auto c = OpenRaw("h-twice");
  FrameRecord(*c, 0, 10, 10);
  ASSERT_TRUE(c->Send(Filled(0, 0, 14)).ok());
  ASSERT_TRUE(c->Send(Filled(0, 0, 14)).ok());
  ExpectFailed(*c, "h-twice", "handed over slot 0 again");
  sink_.hold(false);
}

// A writer that hands its slot over again and again but never reads the credit frames: its
// socket fills up. The service thread serves every writer on the host, so it never waits for
// room: the writer is failed at once, naming why, and the good writer goes on (TearDown).
TEST_F(WriterHostileTest, AWriterThatDoesNotReadItsCreditIsFailedWithoutStallingOthers) {
  auto c = OpenRaw("h-noread");
  const uint32_t slots = c->grant().slots;
  ASSERT_GE(slots, 2u);
  for (uint32_t s = 0; s < slots; ++s) FrameRecord(*c, s, 10, 10);
  const uint64_t base = service_->Stats().buffers;
  uint64_t sent = 0;
  for (; sent < 20000; ++sent) {
    // The slots in turn: each came back as credit long before its next turn (the sink lets go
    // of a buffer at once), and the credit frames pile up unread.
    if (!c->Send(Filled(0, static_cast<uint32_t>(sent % slots), 14)).ok()) break;
    if (!testutil::PollUntil([&] { return service_->Stats().buffers >= base + sent + 1; },
                             std::chrono::seconds(2))) {
      break;  // failed: not counted
    }
  }
  const std::string reason = AbortReason("h-noread");
  EXPECT_NE(reason.find("does not read its credit"), std::string::npos)
      << reason << " (after " << sent << " hand-overs)";
  EXPECT_NE(reason.find("the peer does not read what it was sent"), std::string::npos) << reason;
  EXPECT_TRUE(c->ClosedByPeer());
}

// Writers together reserve at most max_reserved_segments of the pool (sluiced: half), so
// that many writers asking for the most credit cannot take the memory the daemon's jobs need.
// One past it is refused naming the count; when writers finish, their segments count again.
TEST_F(WriterHostileTest, WritersTogetherReserveAtMostTheirShareOfThePool) {
  max_reserved_segments_ = 6;
  Restart([] {});  // the good writer takes 4
  auto open = [&](RawLocalClient& c, const std::string& job, uint32_t credit) {
    EXPECT_TRUE(c.Handshake(kWriterSecret).ok());
    local::OpenWriterMsg m;
    m.job = job;
    m.token = testutil::TokenOf(job);
    m.subpartitions = 1;
    m.credit = credit;
    return c.Open(m);
  };
  RawLocalClient over(dir_.Path("sluiced.sock"));
  const Status refused = open(over, "h-share", 3);
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused.ToString();
  EXPECT_NE(refused.message().find("local writers hold 4 of the 6 they may"), std::string::npos)
      << refused.ToString();
  for (auto& [id, o] : sink_.outputs()) EXPECT_NE(o.spec.job, "h-share") << "nothing opened";
  {
    RawLocalClient fits(dir_.Path("sluiced.sock"));
    ASSERT_TRUE(open(fits, "h-share", 2).ok());
    EXPECT_EQ(service_->Stats().reserved_segments, 6u);
  }  // closed before Commit: aborted, its arena's segments come home
  ASSERT_TRUE(testutil::PollUntil([&] { return service_->Stats().reserved_segments == 4; },
                                  std::chrono::seconds(5)));
  RawLocalClient again(dir_.Path("sluiced.sock"));
  EXPECT_TRUE(open(again, "h-share-2", 2).ok());
}

TEST_F(WriterHostileTest, OversizedBuffer) {
  auto c = OpenRaw("h-size");
  ASSERT_TRUE(c->Send(Filled(0, 1, 4097)).ok());
  ExpectFailed(*c, "h-size", "a buffer of 4097 bytes; a segment holds 1..4096");
}

TEST_F(WriterHostileTest, SubpartitionOutOfRange) {
  auto c = OpenRaw("h-sub", 2);
  ASSERT_TRUE(c->Send(Filled(2, 0, 8)).ok());
  ExpectFailed(*c, "h-sub", "subpartition 2; it opened 2 subpartitions");
}

TEST_F(WriterHostileTest, BadFramingIsCaughtBeforeTheStore) {
  auto c = OpenRaw("h-frame");
  FrameRecord(*c, 0, 10, 0x7fffffff);  // a length prefix far over max_record
  ASSERT_TRUE(c->Send(Filled(0, 0, 14)).ok());
  ExpectFailed(*c, "h-frame", "record length prefix 2147483647 at offset 0 is over the limit");
  for (auto& [id, o] : sink_.outputs()) {
    if (o.spec.job == "h-frame") {
      EXPECT_EQ(o.buffers, 0u);  // the store never saw it
    }
  }
}

TEST_F(WriterHostileTest, CommitInsideARecordCommitsNothing) {
  auto c = OpenRaw("h-commit");
  FrameRecord(*c, 0, 10, 100);  // claims 100 bytes, 10 follow
  ASSERT_TRUE(c->Send(Filled(0, 0, 14)).ok());
  ASSERT_TRUE(c->Send(local::EncodeText(LocalType::kCommit, "")).ok());
  ExpectFailed(*c, "h-commit", "subpartition 0 ending inside a record; nothing was committed");
  for (auto& [id, o] : sink_.outputs()) {
    if (o.spec.job == "h-commit") {
      EXPECT_FALSE(o.committed);
    }
  }
}

// OpenWriter's optional retention: a hostile value (0, or over a year) closes that connection
// with the reason and opens nothing; a valid one reaches the store's spec.
TEST_F(WriterHostileTest, HostileRetentionIsRefusedAndAValidOneReachesTheStore) {
  auto open_msg = [](const std::string& job) {
    local::OpenWriterMsg m;
    m.job = job;
    m.token = testutil::TokenOf(job);
    m.subpartitions = 1;
    m.retention_s = 90;
    return m;
  };
  for (const uint32_t bad : {0u, local::kMaxRetentionSeconds + 1}) {
    RawLocalClient c(dir_.Path("sluiced.sock"));
    ASSERT_TRUE(c.Handshake(kWriterSecret).ok());
    auto frame = local::EncodeOpenWriter(open_msg("h-retention"));
    const size_t at = frame.size() - 4;  // the trailing retention
    for (int i = 0; i < 4; ++i) frame[at + i] = static_cast<uint8_t>(bad >> (8 * i));
    ASSERT_TRUE(c.Send(frame).ok());
    ExpectFailed(c, "", "retention of " + std::to_string(bad) + " s");
  }
  for (auto& [id, o] : sink_.outputs()) EXPECT_NE(o.spec.job, "h-retention") << "nothing opened";
  RawLocalClient ok(dir_.Path("sluiced.sock"));
  ASSERT_TRUE(ok.Handshake(kWriterSecret).ok());
  ASSERT_TRUE(ok.Open(open_msg("h-retention-ok")).ok());
  bool seen = false;
  for (auto& [id, o] : sink_.outputs()) {
    if (o.spec.job != "h-retention-ok") continue;
    seen = true;
    EXPECT_EQ(o.spec.retention, std::chrono::seconds(90));
  }
  EXPECT_TRUE(seen);
}

// A store job is guarded by its first writer's token: a writer with no token, or a short one,
// would open a job any holder of the cluster secret could read or release. Refused naming the
// rule, before anything reaches the store; a writer with a real token of the same job opens.
TEST_F(WriterHostileTest, AMissingOrShortJobTokenIsRefused) {
  for (const size_t len : {size_t{0}, size_t{1}, shuffle::auth::kMinJobTokenLength - 1}) {
    RawLocalClient c(dir_.Path("sluiced.sock"));
    ASSERT_TRUE(c.Handshake(kWriterSecret).ok());
    local::OpenWriterMsg m;
    m.job = "h-short-token";
    m.token = std::string(len, 'k');
    m.subpartitions = 1;
    ASSERT_TRUE(c.Send(local::EncodeOpenWriter(m)).ok());
    ExpectFailed(c, "", "token is " + std::to_string(len) + " characters; a job needs a random "
                 "token of at least 32", StatusCode::kPermissionDenied);
  }
  for (auto& [id, o] : sink_.outputs()) EXPECT_NE(o.spec.job, "h-short-token") << "nothing opened";
  RawLocalClient ok(dir_.Path("sluiced.sock"));
  ASSERT_TRUE(ok.Handshake(kWriterSecret).ok());
  local::OpenWriterMsg m;
  m.job = "h-short-token";
  m.token = std::string(shuffle::auth::kMinJobTokenLength, 'k');
  m.subpartitions = 1;
  ASSERT_TRUE(ok.Open(m).ok());
}

TEST_F(WriterHostileTest, FramesBeforeAuthentication) {
  RawLocalClient c(dir_.Path("sluiced.sock"));
  local::OpenWriterMsg m;
  m.job = "h-noauth";
  m.subpartitions = 1;
  ASSERT_TRUE(c.Send(local::EncodeOpenWriter(m)).ok());
  ExpectFailed(c, "", "sent OpenWriter before authenticating", StatusCode::kPermissionDenied);
  RawLocalClient d(dir_.Path("sluiced.sock"));
  ASSERT_TRUE(d.Send(Filled(0, 0, 10)).ok());
  ExpectFailed(d, "", "sent Filled before authenticating", StatusCode::kPermissionDenied);
  EXPECT_TRUE(sink_.outputs().size() == 1);  // only the good writer
}

TEST_F(WriterHostileTest, ForgedAuthProofIsRefused) {
  RawLocalClient c(dir_.Path("sluiced.sock"));
  shuffle::auth::AuthConfig auth{"a-different-secret-of-32-bytes!!", false};
  shuffle::ClientHandshake hs(auth, shuffle::kControlOnlySegmentSize, "raw", "sock", "daemon");
  schema::MessageBuilder mb;
  ASSERT_TRUE(c.Send(local::EncodeFrame(LocalType::kHello, mb.Hello(hs.Hello()))).ok());
  auto ack = c.Next();
  ASSERT_TRUE(ack.ok());
  ASSERT_EQ(ack->first, static_cast<uint8_t>(LocalType::kHelloAck));
  const shuffle::auth::Proof forged{};
  ASSERT_TRUE(c.Send(local::EncodeFrame(LocalType::kAuthResponse, mb.AuthResponse(forged))).ok());
  ExpectFailed(c, "", "", StatusCode::kPermissionDenied);
}

TEST_F(WriterHostileTest, UnknownTypeOversizedFrameAndPassedDescriptor) {
  {
    auto c = OpenRaw("h-type");
    std::vector<uint8_t> f(8, 0);
    f[4] = 96;  // beyond the local protocol's types
    ASSERT_TRUE(c->Send(f).ok());
    ExpectFailed(*c, "h-type", "unknown type 96");
  }
  {
    auto c = OpenRaw("h-big");
    std::vector<uint8_t> f(8, 0);
    const uint32_t body = (64u << 10) + 1;
    std::memcpy(f.data(), &body, 4);
    f[4] = static_cast<uint8_t>(LocalType::kAbort);
    ASSERT_TRUE(c->Send(f).ok());
    ExpectFailed(*c, "h-big", "of 65537 bytes (at most 65536)");
  }
  {
    auto c = OpenRaw("h-fd");
    ASSERT_TRUE(c->Send(local::EncodeText(LocalType::kAbort, "x"), c->fd()).ok());
    ExpectFailed(*c, "h-fd", "passed a file descriptor");
  }
}

TEST_F(WriterHostileTest, SilentConnectionIsClosedAfterTheHandshakeTimeout) {
  RawLocalClient c(dir_.Path("sluiced.sock"));
  const Status s = c.ExpectError();
  EXPECT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("did not authenticate and open a writer within 500 ms"),
            std::string::npos);
}

TEST_F(WriterHostileTest, ArenaIsSealedAndHoldsOnlyTheGrantedSegments) {
  auto c = OpenRaw("h-seal");
  struct stat st{};
  ASSERT_EQ(::fstat(c->memfd(), &st), 0);
  // Exactly the granted slots: nothing of another writer or of the pool is reachable.
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), uint64_t{c->grant().slots} * 4096);
  // The daemon reads the arena: it cannot be shrunk under it (SIGBUS) or grown.
  EXPECT_NE(::ftruncate(c->memfd(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(c->memfd(), st.st_size * 2), 0);
  EXPECT_EQ(errno, EPERM);
  // Mapping past the end gives nothing: the pages beyond the file fault (tested in a child).
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct sigaction sa {};
    sa.sa_handler = [](int) { ::_exit(42); };  // the fault: reported by the exit code
    ::sigaction(SIGBUS, &sa, nullptr);
    void* p = ::mmap(nullptr, st.st_size + 4096, PROT_READ, MAP_SHARED, c->memfd(), 0);
    if (p == MAP_FAILED) ::_exit(0);
    volatile uint8_t x = static_cast<uint8_t*>(p)[st.st_size];  // SIGBUS
    (void)x;
    ::_exit(1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_TRUE(WEXITSTATUS(status) == 42 || WEXITSTATUS(status) == 0) << WEXITSTATUS(status);
  ASSERT_TRUE(c->Send(local::EncodeText(LocalType::kAbort, "done")).ok());
  EXPECT_TRUE(c->ClosedByPeer());
  EXPECT_NE(AbortReason("h-seal").find("aborted: done"), std::string::npos);
}

TEST_F(WriterHostileTest, AnotherUidIsRefusedUnlessAllowed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to switch to another uid";
  ::chmod(dir_.root().c_str(), 0755);
  const std::string socket_path = dir_.Path("sluiced.sock");
  std::optional<testing::ForkedWriter> child;
  Restart([&] {
    child.emplace([&](int report_fd) {
      if (::setuid(65534) != 0) return 2;
      RawLocalClient c(socket_path);
      const std::string text = c.ExpectError().ToString();
      (void)!::write(report_fd, text.data(), text.size());
      return 0;
    });
  });
  ::chmod(socket_path.c_str(), 0666);  // the restarted service's socket
  child->Go();
  const std::string text = child->ReadReport(std::chrono::seconds(60));
  const int status = child->Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_NE(text.find("PermissionDenied"), std::string::npos) << text;
  EXPECT_NE(text.find("uid 65534"), std::string::npos) << text;
  EXPECT_NE(text.find("local_socket_any_uid"), std::string::npos) << text;
  EXPECT_EQ(service_->Stats().refused, 1u);
}

}  // namespace
}  // namespace sluice::client
