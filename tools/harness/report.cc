#include "tools/harness/report.h"

#include <cmath>
#include <cstdio>

namespace sluice::harness {
namespace {

std::string Num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

std::string U(uint64_t v) { return std::to_string(v); }

}  // namespace

void Report::AddExtra(const std::string& name, double v) { extra.emplace_back(name, Num(v)); }
void Report::AddExtra(const std::string& name, const std::string& v) {
  extra.emplace_back(name, JsonString(v));
}

std::string ToJson(const Report& r) {
  std::string j = "{";
  auto field = [&](const std::string& name, const std::string& value) {
    if (j.size() > 1) j += ",";
    j += JsonString(name) + ":" + value;
  };
  field("nodes", std::to_string(r.nodes));
  field("producers", std::to_string(r.producers));
  field("consumers", std::to_string(r.consumers));
  field("job", JsonString(r.job));
  field("records_expected", U(r.records_expected));
  field("records_sent", U(r.records_sent));
  field("records_received", U(r.records_received));
  field("bytes_received", U(r.bytes_received));
  field("lost", U(r.lost));
  field("duplicated", U(r.duplicated));
  field("reordered", U(r.reordered));
  field("corrupted", U(r.corrupted));
  field("leaked_segments", U(r.leaked_segments));
  field("seconds", Num(r.seconds));
  field("mib_per_second", Num(r.mib_per_second));
  field("fault", JsonString(r.fault));
  field("expected", JsonString(r.expected));
  field("observed", JsonString(r.observed));
  std::string errors = "[";
  for (size_t i = 0; i < r.errors.size(); ++i) {
    // (Appending in two steps: GCC 12 at -O3 reports a false -Wrestrict on "," + string&&.)
    if (i > 0) errors += ',';
    errors += JsonString(r.errors[i]);
  }
  field("errors", errors + "]");
  field("ok", r.ok ? "true" : "false");
  field("run_dir", JsonString(r.run_dir));
  std::string nodes = "[";
  for (size_t i = 0; i < r.node_reports.size(); ++i) {
    const NodeReport& n = r.node_reports[i];
    nodes += std::string(i ? "," : "") + "{\"index\":" + std::to_string(n.index) +
             ",\"address\":" + JsonString(n.address) + ",\"pid\":" + std::to_string(n.pid) +
             ",\"tasks\":" + JsonString(n.tasks) + ",\"state\":" + JsonString(n.state) +
             ",\"network_memory_bytes\":" + U(n.network_memory_bytes) +
             ",\"leaked_segments\":" +
             (n.leaked_segments < 0 ? "null" : std::to_string(n.leaked_segments)) +
             ",\"peak_rss_bytes\":" + U(n.peak_rss_bytes) + ",\"exit\":" + JsonString(n.exit) +
             "}";
  }
  field("node_details", nodes + "]");
  for (const auto& [name, value] : r.extra) field(name, value);
  return j + "}";
}

std::string SummaryTable(const Report& r) {
  std::string t;
  char line[512];
  std::snprintf(line, sizeof line, "%-4s %-22s %-8s %-14s %-10s %10s %8s %10s  %s\n", "node",
                "address", "pid", "tasks", "state", "net mem", "leaked", "peak RSS", "exit");
  t += line;
  for (const auto& n : r.node_reports) {
    std::snprintf(line, sizeof line, "%-4d %-22s %-8d %-14s %-10s %10s %8s %10s  %s\n", n.index,
                  n.address.c_str(), static_cast<int>(n.pid), n.tasks.c_str(), n.state.c_str(),
                  FormatBytes(n.network_memory_bytes).c_str(),
                  n.leaked_segments < 0 ? "-" : std::to_string(n.leaked_segments).c_str(),
                  FormatBytes(n.peak_rss_bytes).c_str(), n.exit.c_str());
    t += line;
  }
  // The external job's producers are writer processes, its consumers reader processes.
  const bool external = r.job.rfind("external", 0) == 0;
  std::snprintf(line, sizeof line,
                "\njob %s: %d nodes, %d %s, %d %s\n"
                "records sent %llu, received %llu (expected %llu), %s in %.2f s = %.1f MiB/s\n"
                "lost %llu, duplicated %llu, reordered %llu, corrupted %llu, leaked segments %llu\n",
                r.job.c_str(), r.nodes, r.producers, external ? "writers" : "producers",
                r.consumers, external ? "readers" : "consumers",
                static_cast<unsigned long long>(r.records_sent),
                static_cast<unsigned long long>(r.records_received),
                static_cast<unsigned long long>(r.records_expected),
                FormatBytes(r.bytes_received).c_str(), r.seconds, r.mib_per_second,
                static_cast<unsigned long long>(r.lost),
                static_cast<unsigned long long>(r.duplicated),
                static_cast<unsigned long long>(r.reordered),
                static_cast<unsigned long long>(r.corrupted),
                static_cast<unsigned long long>(r.leaked_segments));
  t += line;
  t += "fault: " + r.fault + "\n";
  if (!r.expected.empty()) t += "expected: " + r.expected + "\n";
  if (!r.observed.empty()) t += "observed: " + r.observed + "\n";
  for (const auto& e : r.errors) t += "error: " + e + "\n";
  t += std::string("result: ") + (r.ok ? "OK" : "FAILED") + "\n";
  return t;
}

}  // namespace sluice::harness
