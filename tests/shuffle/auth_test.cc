// Secret files and the state directory (shuffle/auth.h): permissions, sizes, and daemons that
// start at the same moment on one state directory.
#include "shuffle/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "testutil/temp_dir.h"

namespace sluice::shuffle::auth {
namespace {

class StateSecretTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::MakeTempDir("sluice-auth-test");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(StateSecretTest, FirstStartCreatesA0600SecretInA0700Directory) {
  const std::string state = dir_ + "/state";
  auto s = LoadStateSecret(state, /*create=*/true);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->size(), 64u);
  struct stat st {};
  ASSERT_EQ(::stat(StateSecretPath(state).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto again = LoadStateSecret(state, /*create=*/true);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *s);  // reused, not replaced
  // Only the secret is left in the directory (no temporary file).
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(state)) files += e.exists();
  EXPECT_EQ(files, 1u);
}

TEST_F(StateSecretTest, DaemonsStartingTogetherAllReadTheSameWholeSecret) {
  for (int round = 0; round < 20; ++round) {
    const std::string state = dir_ + "/state" + std::to_string(round);
    std::vector<std::string> got(8);
    std::vector<std::string> errors(8);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < got.size(); ++i) {
      threads.emplace_back([&, i] {
        auto s = LoadStateSecret(state, /*create=*/true);
        if (s.ok()) got[i] = *s;
        else errors[i] = s.status().ToString();
      });
    }
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(errors[i], "") << "round " << round;
      EXPECT_EQ(got[i].size(), 64u) << "round " << round;
      EXPECT_EQ(got[i], got[0]) << "round " << round;
    }
  }
}

TEST_F(StateSecretTest, MissingSecretIsNotCreatedWhenNotAsked) {
  auto s = LoadStateSecret(dir_ + "/none", /*create=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find(dir_ + "/none/auth_secret"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/none"));
}

TEST_F(StateSecretTest, GroupReadableSecretIsRefusedNamingTheChmod) {
  const std::string path = dir_ + "/secret";
  std::ofstream(path) << "0123456789abcdef0123\n";
  ::chmod(path.c_str(), 0640);
  auto s = ReadSecretFile(path);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.status().message().find("chmod 600 " + path), std::string::npos)
      << s.status().message();
  ::chmod(path.c_str(), 0600);
  auto ok = ReadSecretFile(path);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, "0123456789abcdef0123");
}

TEST_F(StateSecretTest, ShortOrNonRegularSecretsAreRefused) {
  const std::string path = dir_ + "/short";
  std::ofstream(path) << "short\n";
  ::chmod(path.c_str(), 0600);
  auto s = ReadSecretFile(path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("at least 16"), std::string::npos);
  auto d = ReadSecretFile(dir_);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("not a regular file"), std::string::npos)
      << d.status().message();
}

// A job's token file is <state_dir>/jobs/<job>.token; a job that would name a path outside
// jobs/ has none (InvalidArgument naming the job and the flags to use instead).
TEST_F(StateSecretTest, JobTokenPathStaysInsideJobs) {
  auto ok = JobTokenPath("/s", "wordcount-1");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, "/s/jobs/wordcount-1.token");
  for (const char* bad : {"", ".", "..", "../x", "a/b", "/etc/passwd"}) {
    auto r = JobTokenPath("/s", bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--token-file"), std::string::npos);
  }
}

// The order a tool looks for a job's token in: the flag, the flag's file, the state directory's
// file, else none; a token file others may read is refused like a secret.
TEST_F(StateSecretTest, FindJobTokenTakesTheFlagThenTheFileThenTheStateDirectory) {
  const std::string token(64, 'a');
  EXPECT_EQ(*FindJobToken("given-token", "/nonexistent", dir_, "j"), "given-token");
  auto none = FindJobToken("", "", dir_, "j");
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(*none, "");
  EXPECT_EQ(*FindJobToken("", "", dir_, "../j"), "") << "no file looked up outside jobs/";
  ASSERT_TRUE(std::filesystem::create_directory(dir_ + "/jobs"));
  const std::string path = dir_ + "/jobs/j.token";
  {
    std::ofstream f(path);
    f << token << "\n";
  }
  ::chmod(path.c_str(), 0600);
  auto found = FindJobToken("", "", dir_, "j");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(*found, token);
  auto from_flag = FindJobToken("", path, "/nonexistent", "other");
  ASSERT_TRUE(from_flag.ok()) << from_flag.status().ToString();
  EXPECT_EQ(*from_flag, token);
  EXPECT_FALSE(FindJobToken("", dir_ + "/missing", dir_, "j").ok()) << "a named file must exist";
  ::chmod(path.c_str(), 0644);
  auto open = FindJobToken("", "", dir_, "j");
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.status().code(), StatusCode::kPermissionDenied) << open.status().ToString();
}

TEST(JobTokenTest, TokensAreRandomHexAndProofsBindPartitionAndSubpartition) {
  const std::string a = MakeJobToken();
  const std::string b = MakeJobToken();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  const Proof p = MakePartitionProof(a, "job/p0", 1);
  EXPECT_TRUE(ProofMatches(p, MakePartitionProof(a, "job/p0", 1)));
  EXPECT_FALSE(ProofMatches(p, MakePartitionProof(b, "job/p0", 1)));
  EXPECT_FALSE(ProofMatches(p, MakePartitionProof(a, "job/p0", 2)));
  EXPECT_FALSE(ProofMatches(p, MakePartitionProof(a, "job/p1", 1)));
}

}  // namespace
}  // namespace sluice::shuffle::auth
