// The sluicectl executable against an in-process sluiced (tools/daemon/daemon.h) that
// authenticates with the secret of a state directory, as `sluiced --state-dir D` makes it:
// sluicectl finds it with --state-dir or --auth-secret-file; without a secret, or with one that
// group or others may read, it exits 2 and says what to do; status and cancel carry the job's
// token. Every test ends with the daemon up and every segment back in its pool.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/auth.h"
#include "testutil/temp_dir.h"
#include "buffer/memory_estimate.h"
#include "tools/control/control_client.h"
#include "tools/daemon/daemon.h"

namespace sluice::control {
namespace {

struct CtlRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SluicectlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::MakeTempDir("sluicectl-test");
    ASSERT_FALSE(dir_.empty());
    state_dir_ = dir_ + "/state";
    // What sluiced does on its first start with --state-dir.
    auto secret = shuffle::auth::LoadStateSecret(state_dir_, /*create=*/true);
    ASSERT_TRUE(secret.ok()) << secret.status().ToString();
    secret_ = *secret;
    daemon::DaemonConfig c;
    c.port = 0;
    c.network_memory = 16ull << 20;
    c.buffer_timeout_ms = 10;
    c.state_dir = state_dir_;
    // Explicit, so that a daemon that does not read its state directory yet uses it too.
    c.auth_secret_file = shuffle::auth::StateSecretPath(state_dir_);
    auto d = daemon::Daemon::Start(c);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    daemon_ = std::move(*d);
  }

  void TearDown() override {
    if (daemon_) {
      // Still up and serving, with every segment back.
      auto stats = WaitForPool();
      EXPECT_EQ(stats.available_segments, stats.total_segments);
      EXPECT_EQ(daemon_->Shutdown(std::chrono::milliseconds(0)).leaked_segments, 0u);
    }
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }

  // Polls the daemon's stats until the pool is whole (or 10 s).
  NodeStats WaitForPool() {
    NodeStats s;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    do {
      s = daemon_->Stats();
      if (s.available_segments == s.total_segments) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < until);
    return s;
  }

  std::string Port() const { return std::to_string(daemon_->port()); }

