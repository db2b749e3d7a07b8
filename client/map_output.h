// MapOutput: the small descriptor of one committed map output (one writer's partition attempt)
// held by an external shuffle daemon. Writer::Commit returns it; Reader::OpenSubpartition takes
// a list of them, groups them by node and reads exactly the (partition, attempt) pairs named.
//
// The encoding is a single printable line an engine can pass through its scheduler:
//   "v1;<node>;<job>;<partition>;<attempt>;<subpartitions>;<bytes>;<records>"
// with node and job percent-escaped (';', '%' and bytes outside 0x21..0x7e become %XX).
//
// Value type, thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/buffer/status.h"

namespace sluice::client {

struct MapOutput {
  std::string node;  // the daemon's data address "host:port"
  std::string job;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  uint64_t bytes = 0;    // bytes committed as stored: records with their 4-byte length prefixes
                         // (all subpartitions; WriterStats::bytes counts records alone)
  uint64_t records = 0;  // records committed (all subpartitions)

  bool operator==(const MapOutput&) const = default;
};

// A single line; see the header comment. Never fails.
std::string EncodeMapOutput(const MapOutput& output);
// Parses EncodeMapOutput's text. InvalidArgument naming the field for anything else (wrong
// version, missing or extra fields, a number out of range, an empty node or job, bad escape).
Result<MapOutput> DecodeMapOutput(std::string_view text);

}  // namespace sluice::client
