// tools/common: sizes, the CLI11 conventions every tool shares, whole-buffer fd I/O.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "tools/common/cli.h"
#include "tools/common/fd_io.h"
#include "tools/common/report_util.h"

namespace sluice::tools {
namespace {

TEST(ParseSizeTest, TakesBytesAndKmgSuffixes) {
  EXPECT_EQ(*ParseSize("100", "--x"), 100u);
  EXPECT_EQ(*ParseSize("64k", "--x"), 64u << 10);
  EXPECT_EQ(*ParseSize("32KiB", "--x"), 32u << 10);
  EXPECT_EQ(*ParseSize("256m", "--x"), 256u << 20);
  EXPECT_EQ(*ParseSize("1g", "--x"), 1ull << 30);
}

TEST(ParseSizeTest, RefusesWhatIsNotASizeNamingTheOption) {
  for (const char* bad : {"", "abc", "12q", "k", "99999999999999999999", "17179869184g"}) {
    auto r = ParseSize(bad, "--network-memory");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--network-memory"), std::string::npos) << bad;
  }
}

// Runs `app` on `args` (without the program name) the way a tool's main does.
int ParseArgs(CLI::App& app, std::vector<std::string> args) {
  std::vector<const char*> argv{"tool"};
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseOrExit(app, static_cast<int>(argv.size()), argv.data());
}

TEST(CliTest, SizeFlagsTakeBothSpellingsAndSuffixes) {
  CLI::App app("test", "tool");
  uint64_t size = 0;
  uint32_t small = 0;
  app.add_option("--size", size)->transform(SizeValue());
  app.add_option("--small", small)->transform(SizeValue());
  EXPECT_EQ(ParseArgs(app, {"--size=64k", "--small", "4k"}), -1);
  EXPECT_EQ(size, 64u << 10);
  EXPECT_EQ(small, 4u << 10);
}

TEST(CliTest, AValueThatDoesNotParseIsAUsageErrorNamingTheFlag) {
  CLI::App app("test", "tool");
  uint64_t size = 0;
  int32_t count = 0;
  app.add_option("--size", size)->transform(SizeValue());
  app.add_option("--records", count);
  testing::internal::CaptureStderr();
  EXPECT_EQ(ParseArgs(app, {"--size", "lots"}), kExitUsage);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--size"), std::string::npos) << err;
  CLI::App app2("test", "tool");
  app2.add_option("--records", count);
  testing::internal::CaptureStderr();
  EXPECT_EQ(ParseArgs(app2, {"--records", "abc"}), kExitUsage);
  err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--records"), std::string::npos) << err;
  CLI::App app3("test", "tool");
  testing::internal::CaptureStderr();
  EXPECT_EQ(ParseArgs(app3, {"--no-such-flag"}), kExitUsage);
  err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--no-such-flag"), std::string::npos) << err;
}

TEST(CliTest, VersionAndHelpExitZero) {
  CLI::App app("test", "tool");
  AddVersionFlag(app, "tool");
  testing::internal::CaptureStdout();
  EXPECT_EQ(ParseArgs(app, {"--version"}), kExitOk);
  EXPECT_EQ(testing::internal::GetCapturedStdout(), std::string("tool ") + kVersion + "\n");
  CLI::App help("a tool that tests", "tool");
  testing::internal::CaptureStdout();
  EXPECT_EQ(ParseArgs(help, {"--help"}), kExitOk);
  EXPECT_NE(testing::internal::GetCapturedStdout().find("a tool that tests"), std::string::npos);
}

TEST(FdIoTest, WholeBuffersCrossAPipeAndEndOfStreamIsReported) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::vector<uint8_t> out(100000);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(i * 7);
  std::vector<uint8_t> in(out.size());
  bool read_ok = false;
  std::thread reader([&] { read_ok = ReadAll(fds[0], in.data(), in.size()); });
  EXPECT_TRUE(WriteAll(fds[1], out.data(), out.size()));
  reader.join();
  EXPECT_TRUE(read_ok);
  EXPECT_EQ(in, out);
  ::close(fds[1]);
  uint8_t more[4];
  size_t got = 99;
  EXPECT_FALSE(ReadAll(fds[0], more, sizeof(more), &got));
  EXPECT_EQ(got, 0u);
  ::close(fds[0]);
}

TEST(ReportUtilTest, FormatsSizesRatesAndMedians) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(64ull << 20), "64.0 MiB");
  EXPECT_EQ(FormatBytes(2ull << 30), "2.00 GiB");
  EXPECT_EQ(FormatFixed(3.14159, 2), "3.14");
  EXPECT_DOUBLE_EQ(MiBPerSecond(10ull << 20, 2.0), 5.0);
  EXPECT_DOUBLE_EQ(MiBPerSecond(10ull << 20, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(Median({}), 0.0);
  EXPECT_DOUBLE_EQ(Median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_DOUBLE_EQ(Median({4.0, 1.0, 3.0, 2.0}), 3.0);  // the upper one of an even count
  EXPECT_EQ(JsonString("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
}

}  // namespace
}  // namespace sluice::tools
