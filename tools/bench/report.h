// sluice-bench's output: the iperf3-style summary, the --json object, and for --sweep a table
// and an SVG chart (throughput against the swept value, the baselines as lines).
// Thread-compatible (free functions).
#pragma once

#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/bench/bench_flags.h"
#include "tools/bench/data_path.h"
#include "tools/bench/raw_latency.h"

namespace sluice::bench {

// One configuration measured: the median round of the data path and the median baselines
// (0 when --baselines off).
struct Measurement {
  BenchFlags flags;
  RunResult run;
  double pump_mib_per_second = 0;
  double memcpy_mib_per_second = 0;
  // --latency: the raw one-way TCP floor at the same rate and record size (medians of rounds).
  LatencyResult raw_latency;
  int rounds = 0;

  double RatioToPump() const;
  double RatioToMemcpy() const;
};

void PrintSummary(const Measurement& m);
std::string ToJson(const Measurement& m);

struct SweepPoint {
  std::string value;
  Measurement measurement;
};
void PrintSweepTable(const std::string& name, const std::vector<SweepPoint>& points);
// Writes a self-contained SVG line chart to `path`.
Status WriteSweepSvg(const std::string& path, const std::string& name,
                     const std::vector<SweepPoint>& points);

}  // namespace sluice::bench
