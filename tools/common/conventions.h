// What every Sluice command-line tool shares without CLI11: exit codes, the version and size
// parsing (k/m/g suffixes). tools/common/cli.h adds the CLI11 helpers; a file that needs only
// these includes this header, since CLI11 (header-only in Debian) adds about 8 s to the
// compile of every file that includes it.
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <string>

#include "buffer/status.h"

namespace sluice::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

// The version of every tool of this build.
inline constexpr const char* kVersion = SLUICE_VERSION;  // project(VERSION) in CMakeLists.txt

// "1g" -> 1073741824; "32k", "64m", "100" (bytes), "4KiB". InvalidArgument naming `option`
// when `text` is not a size or does not fit in 64 bits.
Result<uint64_t> ParseSize(const std::string& text, const std::string& option);

}  // namespace sluice::tools
