// `sluice get`: one subpartition of an external shuffle job, from one daemon, as lines on
// stdout (client::Reader, one channel to that daemon).
//
//   sluice get --from NODE --job J --subpartition K [--partition P ...] [--daemon ADDR]
//              [--token T | --token-file F] [--state-dir D | --auth-secret-file F]
//
// NODE is the daemon's data address host:port. With --partition, those writers' committed
// output is read (per partition the highest committed attempt on NODE); without it, every
// committed writer's output on NODE. The listing comes from --daemon (default: NODE itself).
// Each record is written followed by a newline, in order per writer, writers in partition
// order. Exit 0 after the end of data; 1 with the reason on stderr on any failure (a writer
// that failed, a daemon that went away, a partition with no committed attempt); 2 bad usage.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "client/ext_messages.h"
#include "client/map_output.h"
#include "tools/sluice/command.h"

namespace sluice::tools::sluice_cli {

struct GetOptions {
  std::string from;    // host:port
  std::string daemon;  // host:port for the listing; empty: `from`
  std::string job;
  uint32_t subpartition = 0;
  std::vector<uint32_t> partitions;  // empty: every committed writer
  uint32_t timeout_ms = 60000;
};

// The map outputs to read from `list`: per wanted partition (all when `partitions` is empty)
// the highest committed attempt. NotFound naming a wanted partition without one.
Result<std::vector<client::MapOutput>> SelectOutputs(const client::ExternalList& list,
                                                     const std::string& node,
                                                     const std::string& job,
                                                     const std::vector<uint32_t>& partitions);

// Lists, reads and writes the lines to `out`. Returns the exit code.
int RunGet(const GetOptions& o, const CommonFlags& common, std::FILE* out);

Command AddGet(CLI::App& app, CommonFlags& common);

}  // namespace sluice::tools::sluice_cli
