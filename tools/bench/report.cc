#include "tools/bench/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include "tools/common/report_util.h"

namespace sluice::bench {
namespace {

using tools::JsonString;
using tools::kMiB;

// One number into a format; long enough for every SVG element written below.
std::string Fmt(const char* format, double v) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

std::string XmlEscape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

}  // namespace

double Measurement::RatioToPump() const {
  return pump_mib_per_second > 0 ? run.mib_per_second() / pump_mib_per_second : 0;
}

double Measurement::RatioToMemcpy() const {
  return memcpy_mib_per_second > 0 ? run.mib_per_second() / memcpy_mib_per_second : 0;
}

void PrintSummary(const Measurement& m) {
  const BenchFlags& f = m.flags;
  const RunResult& r = m.run;
  std::printf("- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -\n");
  std::printf("sluice-bench %s: %u channels, %s-byte records, %u-byte segments, %.1f s%s%s%s%s\n",
              f.mode.c_str(), f.channels, f.RecordSizeString().c_str(), f.segment_size, r.seconds,
              f.checksum ? ", checksums" : "", f.in_place ? ", in place" : "",
              f.mode == "remote" && !f.auth ? ", auth off" : "",
              m.rounds > 1 ? " (median round)" : "");
  std::printf("  records        %12llu   %10.3f M records/s\n",
              static_cast<unsigned long long>(r.records), r.records_per_second() / 1e6);
  std::printf("  bytes          %12llu   %10.1f MiB/s\n",
              static_cast<unsigned long long>(r.bytes), r.mib_per_second());
  std::printf("  buffers        %12llu   %10.0f buffers/s\n",
              static_cast<unsigned long long>(r.buffers), r.buffers_per_second());
  std::printf("  credit stalls  %12.1f ms (summed over the server's readers: data, no credit)\n",
              r.credit_stall_ms);
  std::printf("  backpressure   %12.1f ms (producer waiting for output buffers)\n",
              r.backpressure_ms);
  std::printf("  pool usage     peak %u of %u segments; network memory %.1f MiB per process\n",
              r.pool_peak_used_segments, r.pool_total_segments,
              static_cast<double>(r.network_memory_bytes) / kMiB);
  std::printf("  peak RSS       %.1f MiB (consumer %.1f, producer %.1f); network memory + %.1f MiB\n",
              static_cast<double>(r.peak_rss_bytes) / kMiB,
              static_cast<double>(r.consumer_peak_rss_bytes) / kMiB,
              static_cast<double>(r.producer_peak_rss_bytes) / kMiB,
              (static_cast<double>(r.peak_rss_bytes) - static_cast<double>(r.network_memory_bytes)) /
                  kMiB);
  std::printf("  leaked segments %lld; order errors %llu\n", static_cast<long long>(r.leaked_segments),
              static_cast<unsigned long long>(r.order_errors));
  if (f.latency) {
    std::printf("  latency        p50 %.1f us  p99 %.1f us  p999 %.1f us  max %.1f us (%llu samples)\n",
                r.p50_us, r.p99_us, r.p999_us, r.max_us,
                static_cast<unsigned long long>(r.latency_samples));
  }
  if (f.baselines && f.latency) {
    const LatencyResult& l = m.raw_latency;
    std::printf("  raw TCP floor  p50 %.1f us  p99 %.1f us  p999 %.1f us  (one wake-up per "
                "message; p99 ratio %.2f)\n",
                l.p50_us, l.p99_us, l.p999_us, l.p99_us > 0 ? r.p99_us / l.p99_us : 0.0);
  }
  if (f.baselines) {
    std::printf("  raw libuv pump %10.1f MiB/s  ratio %.3f\n", m.pump_mib_per_second,
                m.RatioToPump());
    std::printf("  memcpy         %10.1f MiB/s  ratio %.3f\n", m.memcpy_mib_per_second,
                m.RatioToMemcpy());
  }
  if (f.debloat || f.consumer_rate_mib > 0) {
    std::printf("  debloat %-3s    inflight %.0f B/channel, producer %.1f segments, event crossing "
                "%.0f us (%llu events), buffer size %u\n",
                f.debloat ? "on" : "off", r.inflight_bytes, r.producer_segments,
                r.event_crossing_us, static_cast<unsigned long long>(r.event_samples),
                r.debloat_buffer_size);
  }
  if (r.error[0] != 0) std::printf("  ERROR: %s\n", r.error);
}

std::string ToJson(const Measurement& m) {
  const BenchFlags& f = m.flags;
  const RunResult& r = m.run;
  std::vector<std::pair<std::string, std::string>> kv = {
      {"mode", JsonString(f.mode)},
      {"channels", std::to_string(f.channels)},
      // The size, or the mean of a --record-size MIN-MAX range (then see _min and _max).
      {"record_size", std::to_string(static_cast<uint64_t>(f.MeanRecordSize()))},
      {"record_size_min", std::to_string(f.record_min)},
      {"record_size_max", std::to_string(f.record_max)},
      {"segment_size", std::to_string(f.segment_size)},
      {"buffers_per_channel", std::to_string(f.buffers_per_channel)},
      {"floating_per_gate", std::to_string(f.floating_per_gate)},
      {"buffer_timeout_ms", std::to_string(f.latency ? 0 : f.buffer_timeout_ms)},
      {"batch", std::to_string(f.EffectiveBatch())},
      {"checksum", f.checksum ? "true" : "false"},
      {"in_place", f.in_place ? "true" : "false"},
      {"auth", f.auth && f.mode == "remote" ? "true" : "false"},
      {"rounds", std::to_string(m.rounds)},
      {"seconds", Fmt("%.3f", r.seconds)},
      {"records", std::to_string(r.records)},
      {"bytes", std::to_string(r.bytes)},
      {"buffers", std::to_string(r.buffers)},
      {"records_per_second", Fmt("%.1f", r.records_per_second())},
      {"mib_per_second", Fmt("%.2f", r.mib_per_second())},
      {"buffers_per_second", Fmt("%.1f", r.buffers_per_second())},
      {"credit_stall_ms", Fmt("%.3f", r.credit_stall_ms)},
      {"backpressure_ms", Fmt("%.3f", r.backpressure_ms)},
      {"network_memory_bytes", std::to_string(r.network_memory_bytes)},
      {"pool_total_segments", std::to_string(r.pool_total_segments)},
      {"pool_peak_used_segments", std::to_string(r.pool_peak_used_segments)},
      {"peak_rss_bytes", std::to_string(r.peak_rss_bytes)},
      {"consumer_peak_rss_bytes", std::to_string(r.consumer_peak_rss_bytes)},
      {"producer_peak_rss_bytes", std::to_string(r.producer_peak_rss_bytes)},
      {"leaked_segments", std::to_string(r.leaked_segments)},
      {"order_errors", std::to_string(r.order_errors)},
      {"baseline_pump_mib_per_second", Fmt("%.2f", m.pump_mib_per_second)},
      {"baseline_memcpy_mib_per_second", Fmt("%.2f", m.memcpy_mib_per_second)},
      {"ratio_to_pump", Fmt("%.4f", m.RatioToPump())},
      {"ratio_to_memcpy", Fmt("%.4f", m.RatioToMemcpy())},
  };
  if (f.latency) {
    kv.push_back({"rate", std::to_string(f.rate)});
    kv.push_back({"latency_samples", std::to_string(r.latency_samples)});
    kv.push_back({"p50_us", Fmt("%.2f", r.p50_us)});
    kv.push_back({"p99_us", Fmt("%.2f", r.p99_us)});
    kv.push_back({"p999_us", Fmt("%.2f", r.p999_us)});
    kv.push_back({"max_us", Fmt("%.2f", r.max_us)});
    kv.push_back({"baseline_tcp_p50_us", Fmt("%.2f", m.raw_latency.p50_us)});
    kv.push_back({"baseline_tcp_p99_us", Fmt("%.2f", m.raw_latency.p99_us)});
    kv.push_back({"baseline_tcp_p999_us", Fmt("%.2f", m.raw_latency.p999_us)});
  }
  // Buffer debloating (tools/bench/debloat_bench.h).
  kv.push_back({"debloat", f.debloat ? "true" : "false"});
  kv.push_back({"debloat_target_ms", Fmt("%.3f", f.debloat_target_ms)});
  kv.push_back({"consumer_rate_mib", Fmt("%.1f", f.consumer_rate_mib)});
  kv.push_back({"inflight_bytes", Fmt("%.0f", r.inflight_bytes)});
  kv.push_back({"producer_segments", Fmt("%.1f", r.producer_segments)});
  kv.push_back({"event_crossing_us", Fmt("%.1f", r.event_crossing_us)});
  kv.push_back({"event_samples", std::to_string(r.event_samples)});
  kv.push_back({"debloat_buffer_size", std::to_string(r.debloat_buffer_size)});
  if (r.error[0] != 0) kv.push_back({"error", JsonString(r.error)});
  std::string out = "{";
  for (size_t i = 0; i < kv.size(); ++i) {
    out += (i == 0 ? "\"" : ", \"") + kv[i].first + "\": " + kv[i].second;
  }
  return out + "}";
}

void PrintSweepTable(const std::string& name, const std::vector<SweepPoint>& points) {
  std::printf("\n%-14s %12s %10s %10s %10s %8s %8s %10s %6s\n", name.c_str(), "M records/s",
              "MiB/s", "pump MiB/s", "memcpy", "x pump", "x memcpy", "RSS MiB", "leaks");
  for (const SweepPoint& p : points) {
    const Measurement& m = p.measurement;
    std::printf("%-14s %12.3f %10.1f %10.1f %10.1f %8.3f %8.3f %10.1f %6lld%s\n", p.value.c_str(),
                m.run.records_per_second() / 1e6, m.run.mib_per_second(), m.pump_mib_per_second,
                m.memcpy_mib_per_second, m.RatioToPump(), m.RatioToMemcpy(),
                static_cast<double>(m.run.peak_rss_bytes) / kMiB,
                static_cast<long long>(m.run.leaked_segments), m.run.error[0] ? "  ERROR" : "");
  }
}

Status WriteSweepSvg(const std::string& path, const std::string& name,
                     const std::vector<SweepPoint>& points) {
  constexpr double kW = 720, kH = 420, kLeft = 80, kRight = 170, kTop = 40, kBottom = 60;
  const double plot_w = kW - kLeft - kRight;
  const double plot_h = kH - kTop - kBottom;
  double y_max = 1;
  for (const SweepPoint& p : points) {
    const Measurement& m = p.measurement;
    y_max = std::max({y_max, m.run.mib_per_second(), m.pump_mib_per_second});
  }
  y_max *= 1.1;
  const size_t n = points.size();
  auto x_of = [&](size_t i) { return kLeft + (n <= 1 ? plot_w / 2 : plot_w * i / (n - 1)); };
  auto y_of = [&](double v) { return kTop + plot_h * (1 - v / y_max); };
  auto polyline = [&](auto value, const char* color, const char* dash) {
    std::string s = "<polyline fill=\"none\" stroke=\"" + std::string(color) +
                    "\" stroke-width=\"2\" stroke-dasharray=\"" + dash + "\" points=\"";
    for (size_t i = 0; i < n; ++i) {
      s += Fmt("%.1f,", x_of(i)) + Fmt("%.1f ", y_of(value(points[i].measurement)));
    }
    return s + "\"/>\n";
  };
  std::string svg = Fmt("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" ", kW) +
                    Fmt("height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", kH);
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  const BenchFlags& f0 = points.empty() ? BenchFlags() : points[0].measurement.flags;
  svg += "<text x=\"" + Fmt("%.0f", kLeft) + "\" y=\"24\" font-size=\"14\">sluice-bench " +
         XmlEscape(f0.mode) + ": throughput vs " + XmlEscape(name) + "</text>\n";
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
    svg += Fmt("<text x=\"%.1f\" ", x_of(i)) + Fmt("y=\"%.0f\" text-anchor=\"middle\">", kTop + plot_h + 18) +
           XmlEscape(points[i].value) + "</text>\n";
  }
  svg += Fmt("<text x=\"%.0f\" ", kLeft + plot_w / 2) +
         Fmt("y=\"%.0f\" text-anchor=\"middle\">--", kH - 16) + XmlEscape(name) + "</text>\n";
  svg += polyline([](const Measurement& m) { return m.pump_mib_per_second; }, "#888", "6,4");
  svg += polyline([](const Measurement& m) { return m.run.mib_per_second(); }, "#1f77b4", "none");
  for (size_t i = 0; i < n; ++i) {
    svg += Fmt("<circle cx=\"%.1f\" ", x_of(i)) +
           Fmt("cy=\"%.1f\" r=\"4\" fill=\"#1f77b4\"/>\n", y_of(points[i].measurement.run.mib_per_second()));
  }
  const double lx = kLeft + plot_w + 16;
  svg += Fmt("<line x1=\"%.0f\" y1=\"60\" ", lx) + Fmt("x2=\"%.0f\" y2=\"60\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n", lx + 24);
  svg += Fmt("<text x=\"%.0f\" y=\"64\">sluice</text>\n", lx + 30);
  svg += Fmt("<line x1=\"%.0f\" y1=\"80\" ", lx) + Fmt("x2=\"%.0f\" y2=\"80\" stroke=\"#888\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/>\n", lx + 24);
  svg += Fmt("<text x=\"%.0f\" y=\"84\">raw libuv pump</text>\n", lx + 30);
  svg += "</svg>\n";
  std::ofstream out(path);
  out << svg;
  if (!out.good()) return InternalError("cannot write the sweep chart to '" + path + "'");
  return Status::Ok();
}

}  // namespace sluice::bench
