// sluice get (extstore): choosing map outputs from a listing without sockets, and RunGet
// against an in-process daemon (the lines of every committed writer, a chosen one, failures
// with exit 1 and usage errors with exit 2). Ends with the daemon's and the writers' leak check.
#include "tools/sluice/get.h"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>

#include "client/ext_control.h"
#include "store/store_test_util.h"
#include "testutil/leak_check.h"
#include "testutil/pools.h"
#include "tools/common/cli.h"
#include "tools/daemon/daemon_test_util.h"

namespace sluice::tools::sluice_cli {
namespace {

client::ExternalPartition Part(uint32_t p, uint32_t a, const char* state) {
  client::ExternalPartition e;
  e.job = "j";
  e.partition = p;
  e.attempt = a;
  e.subpartitions = 2;
  e.state = state;
  return e;
}

TEST(SluiceGetSelect, HighestCommittedAttemptPerPartition) {
  client::ExternalList list;
  list.partitions = {Part(1, 0, "committed"), Part(1, 2, "committed"), Part(1, 3, "aborted"),
                     Part(2, 0, "writing"), Part(3, 1, "committed")};
  auto all = SelectOutputs(list, "n:1", "j", {});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].partition, 1u);
  EXPECT_EQ((*all)[0].attempt, 2u);
  EXPECT_EQ((*all)[1].partition, 3u);
  EXPECT_EQ((*all)[1].node, "n:1");
  auto some = SelectOutputs(list, "n:1", "j", {3});
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->size(), 1u);
  auto missing = SelectOutputs(list, "n:1", "j", {2});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "job 'j' partition 2 has no committed attempt on n:1");
  EXPECT_EQ(SelectOutputs(list, "n:1", "other", {}).status().code(), StatusCode::kNotFound);
}

std::string ReadBack(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
  return s;
}

TEST(SluiceGet, ReadsCommittedWritersFromADaemon) {
  auto pool = testutil::MakeNetworkBufferPool(64, 32 * 1024);
  sluice::testutil::TempDir spill("get-spill");
  auto d = daemon::testing::StartDaemon("", 32ull << 20,
                                        [&](daemon::DaemonConfig& c) { c.spill_dir = spill.root(); });
  ASSERT_TRUE(d);
  const std::string token = std::string(64, 't');
  store::PartitionStore* s = d->store();
  for (uint32_t p : {4u, 7u}) {
    auto id = s->OpenWriter({"j", token, p, 0, 2, store::PartitionMode::kBlocking});
    ASSERT_TRUE(id.ok());
    store::testing::TestWriter w(s, pool, *id);
    ASSERT_TRUE(w.Write(p, 0, 1, 0, 3).ok());
    ASSERT_TRUE(s->Commit(*id).ok());
  }
  auto aborted = s->OpenWriter({"j", token, 9, 0, 2, store::PartitionMode::kBlocking});
  ASSERT_TRUE(aborted.ok());
  s->Abort(*aborted, "test");
  CommonFlags common;
  common.auth_secret_file = daemon::testing::TestSecretFile();
  common.token = token;
  GetOptions o;
  o.from = "127.0.0.1:" + std::to_string(d->port());
  o.job = "j";
  o.subpartition = 1;
  o.timeout_ms = 20000;
  std::FILE* out = std::tmpfile();
  EXPECT_EQ(RunGet(o, common, out), kExitOk);
  EXPECT_EQ(ReadBack(out), "p4a0s1#0\np4a0s1#1\np4a0s1#2\np7a0s1#0\np7a0s1#1\np7a0s1#2\n");
  std::fclose(out);
  o.partitions = {7};
  out = std::tmpfile();
  EXPECT_EQ(RunGet(o, common, out), kExitOk);
  EXPECT_EQ(ReadBack(out), "p7a0s1#0\np7a0s1#1\np7a0s1#2\n");
  std::fclose(out);
  // Failures: an aborted writer, a wrong token, a bad address.
  o.partitions = {9};
  out = std::tmpfile();
  EXPECT_EQ(RunGet(o, common, out), kExitFailed);
  EXPECT_EQ(ReadBack(out), "");
  std::fclose(out);
  o.partitions = {};
  common.token = std::string(64, 'x');
  out = std::tmpfile();
  EXPECT_EQ(RunGet(o, common, out), kExitFailed);
  std::fclose(out);
  o.from = "nowhere";
  EXPECT_EQ(RunGet(o, common, stdout), kExitUsage);
  // The binary in a process of its own: lines on stdout, exit 0; a failure exits 1 with the
  // reason on stderr and nothing on stdout.
  const std::string base = std::string(SLUICE_BIN) + " get --from 127.0.0.1:" +
                           std::to_string(d->port()) + " --job j --subpartition 1 " +
                           "--auth-secret-file " + daemon::testing::TestSecretFile() +
                           " --token " + token;
  auto run = [](const std::string& cmd, std::string* output) {
    std::FILE* p = ::popen((cmd + " 2>/dev/null").c_str(), "r");
    char buf[256];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
    const int status = ::pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string text;
  EXPECT_EQ(run(base + " --partition 4", &text), 0);
  EXPECT_EQ(text, "p4a0s1#0\np4a0s1#1\np4a0s1#2\n");
  text.clear();
  EXPECT_EQ(run(base + " --partition 9", &text), 1);
  EXPECT_EQ(text, "");
  EXPECT_EQ(run(std::string(SLUICE_BIN) + " get --job j --subpartition 1", &text), 2);
  auto c = daemon::testing::Connect(*d);
  ASSERT_TRUE(c);
  EXPECT_TRUE(client::ReleaseExternalJob(*c, "j", token).ok());
  c.reset();
  daemon::testing::ExpectCleanShutdown(*d);
  testutil::ExpectAllSegmentsBack(*pool, "writers");
}

}  // namespace
}  // namespace sluice::tools::sluice_cli
