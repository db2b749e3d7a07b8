// What every Sluice command-line tool shares: exit codes, the version, size parsing (k/m/g
// suffixes) and CLI11 helpers, so that sluiced, sluicectl, sluice-harness, sluice-bench and
// sluice-demo speak one convention:
//   - `--help` and `--version` everywhere; `--flag value` and `--flag=value` both work;
//   - sizes take k/m/g (powers of 1024), e.g. 64k, 256m, 1g;
//   - exit 0 for success, 1 for a run that failed, 2 for a usage or configuration error, with
//     one line on stderr naming the flag and what would be accepted.
// The exit codes, the version and ParseSize are in tools/common/conventions.h (included here).
// Thread-safe (pure functions).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "buffer/status.h"
#include "tools/common/conventions.h"

namespace sluice::tools {

// A CLI11 validator and transform for size flags: accepts what ParseSize accepts and rewrites
// the value to its byte count, so the option's variable (any unsigned integer type) receives
// bytes; a value that does not parse or overflows that type is a usage error naming the flag.
CLI::Validator SizeValue();

// Adds `--version` (prints "<tool> <kVersion>" and exits 0) to `app`.
void AddVersionFlag(CLI::App& app, std::string_view tool);

// Parses argv with CLI11. Returns -1 when the program should go on, or the exit code to return
// now: 0 after --help or --version (printed to stdout), kExitUsage after a usage error (one
// line on stderr: "<tool>: <what is wrong>; see --help").
int ParseOrExit(CLI::App& app, int argc, const char* const* argv);

}  // namespace sluice::tools
