#include "tools/daemon/daemon_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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

// Issue 12: sluiced parses with CLI11 like every other tool.
TEST(DaemonConfigTest, FlagEqualsValueAndFlagSpaceValueAreTheSame) {
  auto eq = ParseCommandLine({"--port=7071"});
  auto sp = ParseCommandLine({"--port", "7071"});
  ASSERT_TRUE(eq.ok()) << eq.status().ToString();
  ASSERT_TRUE(sp.ok()) << sp.status().ToString();
  EXPECT_EQ(eq->config.port, 7071);
  EXPECT_EQ(eq->config, sp->config);
  EXPECT_EQ(ParseCommandLine({"--buffer-timeout-ms", "-1"})->config.buffer_timeout_ms, -1);
  EXPECT_EQ(ParseCommandLine({"--port=1", "--port=2"})->config.port, 2) << "the last one wins";
}

TEST(DaemonConfigTest, UnknownFlagIsNamed) {
  auto r = ParseCommandLine({"--port", "0", "--no-such-flag=3"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "unknown option --no-such-flag (see --help)");
}

TEST(DaemonConfigTest, SizeThatDoesNotParseNamesTheFlagAndTheUnits) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--network-memory=12q"}, {"--network-memory", "12q"}}) {
    auto r = ParseCommandLine(args);
    ASSERT_FALSE(r.ok()) << args.size();
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), "--network-memory = '12q': unknown unit 'q' (use k, m or g)");
  }
  ExpectError(ParseCommandLine({"--port", "abc"}).status(), "--port = 'abc' is not a whole number");
  EXPECT_EQ(ParseCommandLine({"--network-memory", "1g"})->config.network_memory, 1ull << 30);
}

TEST(DaemonConfigTest, VersionAndHelpWinOverEverythingElse) {
  auto v = ParseCommandLine({"--port", "0", "--version"});
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->action, CommandLine::Action::kVersion);
  auto h = ParseCommandLine({"-h"});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->action, CommandLine::Action::kHelp);
}

TEST(DaemonConfigTest, BooleanFlagsTakeAnOptionalValue) {
  auto bare = ParseCommandLine({"--checksums", "--preallocate", "--enable-fault-injection"});
  ASSERT_TRUE(bare.ok()) << bare.status().ToString();
  EXPECT_TRUE(bare->config.checksums);
  EXPECT_TRUE(bare->config.preallocate);
  EXPECT_TRUE(bare->config.enable_fault_injection);
  EXPECT_FALSE(ParseCommandLine({"--checksums=false"})->config.checksums);
  EXPECT_FALSE(ParseCommandLine({"--checksums", "off"})->config.checksums);
  ExpectError(ParseCommandLine({"--checksums=maybe"}).status(),
              "--checksums = 'maybe' is not true or false");
}

TEST(DaemonConfigTest, FlagOverridesTheFileWhicheverComesFirst) {
  const std::string path = ::testing::TempDir() + "/sluiced_flag_over_file.toml";
  {
    std::ofstream f(path);
    f << "port = 7001\nchecksums = true\nlog_level = \"warn\"\n";
  }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--config", path, "--port=7002", "--checksums=false"},
           {"--port", "7002", "--checksums", "false", "--config=" + path}}) {
    auto cl = ParseCommandLine(args);
    ASSERT_TRUE(cl.ok()) << cl.status().ToString();
    EXPECT_EQ(cl->config.port, 7002) << "the flag, not the file";
    EXPECT_FALSE(cl->config.checksums);
    EXPECT_EQ(cl->config.log_level, "warn") << "the file, where no flag says otherwise";
  }
  std::remove(path.c_str());
  ExpectError(ParseCommandLine({"--config"}).status(), "--config needs a value");
}

