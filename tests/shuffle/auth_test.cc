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

// Runs `load` on 8 threads at once and checks each got the same 64-character secret, without
// an error. Returns that secret.
template <typename Load>
std::string ExpectAllGetOneSecret(Load load, const std::string& what) {
  std::vector<std::string> got(8);
  std::vector<std::string> errors(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      Result<std::string> s = load();
      if (s.ok()) got[i] = *s;
      else errors[i] = s.status().ToString();
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(errors[i], "") << what;
    EXPECT_EQ(got[i].size(), 64u) << what;
    EXPECT_EQ(got[i], got[0]) << what;
  }
  return got[0];
}

TEST_F(StateSecretTest, DaemonsStartingTogetherAllReadTheSameWholeSecret) {
  for (int round = 0; round < 20; ++round) {
    const std::string state = dir_ + "/state" + std::to_string(round);
    ExpectAllGetOneSecret([&] { return LoadStateSecret(state, /*create=*/true); },
                          "round " + std::to_string(round));
  }
}

TEST_F(StateSecretTest, MissingSecretIsNotCreatedWhenNotAsked) {
  auto s = LoadStateSecret(dir_ + "/none", /*create=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find(dir_ + "/none/auth_secret"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/none"));
}

// A state directory that cannot be made (here: under a regular file, which root cannot get
// around either) is named, with the flag that fixes it, and nothing is written.
TEST_F(StateSecretTest, AStateDirectoryThatCannotBeMadeIsNamedWithTheFix) {
  const std::string file = dir_ + "/not-a-directory";
  std::ofstream(file) << "x";
  const std::string state = file + "/state";
  auto secret = LoadStateSecret(state, /*create=*/true);
  ASSERT_FALSE(secret.ok());
  EXPECT_NE(secret.status().message().find("state directory '" + state + "' cannot be created"),
            std::string::npos)
      << secret.status().ToString();
  EXPECT_NE(secret.status().message().find("--state-dir"), std::string::npos);
  bool existed = true;
  auto token = CreateJobTokenFile(state, "job-1", MakeJobToken(), &existed);
  ASSERT_FALSE(token.ok());
  EXPECT_FALSE(existed);
  EXPECT_NE(token.status().message().find("state directory '" + state + "'"), std::string::npos)
      << token.status().ToString();
  EXPECT_NE(token.status().message().find("--token-file"), std::string::npos);
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) files += e.exists();
  EXPECT_EQ(files, 1u);  // only the file this test made
}

// A secret file of another user (which could have been planted in a directory others can
// write to) is refused naming the chown; root's and this process's own are read.
TEST_F(StateSecretTest, AnotherUsersSecretIsRefusedNamingTheChown) {
  const std::string path = dir_ + "/secret";
  std::ofstream(path) << "0123456789abcdef0123\n";
  ::chmod(path.c_str(), 0600);
  ASSERT_TRUE(ReadSecretFile(path).ok());
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give the file to another uid";
  ASSERT_EQ(::chown(path.c_str(), 12345, 12345), 0);
  auto s = ReadSecretFile(path);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.status().message().find("belongs to uid 12345, not to this process (uid 0) or "
                                      "root; run `chown 0 " + path + "`"),
            std::string::npos)
      << s.status().message();
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

// Every entry of `dir`, by name.
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    out.push_back(e.path().filename().string());
  }
  return out;
}

// A submitter's token file: the directories made private, the file 0600 and whole, never
// replaced, and nothing written for a job that would name a file outside jobs/.
TEST_F(StateSecretTest, CreateJobTokenFileMakesOnePrivateFileAndNeverReplacesIt) {
  const std::string state = dir_ + "/state";
  const std::string token(64, 'c');
  auto made = CreateJobTokenFile(state, "wc-1", token);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ(*made, state + "/jobs/wc-1.token");
  struct stat st {};
  for (const std::string& d : {state, state + "/jobs"}) {
    ASSERT_EQ(::stat(d.c_str(), &st), 0) << d;
    EXPECT_EQ(st.st_mode & 0777, 0700u) << d;
  }
  ASSERT_EQ(::stat(made->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(*FindJobToken("", "", state, "wc-1"), token);
  EXPECT_EQ(Entries(state + "/jobs"), std::vector<std::string>{"wc-1.token"}) << "no temporary left";

  bool existed = false;
  auto again = CreateJobTokenFile(state, "wc-1", std::string(64, 'd'), &existed);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(existed);
  EXPECT_NE(again.status().message().find(state + "/jobs/wc-1.token"), std::string::npos)
      << again.status().ToString();
  EXPECT_NE(again.status().message().find("another job id"), std::string::npos);
  EXPECT_EQ(*FindJobToken("", "", state, "wc-1"), token) << "the first token stays";

  for (const char* bad : {"../escape", "..", ".", "a/b", ""}) {
    existed = true;
    auto r = CreateJobTokenFile(state, bad, token, &existed);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_FALSE(existed) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(Entries(state + "/jobs"), std::vector<std::string>{"wc-1.token"});
  EXPECT_EQ(Entries(state).size(), 1u) << "nothing beside jobs/ (no escape.token)";
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/escape.token"));

  // A directory that cannot be made is named, with the fix.
  auto blocked = CreateJobTokenFile(*made + "/state", "j", token);
  ASSERT_FALSE(blocked.ok());
  EXPECT_NE(blocked.status().message().find("--state-dir"), std::string::npos)
      << blocked.status().ToString();
}

// Writers of one job starting together (sluice put on several hosts' shells): one stores its
// token, every one of them gets that token, and the file is whole when any of them reads it.
TEST_F(StateSecretTest, WritersStartingTogetherAllGetTheFirstStoredToken) {
  for (int round = 0; round < 20; ++round) {
    const std::string state = dir_ + "/state" + std::to_string(round);
    const std::string token = ExpectAllGetOneSecret(
        [&] { return LoadOrCreateJobToken(state, "job"); }, "round " + std::to_string(round));
    EXPECT_EQ(*FindJobToken("", "", state, "job"), token);
    EXPECT_EQ(Entries(state + "/jobs").size(), 1u) << "no temporary left";
  }
  EXPECT_FALSE(LoadOrCreateJobToken(dir_, "../job").ok());
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
