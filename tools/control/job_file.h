// Job files: a JobSpec written as TOML, for `sluicectl submit` and `sluicectl plan`.
//
// The keys are JobSpec's field names (tools/control/job_spec.h):
//   job_id = "wordcount-1"                 # optional: generated when absent
//   kind = "file-partition"                # "generated" | "file-partition"
//   nodes = ["10.0.0.1:7070", "10.0.0.2:7070"]
//   producer_nodes = [0, 1]                # producer i runs on nodes[producer_nodes[i]]
//   consumer_nodes = [0, 1]
//   pattern = "all-to-all"                 # | "pointwise"
//   input_files = ["in-0.csv", "in-1.csv"] # relative to each node's --input-dir
//   key_field = 0
//   delimiter = ","
//   output_dir = "out"                     # relative to each node's --output-dir
//   records_per_producer = 1000000         # generated jobs
//   record_size_min = 100
//   record_size_max = 100
//   keys = "uniform"                       # | "zipf"; zipf_s = 1.1; key_count = 1048576
//   partitioner = "key-hash"               # | "round-robin"
//   seed = 1
//   checksums = false
//   timeout_ms = 600000
//   throttled_consumer = -1; throttle_mib_per_second = 0.0
// An unknown key, a value of the wrong type or one out of its field's range is refused naming
// the key and the file. `token` is never read from a file: the submitter makes one.
// Thread-safe (pure functions).
#pragma once

#include <string>

#include "buffer/status.h"
#include "tools/control/job_spec.h"

namespace sluice::control {

// The most entries an array key (nodes, producer_nodes, consumer_nodes, input_files) may hold.
inline constexpr size_t kMaxJobFileArray = 4096;
// The largest job file read.
inline constexpr size_t kMaxJobFileBytes = 1u << 20;

// Parses TOML `text`; `origin` (the file name) is named in every error (InvalidArgument).
// job_id stays empty when the file has none.
Result<JobSpec> ParseJobFile(const std::string& text, const std::string& origin);
// Reads and parses the file at `path` (NotFound/IoError naming it when it cannot be read).
Result<JobSpec> LoadJobFile(const std::string& path);

// A job id for a job file without one: "job-<UTC yyyymmdd-hhmmss>-<6 hex>".
std::string MakeJobId();

}  // namespace sluice::control