TEST(DaemonConfigTest, HelpListsEveryOption) {
  // Every key the config file accepts (the parser lists them when it meets an unknown one) is
  // a flag that --help describes.
  const std::string path = ::testing::TempDir() + "/sluiced_unknown_key.toml";
  {
    std::ofstream f(path);
    f << "no_such_key = 1\n";
  }
  const Status st = ParseCommandLine({"--config", path}).status();
  std::filesystem::remove(path);
  const std::string marker = "known keys: ";
  const size_t at = st.message().find(marker);
  ASSERT_NE(at, std::string::npos) << st.ToString();
  std::vector<std::string> keys;
  std::stringstream list(st.message().substr(at + marker.size()));
  for (std::string key; std::getline(list, key, ',');) {
    key.erase(0, key.find_first_not_of(' '));
    keys.push_back(key);
  }
  EXPECT_GT(keys.size(), 30u) << st.message();
  const std::string help = HelpText();
  for (std::string key : keys) {
    std::replace(key.begin(), key.end(), '_', '-');
    EXPECT_NE(help.find("--" + key), std::string::npos) << "--help lacks --" << key;
  }
}

TEST(DaemonConfigTest, AuthIsAlwaysOn) {
  EXPECT_EQ(ParseCommandLine({})->config.auth, "on");
  EXPECT_TRUE(ParseCommandLine({"--auth", "on"}).ok()) << "an old config's auth = on still loads";
  EXPECT_TRUE(ParseCommandLine({"--listen", "0.0.0.0"}).ok()) << "with a secret: fine";
  for (const char* listen : {"127.0.0.1", "::1", "0.0.0.0", "example.org"}) {
    auto r = ParseCommandLine({"--auth", "off", "--listen", listen});
    ASSERT_FALSE(r.ok()) << listen;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    ExpectError(r.status(), "auth = off is not supported");
    ExpectError(r.status(), "--auth-secret-file");
  }
  ExpectError(ParseCommandLine({"--auth", "maybe"}).status(), "auth = 'maybe' is not on");
}

TEST(DaemonConfigTest, AnEmptyStateDirIsRefusedNamingTheDefault) {
  // It would put the secret, the metrics token, the local socket and the spill root in / or the
  // working directory ("/spill", "auth_secret").
  EXPECT_EQ(ParseCommandLine({})->config.state_dir, "/var/lib/sluice");
  auto r = ParseCommandLine({"--state-dir", ""});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  ExpectError(r.status(), "state_dir is empty");
  ExpectError(r.status(), "--state-dir /var/lib/sluice");
  EXPECT_TRUE(ParseCommandLine({"--state-dir", "."}).ok()) << "a relative directory is the "
                                                               "operator's choice";
}

TEST(DaemonConfigTest, AllowedPeersParseAndMatchIpv4AndIpv6) {
  auto nets = ParseAllowedPeers("10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1/128");
  ASSERT_TRUE(nets.ok()) << nets.status().ToString();
  ASSERT_EQ(nets->size(), 4u);
  auto allowed = [&](const std::string& host) {
    auto r = AddressAllowed(*nets, host);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() && *r;
  };
  EXPECT_TRUE(allowed("10.255.0.1"));
  EXPECT_FALSE(allowed("11.0.0.1"));
  EXPECT_TRUE(allowed("192.168.1.7"));
  EXPECT_FALSE(allowed("192.168.1.8"));
  EXPECT_TRUE(allowed("fd12:3456::1"));
  EXPECT_TRUE(allowed("[::1]"));
  EXPECT_FALSE(allowed("::2"));
  EXPECT_FALSE(allowed("127.0.0.1")) << "not in this list";
  auto name = AddressAllowed(*nets, "db.example.org");
  ASSERT_FALSE(name.ok());
  ExpectError(name.status(), "not a literal IPv4 or IPv6 address");
  // Odd prefixes: /12 keeps 4 bits of the second byte.
  auto odd = ParseAllowedPeers("172.16.0.0/12");
  ASSERT_TRUE(odd.ok());
  EXPECT_TRUE(*AddressAllowed(*odd, "172.31.255.255"));
  EXPECT_FALSE(*AddressAllowed(*odd, "172.32.0.0"));
  // The default: loopback only.
  auto def = ParseAllowedPeers(DaemonConfig().allowed_peers);
  ASSERT_TRUE(def.ok());
  EXPECT_TRUE(*AddressAllowed(*def, "127.3.2.1"));
  EXPECT_TRUE(*AddressAllowed(*def, "::1"));
  EXPECT_FALSE(*AddressAllowed(*def, "10.0.0.1"));
  ExpectError(ParseAllowedPeers("10.0.0.0/33").status(), "allowed_peers entry '10.0.0.0/33'");
  ExpectError(ParseAllowedPeers("fd00::/129").status(), "0..128");
  ExpectError(ParseAllowedPeers("lan").status(), "is not an IPv4 or IPv6 address");
  ExpectError(ParseCommandLine({"--allowed-peers", "10.0.0.0/x"}).status(), "allowed_peers");
}