  // Runs sluicectl with `args` (after --port), its stdout and stderr captured in files.
  CtlRun Ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {SLUICECTL_PATH, "--port", Port()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const std::string out = dir_ + "/out", err = dir_ + "/err";
    const int out_fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int err_fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(err_fd, STDERR_FILENO);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    ::close(out_fd);
    ::close(err_fd);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    CtlRun r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  std::string WriteFile(const std::string& name, const std::string& text, mode_t mode) {
    return testutil::WriteFileWithMode(dir_ + "/" + name, text, mode);
  }

  std::unique_ptr<ControlClient> Client() {
    ControlClientOptions o;
    o.secret = secret_;
    auto c = ControlClient::Connect("127.0.0.1", daemon_->port(), o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::string dir_;
  std::string state_dir_;
  std::string secret_;
  std::unique_ptr<daemon::Daemon> daemon_;
};

TEST_F(SluicectlTest, StatsWithTheStateDirSecret) {
  CtlRun r = Ctl({"--state-dir", state_dir_, "stats"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("512/512 segments of 32768 bytes free"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sluice_frames_in_total"), std::string::npos) << r.out;
}

TEST_F(SluicectlTest, DumpWithTheSecretFile) {
  CtlRun r = Ctl({"--auth-secret-file", shuffle::auth::StateSecretPath(state_dir_), "dump"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "(no channels)\n");
}

TEST_F(SluicectlTest, NoSecretExits2NamingBothOptions) {
  const std::string empty = dir_ + "/empty-state";
  ASSERT_EQ(::mkdir(empty.c_str(), 0700), 0);
  CtlRun r = Ctl({"--state-dir", empty, "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--state-dir"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--auth-secret-file"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(empty + "/auth_secret"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  r = Ctl({"--auth-secret-file", dir_ + "/missing", "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find(dir_ + "/missing"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--state-dir"), std::string::npos) << r.err;
}

TEST_F(SluicectlTest, WorldReadableSecretExits2NamingTheChmod) {
  const std::string open = WriteFile("open.secret", secret_ + "\n", 0644);
  CtlRun r = Ctl({"--auth-secret-file", open, "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("chmod 600 " + open), std::string::npos) << r.err;
  // The state directory's own secret, opened up to the group.
  const std::string path = shuffle::auth::StateSecretPath(state_dir_);
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  r = Ctl({"--state-dir", state_dir_, "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("chmod 600 " + path), std::string::npos) << r.err;
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_EQ(Ctl({"--state-dir", state_dir_, "stats"}).exit_code, 0);
}

TEST_F(SluicectlTest, WrongSecretIsRefusedByTheDaemon) {
  const std::string wrong = WriteFile("wrong.secret", "not-" + secret_ + "\n", 0600);
  CtlRun r = Ctl({"--auth-secret-file", wrong, "stats"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("PermissionDenied"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("127.0.0.1:" + Port()), std::string::npos) << r.err;
}

TEST_F(SluicectlTest, StatusAndCancelCarryTheJobToken) {
  JobSpec spec;
  spec.job_id = "ctl-job";
  spec.token = shuffle::auth::MakeJobToken();
  spec.nodes = {"127.0.0.1:" + Port()};
  spec.producer_nodes = {0};
  spec.consumer_nodes = {0};
  spec.records_per_producer = 10'000'000;  // runs until cancelled: the consumer is throttled
  spec.record_size_min = 100;
  spec.record_size_max = 100;
  spec.throttled_consumer = 0;
  spec.throttle_mib_per_second = 1;
  spec.timeout_ms = 60000;
  auto client = Client();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->SubmitJob(spec, 0).ok());

  CtlRun r = Ctl({"--state-dir", state_dir_, "status", "ctl-job", "--token", spec.token});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("job 'ctl-job': running"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("producer 0: running"), std::string::npos) << r.out;

  // A token file is a secret too: refused while others may read it.
  const std::string token_file = WriteFile("ctl-job.token", spec.token + "\n", 0644);
  r = Ctl({"--state-dir", state_dir_, "cancel", "ctl-job", "--token-file", token_file});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("chmod 600 " + token_file), std::string::npos) << r.err;
  ASSERT_EQ(::chmod(token_file.c_str(), 0600), 0);
  r = Ctl({"--state-dir", state_dir_, "cancel", "ctl-job", "--token-file", token_file,
           "operator says stop"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "job 'ctl-job' cancelled on 127.0.0.1:" + Port() + "\n");

  // The job ends cancelled (with the reason); its segments go home (TearDown checks).
  JobState state = JobState::kRunning;
  for (int i = 0; i < 500 && state == JobState::kRunning; ++i) {
    auto st = client->GetJobStatus("ctl-job", spec.token);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    state = st->state;
    if (state == JobState::kRunning) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(state, JobState::kCancelled);
  r = Ctl({"--state-dir", state_dir_, "status", "ctl-job", "--token", spec.token});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("job 'ctl-job': cancelled"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("operator says stop"), std::string::npos) << r.out;
}

TEST_F(SluicectlTest, UsageErrorsExit2) {
  EXPECT_EQ(
      Ctl({"--state-dir", state_dir_, "status", "j", "--token", "t", "--token-file", dir_ + "/t"})
          .exit_code,
      2);
  CtlRun r = Ctl({"--state-dir", state_dir_, "stats", "--token", "t"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--token: stats takes no job token"), std::string::npos) << r.err;
  // sluiced always authenticates, so there is no --auth off to connect without a secret.
  r = Ctl({"--auth", "off", "--state-dir", state_dir_, "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--auth"), std::string::npos) << r.err;
  r = Ctl({"--state-dir", state_dir_, "--timeout-ms", "0", "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--timeout-ms"), std::string::npos) << r.err;
  // A number that does not parse names the flag; --flag=value works like --flag value.
  r = Ctl({"--state-dir", state_dir_, "--timeout-ms=abc", "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--timeout-ms"), std::string::npos) << r.err;
  EXPECT_EQ(Ctl({"--state-dir=" + state_dir_, "--timeout-ms=5000", "stats"}).exit_code, 0);
  r = Ctl({"--state-dir", state_dir_, "status"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("job is required"), std::string::npos) << r.err;
  r = Ctl({"--state-dir", state_dir_, "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos) << r.err;
  r = Ctl({"plan", "x.toml", "--segment-size", "64q"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--segment-size"), std::string::npos) << r.err;
  // The segment size comes from the handshake: sluicectl has no global --segment-size.
  r = Ctl({"--state-dir", state_dir_, "--segment-size", "32k", "stats"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--segment-size"), std::string::npos) << r.err;
}

TEST_F(SluicectlTest, DumpShowsTheClientChannelsCreditNumbers) {
  // A second daemon with the same secret produces; this one consumes (throttled, so the job
  // is running while dump looks).
  daemon::DaemonConfig c;
  c.port = 0;
  c.network_memory = 16ull << 20;
  c.buffer_timeout_ms = 10;
  c.auth_secret_file = shuffle::auth::StateSecretPath(state_dir_);
  c.state_dir = dir_ + "/producer-state";  // its spill root; never the default /var/lib/sluice
  c.local_socket = "off";
  auto producer = daemon::Daemon::Start(c);
  ASSERT_TRUE(producer.ok()) << producer.status().ToString();
  JobSpec spec;
  spec.job_id = "dump-job";
  spec.token = shuffle::auth::MakeJobToken();
  spec.nodes = {"127.0.0.1:" + Port(), "127.0.0.1:" + std::to_string((*producer)->port())};
  spec.producer_nodes = {1};
  spec.consumer_nodes = {0};
  spec.records_per_producer = 10'000'000;
  spec.throttled_consumer = 0;
  spec.throttle_mib_per_second = 1;
  spec.timeout_ms = 60000;
  auto client = Client();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->SubmitJob(spec, 0).ok());
  {
    ControlClientOptions o;
    o.secret = secret_;
    auto pc = ControlClient::Connect("127.0.0.1", (*producer)->port(), o);
    ASSERT_TRUE(pc.ok()) << pc.status().ToString();
    ASSERT_TRUE((*pc)->SubmitJob(spec, 1).ok());
  }
  CtlRun r;
  for (int i = 0; i < 250; ++i) {  // until the channel is connected
    r = Ctl({"--state-dir", state_dir_, "dump"});
    if (r.out.find("channel peer=") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("partition=dump-job/p0/0 exclusive="), std::string::npos) << r.out;
  for (const char* field : {" floating=", " unannounced=", " backlog=", " queued="}) {
    EXPECT_NE(r.out.find(field), std::string::npos) << field << " in " << r.out;
  }
  ASSERT_TRUE(client->CancelJob("dump-job", spec.token, "test over").ok());
  EXPECT_EQ((*producer)->Shutdown(std::chrono::milliseconds(0)).leaked_segments, 0u);
}

TEST_F(SluicectlTest, VersionAndHelpExit0) {
  CtlRun r = Ctl({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string("sluicectl ") + SLUICE_VERSION + "\n");  // project(VERSION)
  r = Ctl({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* cmd : {"submit", "jobs", "status", "watch", "cancel", "stats", "dump", "plan"}) {
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd << " missing from\n" << r.out;
  }
}

TEST_F(SluicectlTest, StatsJsonCarriesTheCreditOptions) {
  CtlRun r = Ctl({"--state-dir", state_dir_, "stats", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.front(), '{') << r.out;
  for (const char* field :
       {"\"segment_size\":32768", "\"total_segments\":512", "\"available_segments\":512",
        "\"buffers_per_channel\":2", "\"floating_per_gate\":8", "\"running_jobs\":0"}) {
    EXPECT_NE(r.out.find(field), std::string::npos) << field << " in " << r.out;
  }
}

TEST_F(SluicectlTest, SubmitWaitThenJobsStatusAndTheTokenFile) {
  const std::string job = WriteFile("gen.toml",
                                    "job_id = \"gen-1\"\n"
                                    "kind = \"generated\"\n"
                                    "nodes = [\"127.0.0.1:" + Port() + "\"]\n"
                                    "producer_nodes = [0, 0]\n"
                                    "consumer_nodes = [0]\n"
                                    "records_per_producer = 5000\n"
                                    "record_size_min = 64\n"
                                    "record_size_max = 64\n",
                                    0600);
  CtlRun r = Ctl({"--state-dir", state_dir_, "submit", job, "--wait", "--interval-ms", "50"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_EQ(r.out.substr(0, r.out.find('\n')), "gen-1");
  EXPECT_NE(r.out.find("job 'gen-1' succeeded on 1 nodes: 10000 records"), std::string::npos)
      << r.out;
  const std::string token_path = state_dir_ + "/jobs/gen-1.token";
  EXPECT_NE(r.err.find(token_path), std::string::npos) << r.err;
  struct stat st{};
  ASSERT_EQ(::stat(token_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((state_dir_ + "/jobs").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(ReadFile(token_path).size(), 64u);

  // status finds the token file by itself.
  r = Ctl({"--state-dir", state_dir_, "status", "gen-1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"job_id\":\"gen-1\",\"state\":\"succeeded\""), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("\"records_consumed\":10000"), std::string::npos) << r.out;
  r = Ctl({"--state-dir", state_dir_, "jobs"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("gen-1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("succeeded"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 jobs on 127.0.0.1:" + Port()), std::string::npos) << r.out;
  r = Ctl({"--state-dir", state_dir_, "jobs", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("[{\"job_id\":\"gen-1\"", 0), 0u) << r.out;
  EXPECT_EQ(r.out.find("token"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(ReadFile(token_path)), std::string::npos) << r.out;

  // watch ends with the job: at once for an ended one, exit 0 for a success.
  r = Ctl({"--state-dir", state_dir_, "watch", "gen-1", "--interval-ms", "10"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("job 'gen-1': succeeded"), std::string::npos) << r.out;
  // cancel of an ended job is fine, with the token from the token file.
  r = Ctl({"--state-dir", state_dir_, "cancel", "gen-1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Without the token (another state dir): refused by the daemon, exit 1.
  r = Ctl({"--auth-secret-file", shuffle::auth::StateSecretPath(state_dir_), "--state-dir",
           dir_ + "/other", "status", "gen-1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("PermissionDenied"), std::string::npos) << r.err;

  // The same job id again: the token file is not overwritten, nothing is sent.
  r = Ctl({"--state-dir", state_dir_, "submit", job});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("a job id is used once"), std::string::npos) << r.err;
}

// A job file whose job_id would name a token file outside <state_dir>/jobs is refused before
// anything is written or sent; so is a --token-file that exists.
TEST_F(SluicectlTest, SubmitRefusesAJobIdThatEscapesTheStateDirectory) {
  const std::string body = "kind = \"generated\"\n"
                           "nodes = [\"127.0.0.1:" + Port() + "\"]\n"
                           "producer_nodes = [0]\n"
                           "consumer_nodes = [0]\n";
  const std::string job = WriteFile("escape.toml", "job_id = \"../escape\"\n" + body, 0600);
  CtlRun r = Ctl({"--state-dir", state_dir_, "submit", job});
  EXPECT_EQ(r.exit_code, 2) << r.err << r.out;
  EXPECT_NE(r.err.find("job_id '../escape' must be 1 to 128 characters of [A-Za-z0-9._-]"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");
  const std::string dotdot = WriteFile("dotdot.toml", "job_id = \"..\"\n" + body, 0600);
  // ".." is refused by the job id rule itself, with a --token-file too (no token path needed).
  const std::string dotdot_token = dir_ + "/dotdot.token";
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"--token-file", dotdot_token}}) {
    std::vector<std::string> args = {"--state-dir", state_dir_, "submit", dotdot};
    args.insert(args.end(), extra.begin(), extra.end());
    r = Ctl(args);
    EXPECT_EQ(r.exit_code, 2) << r.err << r.out;
    EXPECT_NE(r.err.find("job_id '..' must be 1 to 128 characters of [A-Za-z0-9._-], and not . "
                         "or .."),
              std::string::npos)
        << r.err;
  }
  // No token file anywhere: not beside the state directory, not in jobs/.
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_)) {
    EXPECT_NE(e.path().extension(), ".token") << e.path();
  }

  const std::string taken = WriteFile("taken.token", std::string(64, 'e'), 0600);
  const std::string ok_job = WriteFile("ok.toml", "job_id = \"fresh-1\"\n" + body, 0600);
  r = Ctl({"--state-dir", state_dir_, "submit", ok_job, "--token-file", taken});
  EXPECT_EQ(r.exit_code, 2) << r.err << r.out;
  EXPECT_NE(r.err.find("token file '" + taken + "' already exists"), std::string::npos) << r.err;
  EXPECT_EQ(ReadFile(taken), std::string(64, 'e')) << "not overwritten";
  r = Ctl({"--state-dir", state_dir_, "jobs"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("fresh-1"), std::string::npos) << "nothing was sent: " << r.out;
  EXPECT_EQ(r.out.find("escape"), std::string::npos) << r.out;
}

TEST_F(SluicectlTest, RefusedSubmitExits1WithTheReasonAndLeavesNoToken) {
  // Node 1 is not a daemon: node 0 accepts, node 1 cannot be reached, node 0 cancels.
  const std::string job = WriteFile("two.toml",
                                    "job_id = \"two\"\n"
                                    "nodes = [\"127.0.0.1:" + Port() + "\", \"127.0.0.1:1\"]\n"
                                    "producer_nodes = [0]\n"
                                    "consumer_nodes = [1]\n"
                                    "records_per_producer = 10\n",
                                    0600);
  CtlRun r = Ctl({"--state-dir", state_dir_, "submit", job});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("node 1 (127.0.0.1:1) refused job 'two'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cancelled on node 0"), std::string::npos) << r.err;
  EXPECT_NE(::access((state_dir_ + "/jobs/two.token").c_str(), F_OK), 0);
  // A bad job file is a usage error naming the key and the file.
  const std::string bad = WriteFile("bad.toml", "nodes = [\"a:1\"]\nrecord_size = 5\n", 0600);
  r = Ctl({"--state-dir", state_dir_, "submit", bad});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown key 'record_size'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
}

TEST_F(SluicectlTest, PlanMatchesTheMemoryModel) {
  const std::string job = WriteFile("plan.toml",
                                    "job_id = \"p\"\n"
                                    "nodes = [\"127.0.0.1:" + Port() + "\", \"127.0.0.1:1\"]\n"
                                    "producer_nodes = [0, 1, 1]\n"
                                    "consumer_nodes = [0, 1]\n"
                                    "records_per_producer = 10\n",
                                    0600);
  // Node 0 answers (its options: 32k, 2, 8); node 1 does not: the flags' values.
  CtlRun r = Ctl({"--state-dir", state_dir_, "plan", job, "--segment-size", "64k",
                  "--buffers-per-channel", "3", "--floating-per-gate", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("node 0 (127.0.0.1:" + Port() + "): credit options from the node "
                       "(segment size 32768 from its handshake"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("node 1 (127.0.0.1:1): credit options from flags (--segment-size 65536"),
            std::string::npos)
      << r.out;
  // Node 0: partition p/p0 (2 subpartitions), gate p/c0 (1 local channel from p0, 2 remote).
  buffer::CreditOptions c0;
  buffer::Topology t0;
  t0.partitions.push_back({"p/p0", 2});
  t0.gates.push_back({"p/c0", 2, 1});
  const buffer::MemoryEstimate e0 = buffer::EstimateNetworkMemory(t0, c0);
  buffer::CreditOptions c1;
  c1.segment_size = 64 << 10;
  c1.buffers_per_channel = 3;
  c1.floating_per_gate = 4;
  buffer::Topology t1;
  t1.partitions.push_back({"p/p1", 2});
  t1.partitions.push_back({"p/p2", 2});
  t1.gates.push_back({"p/c1", 1, 2});
  const buffer::MemoryEstimate e1 = buffer::EstimateNetworkMemory(t1, c1);
  EXPECT_NE(r.out.find("network memory: minimum " + std::to_string(e0.min_bytes) +
                       " bytes, recommended " + std::to_string(e0.recommended_bytes)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("network memory: minimum " + std::to_string(e1.min_bytes) +
                       " bytes, recommended " + std::to_string(e1.recommended_bytes)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("all 2 nodes: minimum " + std::to_string(e0.min_bytes + e1.min_bytes)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("gate p/c0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("partition p/p2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fixed per-process overhead"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace sluice::control

namespace sluice::control {
namespace {

// sluicectl plan --rtt --throughput: bandwidth-delay sizing without a job file (issue 14), the
// figures from buffer::PlanBandwidthDelay, and the usage errors naming the flags.
TEST_F(SluicectlTest, PlanBandwidthDelaySizesBuffersPerChannelWideAndDebloat) {
  CtlRun r = Ctl({"plan", "--rtt", "2ms", "--throughput", "100m", "--channels", "10000"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  buffer::BandwidthDelayInput in;
  in.throughput_bytes_per_s = 100.0 * (1 << 20);
  in.rtt_s = 0.002;
  in.channels = 10000;
  const buffer::BandwidthDelayPlan p = buffer::PlanBandwidthDelay(in, buffer::CreditOptions{});
  EXPECT_NE(r.out.find(p.ToString(32768)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-> 7 buffers per channel"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wide gate (shared floating budget): minimum 512 segments"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("recommended buffers_per_channel = 7"), std::string::npos) << r.out;
  // Narrow gate, other segment size and budget: "if it were wide".
  r = Ctl({"plan", "--rtt", "250us", "--throughput", "1g", "--segment-size", "64k",
           "--wide-gate-buffers", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  // 1 GiB/s x 250 us = 268436 bytes -> ceil(/65536) = 5 buffers.
  EXPECT_NE(r.out.find("268436 bytes per channel -> 5 buffers per channel"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("if it were wide: minimum 64 segments"), std::string::npos) << r.out;
}

TEST_F(SluicectlTest, PlanBandwidthDelayUsageErrorsNameTheFlag) {
  CtlRun r = Ctl({"plan", "--rtt", "2ms"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--rtt and --throughput go together"), std::string::npos) << r.err;
  r = Ctl({"plan"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("plan needs a job file, or --rtt and --throughput"), std::string::npos)
      << r.err;
  r = Ctl({"plan", "--rtt", "2 fortnights", "--throughput", "1m"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--rtt wants a duration such as 2ms"), std::string::npos) << r.err;
  r = Ctl({"plan", "--rtt", "1ms", "--throughput", "1m", "--debloat-target", "-1s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--debloat-target wants a duration"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace sluice::control
