// Helpers for the shuffle tests: sequence-stamped records and their verification.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/crc32c.h"
#include "testutil/records.h"

namespace sluice::shuffle::testing {

// The shared secret networking tests run with (authentication is on by default).
inline constexpr std::string_view kTestSecret = "sluice-test-secret-0123456789abcdef";
inline auth::AuthConfig TestAuth() { return auth::AuthConfig{std::string(kTestSecret), false}; }

// Stamped, CRC-checked records (testutil/records.h).
using ::sluice::testutil::stamped::MakeRecord;
using ::sluice::testutil::stamped::ParsedRecord;
using ::sluice::testutil::stamped::ParseRecord;

}  // namespace sluice::shuffle::testing