TEST(DaemonConfigTest, SecurityOptionsAreInTheHelp) {
  const std::string help = HelpText();
  for (const char* flag : {"--state-dir", "--auth ", "--enable-fault-injection",
                           "--allowed-peers", "--input-dir", "--output-dir", "--max-line-bytes",
                           "--job-memory"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
  EXPECT_EQ(ParseCommandLine({"--job-memory", "8m"})->config.job_memory, 8ull << 20);
  EXPECT_EQ(DaemonConfig().job_memory, 64ull << 20);
}

// sluiced serves metrics on 127.0.0.1:9470 unless told otherwise; only that implicit default may
// be taken by another daemon without failing the start. "" turns it off.
TEST(DaemonConfigTest, MetricsListenDefaultsOnTheCommandLineOnly) {
  EXPECT_EQ(DaemonConfig().metrics_listen, "");
  auto def = ParseCommandLine({});
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(def->config.metrics_listen, "127.0.0.1:9470");
  EXPECT_TRUE(def->config.metrics_listen_optional);
  auto given = ParseCommandLine({"--metrics-listen=127.0.0.1:0"});
  ASSERT_TRUE(given.ok());
  EXPECT_EQ(given->config.metrics_listen, "127.0.0.1:0");
  EXPECT_FALSE(given->config.metrics_listen_optional);
  auto off = ParseCommandLine({"--metrics-listen", ""});
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->config.metrics_listen, "");
  DaemonConfig c;
  ASSERT_TRUE(ApplyToml("metrics_listen = \"[::1]:9999\"\n", "t.toml", &c).ok());
  EXPECT_EQ(c.metrics_listen, "[::1]:9999");
}

// Only log_level, metrics_interval_ms, allowed_peers, job_memory and max_line_bytes are what
// SIGHUP reloads; any other change needs a restart.
TEST(DaemonConfigTest, ReloadableOptions) {
  DaemonConfig a;
  DaemonConfig b = a;
  b.log_level = "debug";
  b.metrics_interval_ms = 100;
  b.allowed_peers = "10.0.0.0/8";
  b.job_memory = 1;
  b.max_line_bytes = 2;
  EXPECT_TRUE(DiffersOnlyInReloadable(a, b));
  b.network_memory *= 2;
  EXPECT_FALSE(DiffersOnlyInReloadable(a, b));
  EXPECT_NE(HelpText().find("SIGHUP reopens log_file"), std::string::npos);
}

// Wide gates (issue 14): the keys, their range, and --flag spelling.
TEST(DaemonConfigTest, WideGateKeys) {
  DaemonConfig c;
  EXPECT_EQ(c.wide_threshold, 1024u);
  EXPECT_EQ(c.wide_gate_buffers, 512u);
  ASSERT_TRUE(ApplyToml("wide_threshold = 0\nwide_gate_buffers = 64\n", "w.toml", &c).ok());
  EXPECT_EQ(c.wide_threshold, 0u);
  EXPECT_EQ(c.wide_gate_buffers, 64u);
  ExpectError(ApplyToml("wide_gate_buffers = 0\n", "w.toml", &c), "wide_gate_buffers");
}

// Buffer debloating: debloat = on|off (file and flag) and its target; off by default.
TEST(DaemonConfigTest, DebloatOnOffAndTarget) {
  DaemonConfig c;
  EXPECT_FALSE(c.debloat);
  EXPECT_EQ(c.debloat_target_ms, 1000u);
  ASSERT_TRUE(ApplyToml("debloat = \"on\"\ndebloat_target_ms = 50\n", "t.toml", &c).ok());
  EXPECT_TRUE(c.debloat);
  EXPECT_EQ(c.debloat_target_ms, 50u);
  ExpectError(ApplyToml("debloat = \"sometimes\"\n", "t.toml", &c), "debloat");
  ExpectError(ApplyToml("debloat_target_ms = 0\n", "t.toml", &c), "debloat_target_ms");
  auto cl = ParseCommandLine({"--debloat=off", "--debloat-target-ms", "20"});
  ASSERT_TRUE(cl.ok()) << cl.status().ToString();
  EXPECT_FALSE(cl->config.debloat);
  EXPECT_EQ(cl->config.debloat_target_ms, 20u);
}

// External shuffle, local writers (issue 13, extwrite): the keys parse from TOML and flags,
// and a default credit above the maximum is refused naming both.
TEST(DaemonConfigTest, LocalWriterOptions) {
  DaemonConfig c;
  EXPECT_EQ(c.local_socket, "");
  EXPECT_EQ(c.writer_credit, 16u);
  EXPECT_EQ(c.writer_max_credit, 64u);
  ASSERT_TRUE(ApplyToml("local_socket = \"/run/sluice/w.sock\"\nlocal_socket_any_uid = true\n"
                        "writer_credit = 16\nwriter_max_credit = 128\n",
                        "w.toml", &c)
                  .ok());
  EXPECT_EQ(c.local_socket, "/run/sluice/w.sock");
  EXPECT_TRUE(c.local_socket_any_uid);
  EXPECT_EQ(c.writer_credit, 16u);
  EXPECT_EQ(c.writer_max_credit, 128u);
  EXPECT_TRUE(Validate(c).ok());
  auto cl = ParseCommandLine({"--writer-credit", "32", "--writer-max-credit", "16"});
  ASSERT_FALSE(cl.ok());  // the command line is validated as a whole
  const Status st = cl.status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("writer_credit = 32 is above writer_max_credit = 16"),
            std::string::npos)
      << st.message();
  EXPECT_FALSE(ApplyToml("writer_credit = 0\n", "w.toml", &c).ok());
}

// A store budget option: its default, a TOML value, and 0 refused on the command line, naming
// the flag.
void ExpectStoreBudget(uint32_t DaemonConfig::*field, const std::string& key,
                       uint32_t default_value) {
  DaemonConfig c;
  EXPECT_EQ(c.*field, default_value);
  ASSERT_TRUE(ApplyToml(key + " = 100000\n", "s.toml", &c).ok());
  EXPECT_EQ(c.*field, 100000u);
  std::string flag = key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  auto cl = ParseCommandLine({"--" + flag, "0"});
  ASSERT_FALSE(cl.ok());
  EXPECT_NE(cl.status().message().find(flag), std::string::npos) << cl.status().message();
}

TEST(DaemonConfigTest, StoreMaxSubpartitions) {
  ExpectStoreBudget(&DaemonConfig::store_max_subpartitions, "store_max_subpartitions", 1048576u);
}

TEST(DaemonConfigTest, StoreMaxReadSetEntries) {
  ExpectStoreBudget(&DaemonConfig::store_max_read_set_entries, "store_max_read_set_entries",
                    2097152u);
}

}  // namespace
}  // namespace sluice::daemon
