// The redistribution option of sluiced (issue 14): the config key and flag, its refusal of an
// unknown policy (naming the key and the choices), and a job between two daemons under each
// policy that delivers every record and returns every segment.
#include <gtest/gtest.h>

#include <string>

#include "daemon_test_util.h"
#include "tools/daemon/daemon_config.h"

namespace sluice::daemon {
namespace {

using control::JobSpec;
using control::JobState;
using control::JobStatus;
using testing::Cluster;

TEST(RedistributionConfigTest, DefaultIsUsageAndTheFileAndFlagSetIt) {
  auto cl = ParseCommandLine({});
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->config.redistribution, "usage");
  DaemonConfig c;
  ASSERT_TRUE(ApplyToml("redistribution = \"static\"\n", "t.toml", &c).ok());
  EXPECT_EQ(c.redistribution, "static");
  auto flag = ParseCommandLine({"--redistribution", "static"});
  ASSERT_TRUE(flag.ok()) << flag.status().ToString();
  EXPECT_EQ(flag->config.redistribution, "static");
  EXPECT_NE(HelpText().find("--redistribution"), std::string::npos);
}

TEST(RedistributionConfigTest, AnUnknownPolicyIsRefusedWithTheChoices) {
  DaemonConfig c;
  const Status st = ApplyToml("redistribution = \"dynamic\"\n", "site.toml", &c);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "site.toml: redistribution = 'dynamic': use usage or static");
  EXPECT_EQ(c.redistribution, "usage");  // unchanged
  auto flag = ParseCommandLine({"--redistribution=Usage"});
  ASSERT_FALSE(flag.ok());
  EXPECT_NE(flag.status().message().find("use usage or static"), std::string::npos)
      << flag.status().message();
}

void RunJobUnder(const std::string& policy) {
  Cluster cl(2, [&](DaemonConfig& c) { c.redistribution = policy; });
  ASSERT_TRUE(cl.ok());
  const JobSpec spec = testing::Job("redistribution-" + policy, cl.nodes(), 20000);
  testing::Submit(spec, cl.controls());
  const auto st = testing::WaitEnded(spec, cl.nodes());
  ASSERT_EQ(st.size(), 2u);
  uint64_t sent = 0, received = 0;
  for (const JobStatus& s : st) {
    EXPECT_EQ(s.state, JobState::kSucceeded) << s.error;
    for (const auto& p : s.producers) sent += p.records;
    for (const auto& c : s.consumers) received += c.records;
  }
  EXPECT_EQ(sent, 40000u);
  EXPECT_EQ(received, sent);
  cl.End();  // the leak check: every segment back, clean shutdown
}

TEST(RedistributionConfigTest, AJobRunsUnderEitherPolicy) {
  RunJobUnder("static");
  RunJobUnder("usage");
}

}  // namespace
}  // namespace sluice::daemon
