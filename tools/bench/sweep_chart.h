// sluice-bench --sweep NAME=v1,... --series OTHER=a,b: every sweep value measured once per
// series value (e.g. network memory x redistribution policy), a table with each series' ratio
// to the first, and an SVG chart with one line per series. Thread-compatible (free functions).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/bench/bench_flags.h"
#include "tools/bench/report.h"

namespace sluice::bench {

struct SeriesSweep {
  std::string sweep_name;   // x axis: the swept flag
  std::string series_name;  // one line per value of this flag
  std::vector<std::string> x_values;
  std::vector<std::string> series_values;
  std::vector<std::vector<Measurement>> points;  // [series][x]
};

// Parses --series NAME=a,b,... into flags (NAME: a flag ApplyFlag knows; not --sweep's).
Status ParseSeries(BenchFlags* flags, const std::string& value);

// Measures every (series, x) point with `measure` (one process tree per point), printing each
// summary (or JSON line), then the table; writes the chart to flags.sweep_out. Returns the exit
// code: 0 when every run was healthy, 1 otherwise, 2 for a flag value that does not apply.
int RunSeriesSweep(const BenchFlags& flags,
                   const std::function<Measurement(const BenchFlags&)>& measure,
                   const std::function<bool(const Measurement&)>& healthy);

// Throughput (MiB/s) per series and x, with every series' ratio to the first.
void PrintSeriesTable(const SeriesSweep& sweep);
// A self-contained SVG line chart: x = the sweep values, one line per series.
Status WriteSeriesSvg(const std::string& path, const SeriesSweep& sweep);

}  // namespace sluice::bench
