// `sluice put`: lines from stdin into one map output of an external shuffle job, through the
// sluiced on this host (client::Writer over its local socket).
//
//   sluice put [--daemon SOCKET | --state-dir D] --job J --partition P [--attempt N]
//              --subpartitions N [--key-field K [--delimiter D] | --round-robin]
//              [--mode blocking|pipelined] [--credit N] [--token T | --token-file F]
//
// A line (without its newline) is one record. It goes to subpartition FNV-1a(field K) % N,
// fields split at the delimiter (default a tab, K counted from 1; a line with fewer fields
// hashes the empty string), or round robin (the default). At the end of input the map output
// is committed and its MapOutput (client/map_output.h) printed on stdout; on any failure
// nothing is committed, the reason goes to stderr and the exit status is 1 (2: bad usage).
// The job's token is --token, --token-file, or <state_dir>/jobs/<job>.token, which the first
// put of a job creates (mode 0600) when it does not exist.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "buffer/status.h"
#include "tools/sluice/command.h"

namespace sluice::tools::sluice_cli {

struct PutOptions {
  std::string daemon;  // the local socket; empty: <state_dir>/sluiced-<port>.sock
  std::string job;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  uint32_t key_field = 0;  // 1-based; 0: round robin
  std::string delimiter = "\t";
  bool round_robin = false;
  std::string mode = "pipelined";
  uint32_t credit = 0;  // 0: the daemon's writer_credit
  uint32_t retention_s = 0;  // 0: the daemon's retention
};

// FNV-1a, 64 bits: stable across builds and platforms (std::hash is not).
uint64_t Fnv1a(std::string_view bytes);
// The subpartition of `line` under `o` (round robin uses and advances *next).
uint32_t RouteLine(const PutOptions& o, std::string_view line, uint64_t* next);

// Reads `in` to the end and commits; prints the MapOutput on `out`. Returns the exit code.
int RunPut(const PutOptions& o, const CommonFlags& common, std::FILE* in, std::FILE* out);

Command AddPut(CLI::App& app, CommonFlags& common);

}  // namespace sluice::tools::sluice_cli
