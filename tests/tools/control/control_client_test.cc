// ControlClient against a hostile daemon (a socket in this test that answers with frames of
// its choosing), and FindSecret, which finds the secret the way sluiced does.
#include "tools/control/control_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "schema/messages.h"
#include "shuffle/auth.h"
#include "testutil/loopback.h"
#include "testutil/rss.h"
#include "testutil/temp_dir.h"
#include "tools/control/control_codec.h"
#include "transport/frame_codec.h"

namespace sluice::control {
namespace {

std::vector<uint8_t> Header(uint32_t frame_length, schema::MessageType type, uint16_t meta) {
  std::vector<uint8_t> h(transport::kFrameHeaderSize);
  const uint32_t len = htonl(frame_length);
  const uint32_t magic = htonl(transport::kMagic);
  std::memcpy(h.data(), &len, 4);
  std::memcpy(h.data() + 4, &magic, 4);
  h[8] = 1;
  h[9] = static_cast<uint8_t>(type);
  h[10] = static_cast<uint8_t>(meta >> 8);
  h[11] = static_cast<uint8_t>(meta);
  return h;
}

// A HelloAck of a server that does not authenticate (a hostile one, or an embedder's library
// server with auth.off; sluiced has no such mode).
std::vector<uint8_t> UnauthenticatedHelloAck() {
  schema::MessageBuilder b;
  schema::HandshakeFields f;
  f.segment_size = 32 * 1024;
  f.node_name = "hostile";
  const auto msg = b.HelloAck(f);
  std::vector<uint8_t> frame =
      Header(static_cast<uint32_t>(transport::kFrameHeaderSize + msg.size()),
             schema::MessageType::kHelloAck, static_cast<uint16_t>(msg.size()));
  frame.insert(frame.end(), msg.begin(), msg.end());
  return frame;
}

// A loopback listener whose one connection reads the client's first frame, then sends
// `frames`; with `after_request` it reads the next frame (a request) and sends those, or with
// `heartbeats` sends heartbeats until Stop. It holds the connection open until Stop, so only
// what it sent can end the client's call.
class HostileDaemon {
 public:
  explicit HostileDaemon(std::vector<std::vector<uint8_t>> frames,
                         std::vector<std::vector<uint8_t>> after_request = {},
                         bool heartbeats = false)
      : frames_(std::move(frames)),
        after_request_(std::move(after_request)),
        heartbeats_(heartbeats) {
    fd_ = testutil::ListenOnLoopback(4, &port_);
    EXPECT_GE(fd_, 0) << "cannot listen on loopback";
    thread_ = std::thread([this] { Serve(); });
  }
  ~HostileDaemon() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  // Whether the daemon sent all its frames. The client can see the last one and return before
  // the daemon's thread marks it sent, so this waits for the mark (up to 5 s).
  bool served() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!served_ && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return served_;
  }

 private:
  // Reads one whole frame from the client (its size from the header; the test's own frames).
  static bool ReadClientFrame(int c) {
    uint8_t head[transport::kFrameHeaderSize];
    if (::recv(c, head, sizeof(head), MSG_WAITALL) != static_cast<ssize_t>(sizeof(head))) {
      return false;
    }
    const uint32_t len =
        (uint32_t{head[0]} << 24) | (uint32_t{head[1]} << 16) | (uint32_t{head[2]} << 8) | head[3];
    std::vector<uint8_t> rest(len - sizeof(head));
    return ::recv(c, rest.data(), rest.size(), MSG_WAITALL) == static_cast<ssize_t>(rest.size());
  }

