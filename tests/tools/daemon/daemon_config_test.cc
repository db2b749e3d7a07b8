#include "tools/daemon/daemon_config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace sluice::daemon {
namespace {

void ExpectError(const Status& st, const std::string& fragment) {
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(fragment), std::string::npos)
      << "\"" << st.message() << "\" lacks \"" << fragment << "\"";
}

TEST(DaemonConfigTest, SizesTakeSuffixes) {
  EXPECT_EQ(*ParseSize("4096", "x"), 4096u);
  EXPECT_EQ(*ParseSize("32k", "x"), 32u << 10);
  EXPECT_EQ(*ParseSize("256M", "x"), 256ull << 20);
  EXPECT_EQ(*ParseSize("2g", "x"), 2ull << 30);
  EXPECT_EQ(*ParseSize("1GiB", "x"), 1ull << 30);
  ExpectError(ParseSize("", "network_memory").status(), "network_memory is empty");
  ExpectError(ParseSize("12q", "network_memory").status(), "unknown unit 'q'");
  ExpectError(ParseSize("m", "network_memory").status(), "not a size");
  ExpectError(ParseSize("99999999999999999999", "x").status(), "too large");
  ExpectError(ParseSize("99999999999g", "x").status(), "too large");
}

TEST(DaemonConfigTest, DefaultsAreValid) {
  auto cl = ParseCommandLine({});
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->config.listen, "127.0.0.1");
  EXPECT_EQ(cl->config.segment_size, 32u * 1024);
  EXPECT_EQ(cl->action, CommandLine::Action::kRun);
}

TEST(DaemonConfigTest, TomlSetsEveryKindOfValue) {
  DaemonConfig c;
  ASSERT_TRUE(ApplyToml("network_memory = \"64m\"\nsegment_size = \"16k\"\nport = 0\n"
                        "checksums = true\nbuffer_timeout_ms = -1\nlog_level = \"warn\"\n",
                        "t.toml", &c)
                  .ok());
  EXPECT_EQ(c.network_memory, 64ull << 20);
  EXPECT_EQ(c.segment_size, 16u << 10);
  EXPECT_EQ(c.port, 0);
  EXPECT_TRUE(c.checksums);
  EXPECT_EQ(c.buffer_timeout_ms, -1);
  EXPECT_EQ(c.log_level, "warn");
}

TEST(DaemonConfigTest, UnknownKeyIsNamedWithTheKnownOnes) {
  DaemonConfig c;
  Status st = ApplyToml("netwrok_memory = \"64m\"\n", "site.toml", &c);
  ExpectError(st, "site.toml: unknown key 'netwrok_memory'");
  ExpectError(st, "network_memory");
}

TEST(DaemonConfigTest, SyntaxAndTypeErrorsNameTheSpot) {
  DaemonConfig c;
  ExpectError(ApplyToml("port = \n", "a.toml", &c), "a.toml:1");
  ExpectError(ApplyToml("port = 1.5\n", "a.toml", &c), "unsupported type");
  ExpectError(ApplyToml("port = 70000\n", "a.toml", &c), "out of range");
  ExpectError(ApplyToml("checksums = \"maybe\"\n", "a.toml", &c), "not true or false");
}

TEST(DaemonConfigTest, BadSegmentSizeIsRefusedWithTheFix) {
  ExpectError(ParseCommandLine({"--segment-size", "3000"}).status(),
              "segment_size = 3000 is not a power of two");
  ExpectError(ParseCommandLine({"--segment-size", "2m"}).status(), "not a power of two from 4k");
}

TEST(DaemonConfigTest, TooLittleMemoryNamesTheOptionAndTheAmount) {
  Status st = ParseCommandLine({"--network-memory", "64k"}).status();
  ExpectError(st, "network_memory = 65536 bytes holds 2 segments");
  ExpectError(st, "set network_memory to at least");
}

TEST(DaemonConfigTest, FlagsOverrideTheFileWhereverTheyAppear) {
  const std::string path = ::testing::TempDir() + "/sluiced_override.toml";
  {
    std::ofstream f(path);
    f << "network_memory = \"64m\"\nfloating_per_gate = 4\n";
  }
  auto cl = ParseCommandLine({"--floating-per-gate", "16", "--config", path});
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_EQ(cl->config.network_memory, 64ull << 20);
  EXPECT_EQ(cl->config.floating_per_gate, 16u);
  auto eq = ParseCommandLine({"--config=" + path, "--network-memory=128m", "--checksums"});
  ASSERT_TRUE(eq.ok()) << eq.status().ToString();
  EXPECT_EQ(eq->config.network_memory, 128ull << 20);
  EXPECT_TRUE(eq->config.checksums);
  std::remove(path.c_str());
}

TEST(DaemonConfigTest, CommandLineMistakes) {
  ExpectError(ParseCommandLine({"--no-such-thing", "1"}).status(), "unknown option --no-such-thing");
  ExpectError(ParseCommandLine({"--port"}).status(), "--port needs a value");
  ExpectError(ParseCommandLine({"stray"}).status(), "unexpected argument 'stray'");
  ExpectError(ParseCommandLine({"--config", "/nonexistent/x.toml"}).status(),
              "cannot read the file");
  ExpectError(ParseCommandLine({"--io-threads", "3"}).status(), "--io-threads = 3 is out of range");
  ExpectError(ParseCommandLine({"--log-level", "loud"}).status(), "log_level = 'loud'");
  EXPECT_EQ(ParseCommandLine({"--help"})->action, CommandLine::Action::kHelp);
  EXPECT_EQ(ParseCommandLine({"--version"})->action, CommandLine::Action::kVersion);
}

TEST(DaemonConfigTest, HelpListsEveryOption) {
  const std::string help = HelpText();
  for (const char* flag : {"--listen", "--port", "--port-file", "--network-memory",
                           "--segment-size", "--io-threads", "--buffers-per-channel",
                           "--floating-per-gate", "--buffer-timeout-ms", "--auth-secret-file",
                           "--metrics-file", "--log-level"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace sluice::daemon
