// sluice put: routing (no sockets), then the real binary writing stdin through an in-process
// LocalWriterService into a recording sink. Ends with the leak check.
#include "tools/sluice/put.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "client/map_output.h"
#include "testutil/leak_check.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "tests/client/writer_test_util.h"

namespace sluice::tools::sluice_cli {
namespace {

TEST(PutRoutingTest, KeyFieldHashAndRoundRobin) {
  EXPECT_EQ(Fnv1a(""), 0xcbf29ce484222325ull);  // the FNV-1a offset basis
  EXPECT_EQ(Fnv1a("a"), 0xaf63dc4c8601ec8cull);  // published test vector
  PutOptions o;
  o.subpartitions = 7;
  uint64_t next = 0;
  EXPECT_EQ(RouteLine(o, "x", &next), 0u);
  EXPECT_EQ(RouteLine(o, "x", &next), 1u);
  o.key_field = 2;
  o.delimiter = ",";
  EXPECT_EQ(RouteLine(o, "1,key,3", &next), Fnv1a("key") % 7);
  EXPECT_EQ(RouteLine(o, "9,key", &next), Fnv1a("key") % 7);
  EXPECT_EQ(RouteLine(o, "only-one-field", &next), Fnv1a("") % 7);
  o.key_field = 1;
  o.delimiter = "::";
  EXPECT_EQ(RouteLine(o, "ab::cd", &next), Fnv1a("ab") % 7);
}

class SluicePutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = buffer::NetworkBufferPool::Create({64 * 4096, 4096}).value();
    testutil::WriteFileWithMode(dir_.Path("auth_secret"), testutil::kWriterSecret, 0600);
    daemon::LocalWriterServiceOptions o;
    o.socket_path = dir_.Path("sluiced-7070.sock");
    o.auth.secret = testutil::kWriterSecret;
    o.writer_credit = 4;
    auto s = daemon::LocalWriterService::Start(o, pool_, &sink_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    service_ = std::move(*s);
  }
  void TearDown() override {
    service_->Stop();
    sink_.Clear();
    testutil::ExpectAllSegmentsBack(*pool_, "sluice put");
    EXPECT_TRUE(testutil::PollUntil([&] { return service_->Stats().arenas == 0; },
                                    std::chrono::seconds(5)));
    EXPECT_FALSE(std::filesystem::exists(dir_.Path("sluiced-7070.sock")));
  }
  // Runs `sluice put ARGS` with `input` on stdin; returns the exit code, stdout and stderr.
  int Run(const std::vector<std::string>& args, const std::string& input, std::string* out,
          std::string* err) {
    const std::string in_path = dir_.Path("in.txt"), out_path = dir_.Path("out.txt"),
                      err_path = dir_.Path("err.txt");
    std::ofstream(in_path) << input;
    const pid_t pid = ::fork();
    if (pid == 0) {
      std::vector<std::string> all{SLUICE_BIN, "put", "--state-dir", dir_.root()};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      if (!std::freopen(in_path.c_str(), "r", stdin) || !std::freopen(out_path.c_str(), "w", stdout) ||
          !std::freopen(err_path.c_str(), "w", stderr)) {
        ::_exit(99);
      }
      ::execv(SLUICE_BIN, argv.data());
      ::_exit(98);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::ifstream o(out_path), e(err_path);
    out->assign(std::istreambuf_iterator<char>(o), {});
    err->assign(std::istreambuf_iterator<char>(e), {});
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  testutil::TempDir dir_{"sluice-put"};
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  testutil::RecordingSink sink_;
  std::unique_ptr<daemon::LocalWriterService> service_;
};

TEST_F(SluicePutTest, LinesGoToTheirSubpartitionAndTheMapOutputIsPrinted) {
  std::string input;
  for (int i = 0; i < 5000; ++i) input += std::to_string(i) + ",k" + std::to_string(i % 13) + "\n";
  input += "last-line-without-newline,k1";
  std::string out, err;
  ASSERT_EQ(Run({"--job", "wc", "--partition", "4", "--attempt", "1", "--subpartitions", "5",
                 "--key-field", "2", "--delimiter", ",", "--mode", "blocking"},
                input, &out, &err),
            0)
      << err;
  ASSERT_FALSE(out.empty());
  auto mo = client::DecodeMapOutput(out.substr(0, out.size() - 1));
  ASSERT_TRUE(mo.ok()) << out;
  EXPECT_EQ(mo->records, 5001u);
  EXPECT_EQ(mo->partition, 4u);
  EXPECT_EQ(mo->attempt, 1u);
  auto outs = sink_.outputs();
  ASSERT_EQ(outs.size(), 1u);
  const auto& o = outs.begin()->second;
  EXPECT_EQ(o.spec.mode, store::PartitionMode::kBlocking);
  // The token was created for the job and stored 0600 for later writers and readers.
  struct stat st{};
  ASSERT_EQ(::stat(dir_.Path("jobs/wc.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(o.spec.token.size(), 64u);
  size_t total = 0;
  for (uint32_t s = 0; s < 5; ++s) {
    for (const std::string& line : o.records[s]) {
      EXPECT_EQ(Fnv1a(line.substr(line.find(',') + 1)) % 5, s) << line;
    }
    total += o.records[s].size();
  }
  EXPECT_EQ(total, 5001u);
  EXPECT_EQ(o.records[Fnv1a("k1") % 5].back(), "last-line-without-newline,k1");
}

TEST_F(SluicePutTest, FailuresCommitNothingAndSayWhy) {
  std::string out, err;
  // The daemon refuses the job's token: exit 1, the reason on stderr, nothing on stdout.
  sink_.deny_token("bad-token");
  EXPECT_EQ(Run({"--token", "bad-token", "--job", "j", "--partition", "0", "--subpartitions", "2"},
                "a\n", &out, &err),
            1);
  EXPECT_TRUE(out.empty());
  EXPECT_NE(err.find("PermissionDenied"), std::string::npos) << err;
  // No daemon at that socket.
  EXPECT_EQ(Run({"--daemon", dir_.Path("nobody.sock"), "--job", "j", "--partition", "0",
                 "--subpartitions", "2"},
                "a\n", &out, &err),
            1);
  EXPECT_NE(err.find("cannot connect to the sluiced local socket"), std::string::npos) << err;
  // Usage: both routings; a missing flag.
  EXPECT_EQ(Run({"--job", "j", "--partition", "0", "--subpartitions", "2", "--key-field", "1",
                 "--round-robin"},
                "a\n", &out, &err),
            2);
  EXPECT_NE(err.find("exclude each other"), std::string::npos) << err;
  EXPECT_EQ(Run({"--job", "j", "--partition", "0"}, "a\n", &out, &err), 2);
  for (auto& [id, o] : sink_.outputs()) EXPECT_FALSE(o.committed);
}

}  // namespace
}  // namespace sluice::tools::sluice_cli
