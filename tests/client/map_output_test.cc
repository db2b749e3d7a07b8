#include "client/map_output.h"

#include <gtest/gtest.h>

namespace sluice::client {
namespace {

TEST(MapOutputTest, RoundTripsEveryField) {
  MapOutput o{"10.0.0.7:7100", "job;with%odd chars\n", 12, 3, 64, uint64_t{1} << 40, 99};
  const std::string text = EncodeMapOutput(o);
  EXPECT_EQ(text.find('\n'), std::string::npos);
  EXPECT_EQ(text, "v1;10.0.0.7:7100;job%3Bwith%25odd%20chars%0A;12;3;64;1099511627776;99");
  auto back = DecodeMapOutput(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, o);
}

TEST(MapOutputTest, RefusesMalformedText) {
  struct Case {
    const char* text;
    const char* fragment;
  } cases[] = {
      {"", "expected 8"},
      {"v2;n:1;j;1;0;4;0;0", "unknown version 'v2'"},
      {"v1;n:1;j;1;0;4;0", "expected 8"},
      {"v1;n:1;j;1;0;4;0;0;9", "expected 8"},
      {"v1;n:1;j;-1;0;4;0;0", "partition '-1'"},
      {"v1;n:1;j;1;4294967296;4;0;0", "attempt '4294967296'"},
      {"v1;n:1;j;1;0;4x;0;0", "subpartitions '4x'"},
      {"v1;n:1;j;1;0;4;;0", "bytes ''"},
      {"v1;;j;1;0;4;0;0", "empty node or job"},
      {"v1;n:1;j%4;1;0;4;0;0", "bad %-escape in job"},
      {"v1;n%zz1;j;1;0;4;0;0", "bad %-escape in node"},
  };
  for (const Case& c : cases) {
    auto r = DecodeMapOutput(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(r.status().message().find(c.fragment), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
}

}  // namespace
}  // namespace sluice::client
