#include "tools/bench/sweep_chart.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tools/bench/debloat_bench.h"

namespace sluice::bench {
namespace {

constexpr const char* kColors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"};

std::string Fmt(const char* format, double v) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

std::string Xml(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '&') {
      out += "&amp;";
    } else {
      out += c;
    }
  }
  return out;
}

double Throughput(const Measurement& m) { return m.run.mib_per_second(); }

}  // namespace

Status ParseSeries(BenchFlags* f, const std::string& value) {
  const size_t eq = value.find('=');
  if (eq == std::string::npos || eq + 1 >= value.size()) {
    return InvalidArgument("--series wants NAME=a,b,..., got '" + value + "'");
  }
  f->series_name = value.substr(0, eq);
  f->series_values.clear();
  std::stringstream list(value.substr(eq + 1));
  std::string item;
  while (std::getline(list, item, ',')) {
    if (!item.empty()) f->series_values.push_back(item);
  }
  for (const std::string& v : f->series_values) {
    BenchFlags probe = *f;
    if (Status s = ApplyFlag(&probe, f->series_name, v); !s.ok()) return s;
  }
  return Status::Ok();
}

int RunSeriesSweep(const BenchFlags& flags,
                   const std::function<Measurement(const BenchFlags&)>& measure,
                   const std::function<bool(const Measurement&)>& healthy) {
  SeriesSweep sweep{flags.sweep_name, flags.series_name, flags.sweep_values,
                    flags.series_values, {}};
  bool all_healthy = true;
  for (const std::string& series : flags.series_values) {
    sweep.points.emplace_back();
    for (const std::string& x : flags.sweep_values) {
      BenchFlags f = flags;
      Status s = ApplyFlag(&f, flags.sweep_name, x);
      if (s.ok()) s = ApplyFlag(&f, flags.series_name, series);
      if (!s.ok()) {
        std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
        return 2;
      }
      if (!f.json) {
        std::printf("\n== --%s %s --%s %s\n", flags.sweep_name.c_str(), x.c_str(),
                    flags.series_name.c_str(), series.c_str());
      }
      sweep.points.back().push_back(measure(f));
      const Measurement& m = sweep.points.back().back();
      all_healthy = all_healthy && healthy(m);
      if (f.json) {
        std::printf("%s\n", ToJson(m).c_str());
      } else {
        PrintSummary(m);
      }
      std::fflush(stdout);
    }
  }
  if (!flags.json) PrintSeriesTable(sweep);
  if (!flags.json && HasDebloatFigures(flags)) PrintSeriesDebloatTable(sweep);
  if (Status s = WriteSeriesSvg(flags.sweep_out, sweep); !s.ok()) {
    std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
    return 1;
  }
  if (!flags.json) std::printf("chart: %s\n", flags.sweep_out.c_str());
  return all_healthy ? 0 : 1;
}

void PrintSeriesTable(const SeriesSweep& sw) {
  std::printf("\nMiB/s by --%s (rows) and --%s (columns); ratios to %s\n", sw.sweep_name.c_str(),
              sw.series_name.c_str(),
              sw.series_values.empty() ? "-" : sw.series_values[0].c_str());
  std::printf("%-14s", sw.sweep_name.c_str());
  for (const std::string& s : sw.series_values) std::printf(" %12s", s.c_str());
  for (size_t k = 1; k < sw.series_values.size(); ++k) {
    std::printf(" %12s", (sw.series_values[k] + "/" + sw.series_values[0]).c_str());
  }
  std::printf("\n");
  for (size_t i = 0; i < sw.x_values.size(); ++i) {
    std::printf("%-14s", sw.x_values[i].c_str());
    for (const auto& series : sw.points) std::printf(" %12.1f", Throughput(series[i]));
    for (size_t k = 1; k < sw.points.size(); ++k) {
      const double base = Throughput(sw.points[0][i]);
      std::printf(" %11.2fx", base > 0 ? Throughput(sw.points[k][i]) / base : 0.0);
    }
    std::printf("\n");
  }
}