  void Serve() {
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    if (ReadClientFrame(c)) {
      for (const auto& f : frames_) ::send(c, f.data(), f.size(), MSG_NOSIGNAL);
      if ((!after_request_.empty() || heartbeats_) && ReadClientFrame(c)) {
        for (const auto& f : after_request_) ::send(c, f.data(), f.size(), MSG_NOSIGNAL);
        const auto beat = Header(transport::kFrameHeaderSize, schema::MessageType::kHeartbeat, 0);
        while (heartbeats_ && !stop_ && ::send(c, beat.data(), beat.size(), MSG_NOSIGNAL) > 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      served_ = true;
    }
    // Hold the connection: the client must decide from what it got.
    ::shutdown(c, SHUT_WR);
    uint8_t b;
    while (!stop_ && ::recv(c, &b, 1, 0) > 0) {
    }
    ::close(c);
  }

  std::vector<std::vector<uint8_t>> frames_;
  std::vector<std::vector<uint8_t>> after_request_;
  const bool heartbeats_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> served_{false};
  std::thread thread_;
};

TEST(ControlClientTest, FrameLengthAboveTheLimitIsRefusedUnread) {
  // A heartbeat with a 100 KB payload (under the limit: read through and dropped), then a
  // header announcing a 4 GiB frame.
  std::vector<uint8_t> heartbeat =
      Header(transport::kFrameHeaderSize + 100000, schema::MessageType::kHeartbeat, 0);
  heartbeat.resize(transport::kFrameHeaderSize + 100000, 0xAB);
  HostileDaemon daemon({heartbeat, Header(0xFFFFFFF0u, schema::MessageType::kHelloAck, 0)});
  const uint64_t before = testutil::VmRssBytes();
  ControlClientOptions o;
  o.timeout = std::chrono::milliseconds(5000);
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), o);
  const uint64_t after = testutil::VmRssBytes();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kProtocolError) << c.status().ToString();
  EXPECT_NE(c.status().message().find("4294967280 bytes, above the"), std::string::npos)
      << c.status().ToString();
  EXPECT_NE(c.status().message().find("127.0.0.1:" + std::to_string(daemon.port())),
            std::string::npos);
  EXPECT_TRUE(daemon.served());
  testutil::ExpectRssGrowthBounded(before, after, "a 4 GiB frame announced");
}

TEST(ControlClientTest, FrameJustAboveTheLargestLegalFrameIsRefused) {
  const uint64_t limit = transport::MaxFrameLength(schema::kMaxSegmentSize);
  HostileDaemon daemon(
      {Header(static_cast<uint32_t>(limit + 1), schema::MessageType::kHelloAck, 0)});
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kProtocolError) << c.status().ToString();
  EXPECT_NE(c.status().message().find(std::to_string(limit) + "-byte frame limit"),
            std::string::npos)
      << c.status().ToString();
}

TEST(ControlClientTest, HugeReplyToARequestIsRefusedUnread) {
  HostileDaemon daemon({UnauthenticatedHelloAck()},
                       {Header(0x7FFFFFFFu, schema::MessageType::kStatsResponse, 0)});
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const uint64_t before = testutil::VmRssBytes();
  auto stats = (*c)->GetStats();
  const uint64_t after = testutil::VmRssBytes();
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kProtocolError) << stats.status().ToString();
  EXPECT_NE(stats.status().message().find("2147483647 bytes, above the"), std::string::npos)
      << stats.status().ToString();
  testutil::ExpectRssGrowthBounded(before, after, "a 2 GiB reply announced");
  // The stream position is unknown after that: the client is closed, not confused.
  EXPECT_EQ((*c)->GetStats().status().code(), StatusCode::kClosed);
}

TEST(ControlClientTest, ControlOnlyHelloLearnsTheDaemonsSegmentSize) {
  HostileDaemon daemon({UnauthenticatedHelloAck()});
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->segment_size(), 32u * 1024);
}

TEST(ControlClientTest, ListJobsReplyOverTheFrameIsRefusedUnread) {
  HostileDaemon daemon({UnauthenticatedHelloAck()},
                       {Header(0x7FFFFFFFu, schema::MessageType::kListJobsResponse, 0)});
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const uint64_t before = testutil::VmRssBytes();
  auto list = (*c)->ListJobs();
  const uint64_t after = testutil::VmRssBytes();
  ASSERT_FALSE(list.ok());
  EXPECT_EQ(list.status().code(), StatusCode::kProtocolError) << list.status().ToString();
  EXPECT_NE(list.status().message().find("2147483647 bytes, above the"), std::string::npos)
      << list.status().ToString();
  testutil::ExpectRssGrowthBounded(before, after, "a 2 GiB ListJobs reply announced");
}

TEST(ControlClientTest, GarbageListJobsReplyIsAProtocolError) {
  const std::vector<uint8_t> garbage = {0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
                                        0xff, 0xff, 0xff, 0x7f, 0x00, 0x00, 0x00, 0x00};
  std::vector<uint8_t> frame =
      Header(static_cast<uint32_t>(transport::kFrameHeaderSize + garbage.size()),
             schema::MessageType::kListJobsResponse, static_cast<uint16_t>(garbage.size()));
  frame.insert(frame.end(), garbage.begin(), garbage.end());
  HostileDaemon daemon({UnauthenticatedHelloAck()}, {frame});
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto list = (*c)->ListJobs();
  ASSERT_FALSE(list.ok());
  EXPECT_EQ(list.status().code(), StatusCode::kProtocolError) << list.status().ToString();
  EXPECT_NE(list.status().message().find("ListJobsResponse"), std::string::npos)
      << list.status().ToString();
}

