// The external shuffle job's tasks (issue 13): a map task that writes generated, verifiable
// records through its host's sluiced with sluice::client::Writer, and a reduce task that reads
// one subpartition from every daemon with sluice::client::Reader and verifies them. The
// harness runs each task as a separate process: itself, re-executed as
//   sluice-harness --ext-task write|read --flag value ...
// (ExtTaskMain). Tasks report on stdout, one "key values..." line each (ParseTaskOutput).
//
// Record layout (little-endian), kRecordHeader bytes then the payload:
//   magic u32 | partition u32 | attempt u32 | subpartition u32 | seq u64 | payload u32 |
//   crc32c u32 of the 28 bytes before it and the payload
// seq counts the writer's records of one subpartition from 0, so a reader checks exactly once
// and in order per (partition, attempt, subpartition).
//
// Thread-compatible free functions.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace sluice::harness {

inline constexpr uint32_t kRecordMagic = 0x58455453;  // "STEX"
inline constexpr uint32_t kRecordHeader = 32;

// The first argument that makes sluice-harness a task.
inline constexpr const char* kExtTaskFlag = "--ext-task";

// argv[0] is the task ("write" or "read"); the rest are its flags. Returns the exit code: 0
// done, 1 failed (an "error <status>" line on stdout), 2 bad flags.
int ExtTaskMain(int argc, char** argv);

// What a reader saw of one map output (partition, attempt) in its subpartition.
struct ReadTally {
  uint64_t records = 0;
  uint64_t bytes = 0;  // record bytes, headers included
};
struct ReadChecks {
  uint64_t duplicated = 0;  // a seq at or below one already read
  uint64_t reordered = 0;   // a seq past the next expected one
  uint64_t corrupted = 0;   // bad magic, length, CRC, or another subpartition's record
};

// Writes one record of `size` >= kRecordHeader bytes into `out`.
void FillRecord(std::span<uint8_t> out, uint32_t partition, uint32_t attempt,
                uint32_t subpartition, uint64_t seq, uint64_t seed);
// Checks one record read from `subpartition`; updates the tallies (keyed partition << 32 |
// attempt) and checks. `next_seq` holds the next expected seq per key.
void CheckRecord(std::span<const uint8_t> record, uint32_t subpartition,
                 std::map<uint64_t, ReadTally>* tallies, std::map<uint64_t, uint64_t>* next_seq,
                 ReadChecks* checks);

// A task's stdout: its "key values..." lines, by key (the last line of a key wins;
// "output" lines, one per map output, are kept in order under "output").
std::multimap<std::string, std::string> ParseTaskOutput(const std::string& text);

}  // namespace sluice::harness
