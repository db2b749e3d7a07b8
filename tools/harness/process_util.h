// Small process and file helpers for sluice-harness: running a command (ip, tc, nft), reading
// /proc, temp directories. Thread-compatible free functions.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "buffer/status.h"

namespace sluice::harness {

// Runs argv[0] (searched in PATH) with argv, waits, and returns its exit code (or 128+signal).
// Its stdout and stderr are captured into *output when given, else discarded.
int RunCommand(const std::vector<std::string>& argv, std::string* output = nullptr);

// Like RunCommand, but a non-zero exit becomes an error naming the command and its output.
Status RunChecked(const std::vector<std::string>& argv);

Result<std::string> ReadWholeFile(const std::string& path);
Status WriteWholeFile(const std::string& path, const std::string& text, int mode = 0644);

// Peak resident set (VmHWM) of a live process, in bytes; nullopt when it is gone.
std::optional<uint64_t> ReadPeakRss(pid_t pid);

// mkdtemp under $TMPDIR (or /tmp), "sluice-harness-XXXXXX".
Result<std::string> MakeRunDir();
void RemoveTree(const std::string& dir);

// Directory of this executable, from /proc/self/exe.
std::string SelfDir();
// The sluiced this harness runs when --sluiced is not given: next to this executable (an
// install tree's bin/), then ../daemon/sluiced (the build tree), then the first sluiced on
// PATH. When none is executable, the path next to this executable (the error names it).
std::string FindSluiced();

// 2 * n random bytes from /dev/urandom as hex.
std::string RandomHex(size_t n);

}  // namespace sluice::harness