Status WriteSeriesSvg(const std::string& path, const SeriesSweep& sw) {
  constexpr double kW = 720, kH = 420, kLeft = 80, kRight = 170, kTop = 40, kBottom = 60;
  const double plot_w = kW - kLeft - kRight;
  const double plot_h = kH - kTop - kBottom;
  double y_max = 1;
  for (const auto& series : sw.points) {
    for (const Measurement& m : series) y_max = std::max(y_max, Throughput(m));
  }
  y_max *= 1.1;
  const size_t n = sw.x_values.size();
  auto x_of = [&](size_t i) { return kLeft + (n <= 1 ? plot_w / 2 : plot_w * i / (n - 1)); };
  auto y_of = [&](double v) { return kTop + plot_h * (1 - v / y_max); };
  std::string svg = Fmt("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" ", kW) +
                    Fmt("height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", kH);
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg += Fmt("<text x=\"%.0f\" y=\"24\" font-size=\"14\">sluice-bench: throughput vs --", kLeft) +
         Xml(sw.sweep_name) + ", by --" + Xml(sw.series_name) + "</text>\n";
  for (int t = 0; t <= 5; ++t) {
    const double v = y_max * t / 5;
    const double y = y_of(v);
    svg += Fmt("<line x1=\"%.0f\" ", kLeft) + Fmt("x2=\"%.0f\" ", kLeft + plot_w) +
           Fmt("y1=\"%.1f\" ", y) + Fmt("y2=\"%.1f\" stroke=\"#ddd\"/>\n", y);
    svg += Fmt("<text x=\"%.0f\" ", kLeft - 6) + Fmt("y=\"%.1f\" text-anchor=\"end\">", y + 4) +
           Fmt("%.0f</text>\n", v);
  }
  svg += Fmt("<text x=\"16\" y=\"%.0f\" ", kTop + plot_h / 2) +
         Fmt("transform=\"rotate(-90 16 %.0f)\" text-anchor=\"middle\">MiB/s</text>\n",
             kTop + plot_h / 2);
  for (size_t i = 0; i < n; ++i) {
    svg += Fmt("<text x=\"%.1f\" ", x_of(i)) +
           Fmt("y=\"%.0f\" text-anchor=\"middle\">", kTop + plot_h + 18) + Xml(sw.x_values[i]) +
           "</text>\n";
  }
  svg += Fmt("<text x=\"%.0f\" ", kLeft + plot_w / 2) +
         Fmt("y=\"%.0f\" text-anchor=\"middle\">--", kH - 16) + Xml(sw.sweep_name) + "</text>\n";
  const double lx = kLeft + plot_w + 16;
  for (size_t k = 0; k < sw.points.size(); ++k) {
    const std::string color = kColors[k % std::size(kColors)];
    std::string line = "<polyline fill=\"none\" stroke=\"" + color +
                       "\" stroke-width=\"2\" points=\"";
    for (size_t i = 0; i < sw.points[k].size(); ++i) {
      line += Fmt("%.1f,", x_of(i)) + Fmt("%.1f ", y_of(Throughput(sw.points[k][i])));
    }
    svg += line + "\"/>\n";
    for (size_t i = 0; i < sw.points[k].size(); ++i) {
      svg += Fmt("<circle cx=\"%.1f\" ", x_of(i)) +
             Fmt("cy=\"%.1f\" r=\"4\" fill=\"", y_of(Throughput(sw.points[k][i]))) + color +
             "\"/>\n";
    }
    const double ly = 60 + 20.0 * static_cast<double>(k);
    svg += Fmt("<line x1=\"%.0f\" ", lx) + Fmt("y1=\"%.0f\" ", ly) + Fmt("x2=\"%.0f\" ", lx + 24) +
           Fmt("y2=\"%.0f\" stroke=\"", ly) + color + "\" stroke-width=\"2\"/>\n";
    svg += Fmt("<text x=\"%.0f\" ", lx + 30) + Fmt("y=\"%.0f\">", ly + 4) +
           Xml(sw.series_values[k]) + "</text>\n";
  }
  svg += "</svg>\n";
  std::ofstream out(path);
  out << svg;
  if (!out.good()) return InternalError("cannot write the series chart to '" + path + "'");
  return Status::Ok();
}

}  // namespace sluice::bench
