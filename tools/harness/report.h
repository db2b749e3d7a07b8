// Report: the outcome of one harness run, printed as a summary table (stderr) and as exactly
// one JSON object (--json, stdout). Value type.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tools/common/report_util.h"

namespace sluice::harness {

struct NodeReport {
  int index = 0;
  std::string address;
  pid_t pid = -1;
  std::string tasks;  // e.g. "P0 C0"
  std::string state;  // the main job's final state on this node, or "killed"
  uint64_t network_memory_bytes = 0;
  int64_t leaked_segments = -1;  // -1: not checked (node gone)
  uint64_t peak_rss_bytes = 0;   // VmHWM
  std::string exit;              // how the process ended ("exit 0", "signal 9 (Killed)")
};

struct Report {
  int nodes = 0;
  int producers = 0;
  int consumers = 0;
  std::string job;
  uint64_t records_expected = 0;  // 0 when unknown (file jobs)
  uint64_t records_sent = 0;
  uint64_t records_received = 0;
  uint64_t bytes_received = 0;
  uint64_t lost = 0;
  uint64_t duplicated = 0;
  uint64_t reordered = 0;
  uint64_t corrupted = 0;
  uint64_t leaked_segments = 0;
  double seconds = 0;
  double mib_per_second = 0;
  std::string fault = "none";
  std::string expected;  // the fault's expected outcome, in words
  std::string observed;  // what happened, in words
  std::vector<std::string> errors;
  bool ok = false;
  bool usage_error = false;  // the options were refused (by the harness or a daemon): exit 2
  std::string run_dir;
  std::vector<NodeReport> node_reports;
  // Extra fields: name and an already-encoded JSON value.
  std::vector<std::pair<std::string, std::string>> extra;

  void AddExtra(const std::string& name, double v);
  void AddExtra(const std::string& name, const std::string& v);
};

// Shared with sluice-bench (tools/common/report_util.h).
using tools::FormatBytes;
using tools::JsonString;
std::string ToJson(const Report& r);
std::string SummaryTable(const Report& r);

}  // namespace sluice::harness