TEST(ControlCodecTest, JobListIsCutToOneFrameAndSaysSo) {
  JobList list;
  for (int i = 0; i < 5000; ++i) {
    JobSummary j;
    j.job_id = std::string(120, 'j') + std::to_string(i);
    j.state = JobState::kFailed;
    j.error = std::string(5000, 'e');
    j.totals.records_consumed = static_cast<uint64_t>(i);
    list.jobs.push_back(std::move(j));
  }
  list.total = 5000;
  const std::vector<uint8_t> bytes = EncodeJobList(list);
  ASSERT_LE(bytes.size(), kMaxControlMessageBytes);
  auto m = schema::ParseListJobsResponse(bytes);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const JobList back = DecodeJobList(**m);
  EXPECT_EQ(back.total, 5000u);
  ASSERT_GT(back.jobs.size(), 10u);
  ASSERT_LT(back.jobs.size(), 5000u);
  EXPECT_NE(back.note.find("listed " + std::to_string(back.jobs.size()) + " of 5000 jobs"),
            std::string::npos)
      << back.note;
  EXPECT_EQ(back.jobs[7].job_id, list.jobs[7].job_id);
  EXPECT_EQ(back.jobs[7].totals.records_consumed, 7u);
  EXPECT_EQ(back.jobs[7].state, JobState::kFailed);
  EXPECT_LE(back.jobs[7].error.size(), 300u);

  // A small list goes whole, without a note.
  list.jobs.resize(3);
  list.total = 3;
  const std::vector<uint8_t> small_bytes = EncodeJobList(list);  // outlives the parsed view
  auto small = schema::ParseListJobsResponse(small_bytes);
  ASSERT_TRUE(small.ok());
  const JobList three = DecodeJobList(**small);
  EXPECT_EQ(three.jobs.size(), 3u);
  EXPECT_EQ(three.note, "");
}

TEST(ControlClientTest, EndlessHeartbeatsEndTheCallAtItsTimeout) {
  HostileDaemon daemon({UnauthenticatedHelloAck()}, {}, /*heartbeats=*/true);
  ControlClientOptions o;
  o.timeout = std::chrono::milliseconds(300);
  auto c = ControlClient::Connect("127.0.0.1", daemon.port(), o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto stats = (*c)->GetStats();
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kIoError) << stats.status().ToString();
  EXPECT_NE(stats.status().message().find("no answer but heartbeats within 300 ms"),
            std::string::npos)
      << stats.status().ToString();
}

// --- FindSecret -------------------------------------------------------------------------

class FindSecretTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::MakeTempDir("sluice-find-secret");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string Write(const std::string& name, const std::string& text, mode_t mode) {
    return testutil::WriteFileWithMode(dir_ + "/" + name, text, mode);
  }
  std::string dir_;
};

TEST_F(FindSecretTest, SecretFileWinsOverStateDir) {
  const std::string file = Write("secret", "file-secret-0123456789\n", 0600);
  ::mkdir((dir_ + "/state").c_str(), 0700);
  Write("state/auth_secret", "state-secret-0123456789\n", 0600);
  auto s = FindSecret({file, dir_ + "/state"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(*s, "file-secret-0123456789");
}

TEST_F(FindSecretTest, StateDirSecretIsTheOneSluicedCreates) {
  auto created = shuffle::auth::LoadStateSecret(dir_ + "/state", /*create=*/true);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  auto s = FindSecret({"", dir_ + "/state"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(*s, *created);
}

TEST_F(FindSecretTest, NoSecretNamesBothOptionsAndCreatesNothing) {
  ::mkdir((dir_ + "/state").c_str(), 0700);
  auto s = FindSecret({"", dir_ + "/state"});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("--auth-secret-file"), std::string::npos);
  EXPECT_NE(s.status().message().find("--state-dir"), std::string::npos);
  EXPECT_NE(s.status().message().find(dir_ + "/state/auth_secret"), std::string::npos);
  struct stat st {};
  EXPECT_NE(::stat((dir_ + "/state/auth_secret").c_str(), &st), 0) << "a client created it";
}

TEST_F(FindSecretTest, GroupOrWorldReadableSecretIsRefusedWithTheChmod) {
  const std::string file = Write("secret", "file-secret-0123456789\n", 0644);
  auto s = FindSecret({file, ""});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.status().message().find("chmod 600 " + file), std::string::npos);

  ::mkdir((dir_ + "/state").c_str(), 0700);
  const std::string state_file = Write("state/auth_secret", "state-secret-0123456789\n", 0640);
  s = FindSecret({"", dir_ + "/state"});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.status().message().find("chmod 600 " + state_file), std::string::npos);
}

}  // namespace
}  // namespace sluice::control
