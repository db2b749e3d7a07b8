#include "tools/bench/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include <sys/utsname.h>
#include <unistd.h>

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

// "p50 .. us  p99 .. us  p999 .. us  max .. us".
std::string LatencyFigures(const LatencyResult& l) {
  return Fmt("p50 %.1f us  ", l.p50_us) + Fmt("p99 %.1f us  ", l.p99_us) +
         Fmt("p999 %.1f us  ", l.p999_us) + Fmt("max %.1f us", l.max_us);
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

// A ZeroMQ round whose p99 is above this held one of ZeroMQ's own stalls (docs/benchmarks.md,
// session U: about 100 ms in transit, at 10,000 messages/s a run of a thousand late messages),
// not its steady tail: said next to the ratio, which such a median round makes no figure.
constexpr double kZmqStallP99Us = 20000;

bool ZmqStalled(const LatencyResult& r) { return r.p99_us > kZmqStallP99Us; }

// ", N of M rounds stalled ..." for the ZeroMQ line, or empty when none did.
std::string ZmqStallNote(const std::vector<LatencyResult>& rounds, double median_p99_us) {
  const size_t stalled = std::count_if(rounds.begin(), rounds.end(), ZmqStalled);
  if (stalled == 0) return "";
  std::string note = "; " + std::to_string(stalled) + " of " + std::to_string(rounds.size()) +
                     " ZeroMQ rounds stalled (p99 over 20 ms)";
  if (median_p99_us > kZmqStallP99Us) note += ": the median round is one, its p99 ratio no figure";
  return note;
}

std::string LatencyJson(const LatencyResult& l) {
  return "{\"samples\": " + std::to_string(l.samples) + Fmt(", \"p50_us\": %.2f", l.p50_us) +
         Fmt(", \"p99_us\": %.2f", l.p99_us) + Fmt(", \"p999_us\": %.2f", l.p999_us) +
         Fmt(", \"max_us\": %.2f}", l.max_us);
}

std::string RoundsJson(const std::vector<LatencyResult>& rounds) {
  std::string out = "[";
  for (size_t i = 0; i < rounds.size(); ++i) out += (i == 0 ? "" : ", ") + LatencyJson(rounds[i]);
  return out + "]";
}

// The latency fields of --json: medians over rounds, ratios of the same run, and per round.
void AppendLatencyJson(const Measurement& m, std::vector<std::pair<std::string, std::string>>* kv) {
  const RunResult& r = m.run;
  const LatencyResult& t = m.raw_latency;
  const LatencyResult& z = m.zmq_latency;
  kv->push_back({"baseline_tcp_max_us", Fmt("%.2f", t.max_us)});
  kv->push_back({"ratio_p50_to_tcp", Fmt("%.4f", Ratio(r.p50_us, t.p50_us))});
  kv->push_back({"ratio_p99_to_tcp", Fmt("%.4f", Ratio(r.p99_us, t.p99_us))});
  kv->push_back({"latency_rounds", RoundsJson(m.record_rounds)});
  kv->push_back({"baseline_tcp_rounds", RoundsJson(m.tcp_rounds)});
  const LatencyResult& a = m.actual_send_latency;
  kv->push_back({"actual_send_p50_us", Fmt("%.2f", a.p50_us)});
  kv->push_back({"actual_send_p99_us", Fmt("%.2f", a.p99_us)});
  kv->push_back({"actual_send_p999_us", Fmt("%.2f", a.p999_us)});
  kv->push_back({"actual_send_max_us", Fmt("%.2f", a.max_us)});
  if (m.raw_actual_latency.samples > 0) {
    kv->push_back({"baseline_tcp_actual_p50_us", Fmt("%.2f", m.raw_actual_latency.p50_us)});
    kv->push_back({"baseline_tcp_actual_p99_us", Fmt("%.2f", m.raw_actual_latency.p99_us)});
  }
  if (m.flags.zmq_baseline) {
    kv->push_back({"baseline_zmq_p50_us", Fmt("%.2f", z.p50_us)});
    kv->push_back({"baseline_zmq_p99_us", Fmt("%.2f", z.p99_us)});
    kv->push_back({"baseline_zmq_p999_us", Fmt("%.2f", z.p999_us)});
    kv->push_back({"baseline_zmq_max_us", Fmt("%.2f", z.max_us)});
    kv->push_back({"ratio_p50_to_zmq", Fmt("%.4f", Ratio(r.p50_us, z.p50_us))});
    kv->push_back({"ratio_p99_to_zmq", Fmt("%.4f", Ratio(r.p99_us, z.p99_us))});
    kv->push_back({"baseline_zmq_rounds", RoundsJson(m.zmq_latency_rounds)});
    if (m.zmq_whole_latency.samples > 0) {
      kv->push_back({"baseline_zmq_whole_rounds", std::to_string(m.zmq_whole_rounds)});
      kv->push_back({"baseline_zmq_whole_p99_us", Fmt("%.2f", m.zmq_whole_latency.p99_us)});
      kv->push_back({"ratio_p99_to_zmq_whole",
                     Fmt("%.4f", Ratio(r.p99_us, m.zmq_whole_latency.p99_us))});
    }
    if (m.zmq_actual_latency.samples > 0) {
      const LatencyResult& za = m.zmq_actual_latency;
      kv->push_back({"baseline_zmq_actual_p50_us", Fmt("%.2f", za.p50_us)});
      kv->push_back({"baseline_zmq_actual_p99_us", Fmt("%.2f", za.p99_us)});
      kv->push_back({"ratio_actual_p99_to_zmq", Fmt("%.4f", Ratio(a.p99_us, za.p99_us))});
    }
  }
  if (m.flags.events) {
    const LatencyResult& e = m.event_latency;
    kv->push_back({"event_samples", std::to_string(e.samples)});
    kv->push_back({"event_p50_us", Fmt("%.2f", e.p50_us)});
    kv->push_back({"event_p99_us", Fmt("%.2f", e.p99_us)});
    kv->push_back({"event_p999_us", Fmt("%.2f", e.p999_us)});
    kv->push_back({"event_max_us", Fmt("%.2f", e.max_us)});
    kv->push_back({"event_rounds", RoundsJson(m.event_rounds)});
  }
}

// One round's p99 from each sender's actual send: Sluice's, and the baselines' that have one.
void PrintRoundFromActualSend(const Measurement& m, size_t i) {
  if (i >= m.actual_send_rounds.size() || m.actual_send_rounds[i].samples == 0) return;
  std::string line = Fmt("         sent   sluice p99 %.1f us", m.actual_send_rounds[i].p99_us);
  if (i < m.tcp_actual_rounds.size() && m.tcp_actual_rounds[i].samples > 0) {
    line += Fmt(", tcp p99 %.1f us", m.tcp_actual_rounds[i].p99_us);
  }
  if (i < m.zmq_actual_rounds.size() && m.zmq_actual_rounds[i].samples > 0) {
    const double z = m.zmq_actual_rounds[i].p99_us;
    line += Fmt(", zeromq p99 %.1f us", z) +
            Fmt("  sluice: p99 %.2fx", Ratio(m.actual_send_rounds[i].p99_us, z));
  }
  std::printf("%s (each from its actual send)\n", line.c_str());
}

// The baselines from their actual send (text report): what each path adds once its sender has
// woken, next to Sluice's own figure from the write.
void PrintBaselinesFromActualSend(const Measurement& m) {
  const LatencyResult& a = m.actual_send_latency;
  if (m.flags.baselines && m.raw_actual_latency.samples > 0) {
    const LatencyResult& t = m.raw_actual_latency;
    std::printf("  floor, sent    %s  sluice from its write: p50 %.2fx p99 %.2fx\n",
                LatencyFigures(t).c_str(), Ratio(a.p50_us, t.p50_us), Ratio(a.p99_us, t.p99_us));
  }
  if (m.flags.zmq_baseline && m.zmq_actual_latency.samples > 0) {
    const LatencyResult& z = m.zmq_actual_latency;
    std::printf("  ZeroMQ, sent   %s  sluice from its write: p50 %.2fx p99 %.2fx\n",
                LatencyFigures(z).c_str(), Ratio(a.p50_us, z.p50_us), Ratio(a.p99_us, z.p99_us));
  }
}

// The latency part of the text report (medians over rounds, ratios of the same run).
void PrintLatency(const Measurement& m) {
  const BenchFlags& f = m.flags;
  const RunResult& r = m.run;
  const char* of_rounds = m.rounds > 1 ? "; medians of rounds" : "";
  std::printf("  latency        %s (%llu samples%s; from the scheduled send time)\n",
              LatencyFigures(m.run_latency()).c_str(),
              static_cast<unsigned long long>(r.latency_samples), of_rounds);
  if (f.events) {
    std::printf("  event latency  %s (%llu events, EmitEvent to the consumer)\n",
                LatencyFigures(m.event_latency).c_str(),
                static_cast<unsigned long long>(m.event_latency.samples));
  }
  if (m.actual_send_latency.samples > 0) {
    std::printf("  from the write %s (the same records from their actual write: coordinated "
                "omission, as measured before)\n",
                LatencyFigures(m.actual_send_latency).c_str());
  }
  if (f.baselines) {
    const LatencyResult& l = m.raw_latency;
    std::printf("  raw TCP floor  %s  sluice: p50 %.2fx p99 %.2fx\n", LatencyFigures(l).c_str(),
                Ratio(r.p50_us, l.p50_us), Ratio(r.p99_us, l.p99_us));
  }
  if (f.zmq_baseline) {
    const LatencyResult& z = m.zmq_latency;
    std::printf("  ZeroMQ         %s  sluice: p50 %.2fx p99 %.2fx%s\n", LatencyFigures(z).c_str(),
                Ratio(r.p50_us, z.p50_us), Ratio(r.p99_us, z.p99_us),
                ZmqStallNote(m.zmq_latency_rounds, z.p99_us).c_str());
    const LatencyResult& w = m.zmq_whole_latency;
    if (w.samples > 0) {
      std::printf("  ZeroMQ, whole  %s  sluice: p50 %.2fx p99 %.2fx (medians of its %zu rounds "
                  "without a stall)\n",
                  LatencyFigures(w).c_str(), Ratio(r.p50_us, w.p50_us), Ratio(r.p99_us, w.p99_us),
                  m.zmq_whole_rounds);
    }
  }
  if (m.actual_send_latency.samples > 0) PrintBaselinesFromActualSend(m);
}

}  // namespace

LatencyResult Measurement::run_latency() const {
  return {run.latency_samples, run.p50_us, run.p99_us, run.p999_us, run.max_us};
}

void FinishLatency(Measurement* m) {
  if (!m->record_rounds.empty()) {
    const LatencyResult l = MedianOfRounds(m->record_rounds);
    m->run.latency_samples = l.samples;
    m->run.p50_us = l.p50_us;
    m->run.p99_us = l.p99_us;
    m->run.p999_us = l.p999_us;
    m->run.max_us = l.max_us;
  }
  m->event_latency = MedianOfRounds(m->event_rounds);
  m->actual_send_latency = MedianOfRounds(m->actual_send_rounds);
  m->raw_latency = MedianOfRounds(m->tcp_rounds);
  m->zmq_latency = MedianOfRounds(m->zmq_latency_rounds);
  const LatencyResult whole =
      MedianOfRoundsUpTo(m->zmq_latency_rounds, kZmqStallP99Us, &m->zmq_whole_rounds);
  const bool some_stalled = m->zmq_whole_rounds < m->zmq_latency_rounds.size();
  m->zmq_whole_latency = some_stalled ? whole : LatencyResult{};
  m->raw_actual_latency = MedianOfRounds(m->tcp_actual_rounds);
  m->zmq_actual_latency = MedianOfRounds(m->zmq_actual_rounds);
}

void PrintRound(const Measurement& m, int round, const RunResult& run, double pump,
                double memcpy_mib) {
  const BenchFlags& f = m.flags;
  const size_t i = static_cast<size_t>(round);
  if (!f.latency) {
    std::printf("round %d: %.1f MiB/s", round + 1, run.mib_per_second());
    if (f.baselines) std::printf(", pump %.1f MiB/s, memcpy %.1f MiB/s", pump, memcpy_mib);
    if (i < m.zmq_mib_rounds.size()) std::printf(", zeromq %.1f MiB/s", m.zmq_mib_rounds[i]);
    std::printf("\n");
    return;
  }
  std::printf("round %d: sluice %s\n", round + 1, LatencyFigures(m.record_rounds[i]).c_str());
  if (i < m.event_rounds.size()) {
    std::printf("         events %s\n", LatencyFigures(m.event_rounds[i]).c_str());
  }
  if (i < m.actual_send_rounds.size() && m.actual_send_rounds[i].samples > 0) {
    std::printf("         write  %s (from the actual write)\n",
                LatencyFigures(m.actual_send_rounds[i]).c_str());
  }
  // The ratios of this round alone: on a loaded machine the baselines of one round were
  // measured closest in time to its data path.
  const LatencyResult& s = m.record_rounds[i];
  if (i < m.tcp_rounds.size()) {
    const LatencyResult& t = m.tcp_rounds[i];
    std::printf("         tcp    %s  sluice: p50 %.2fx p99 %.2fx\n", LatencyFigures(t).c_str(),
                Ratio(s.p50_us, t.p50_us), Ratio(s.p99_us, t.p99_us));
  }
  if (i < m.zmq_latency_rounds.size()) {
    const LatencyResult& z = m.zmq_latency_rounds[i];
    std::printf("         zeromq %s  sluice: p50 %.2fx p99 %.2fx\n", LatencyFigures(z).c_str(),
                Ratio(s.p50_us, z.p50_us), Ratio(s.p99_us, z.p99_us));
  }
  PrintRoundFromActualSend(m, i);
}

double Measurement::RatioToPump() const {
  return pump_mib_per_second > 0 ? run.mib_per_second() / pump_mib_per_second : 0;
}

double Measurement::RatioToMemcpy() const {
  return memcpy_mib_per_second > 0 ? run.mib_per_second() / memcpy_mib_per_second : 0;
}

double Measurement::RatioToZmq() const { return Ratio(run.mib_per_second(), zmq_mib_per_second); }

HostInfo ReadHostInfo() {
  HostInfo h;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    const size_t value =
        colon == std::string::npos ? colon : line.find_first_not_of(" \t", colon + 1);
    if (value != std::string::npos) h.cpu = line.substr(value);  // else "unknown" below
    break;
  }
  if (h.cpu.empty()) h.cpu = "unknown";
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  h.cpus = online > 0 ? static_cast<unsigned>(online) : 0;
  utsname u{};
  h.kernel = uname(&u) == 0 ? u.release : "unknown";
  return h;
}

void PrintSummary(const Measurement& m) {
  const BenchFlags& f = m.flags;
  const RunResult& r = m.run;
  std::printf("- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -\n");
  // With --interleave-ms the window includes the other paths' turns: r.seconds is that long.
  const std::string turns =
      f.TurnPaths() > 1 ? ", " + std::to_string(f.TurnPaths()) + " paths in turns of " +
                              std::to_string(f.interleave_ms) + " ms"
                        : "";
  std::printf("sluice-bench %s: %u channels, %s-byte records, %u-byte segments, %.1f s%s%s%s%s%s%s%s%s\n",
              f.mode.c_str(), f.channels, f.RecordSizeString().c_str(), f.segment_size, r.seconds,
              f.checksum ? ", checksums" : "",
              f.in_place_fill ? ", in place (every byte written)" : f.in_place ? ", in place" : "",
              f.mode == "remote" && !f.auth ? ", auth off" : "",
              f.mode == "remote" && f.direct == 0 ? ", write-through off" : "",
              f.mode == "remote" && f.direct_reads == 0 ? ", read-through off" : "",
              f.consume_on_io ? ", consumed on the IO thread" : "", turns.c_str(),
              m.rounds > 1 ? " (median round)" : "");
  const HostInfo host = ReadHostInfo();
  std::printf("  host           %s, %u CPUs online, Linux %s\n", host.cpu.c_str(), host.cpus,
              host.kernel.c_str());
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
  if (f.mode == "remote") {
    std::printf("  write path     %llu frames out (%llu backlog announcements), %llu written on "
                "the producer's thread, %llu notifications posted to its loop; consumer sent "
                "%llu (AddCredits), %llu read on the producer's thread\n",
                static_cast<unsigned long long>(r.server_frames_out),
                static_cast<unsigned long long>(r.server_backlog_announcements),
                static_cast<unsigned long long>(r.server_direct_writes),
                static_cast<unsigned long long>(r.server_notifications_posted),
                static_cast<unsigned long long>(r.client_frames_out),
                static_cast<unsigned long long>(r.server_direct_read_frames));
  }
  std::printf("  pool usage     peak %u of %u segments; network memory %.1f MiB per process\n",
              r.pool_peak_used_segments, r.pool_total_segments,
              static_cast<double>(r.network_memory_bytes) / kMiB);
  std::printf("  peak RSS       %.1f MiB (consumer %.1f, producer %.1f); network memory + %.1f MiB\n",
              static_cast<double>(r.peak_rss_bytes) / kMiB,
              static_cast<double>(r.consumer_peak_rss_bytes) / kMiB,
              static_cast<double>(r.producer_peak_rss_bytes) / kMiB,
              (static_cast<double>(r.peak_rss_bytes) - static_cast<double>(r.network_memory_bytes)) /
                  kMiB);
  std::printf("  leaked segments %lld; order errors %llu%s\n",
              static_cast<long long>(r.leaked_segments),
              static_cast<unsigned long long>(r.order_errors),
              f.in_place_fill ? ("; fill errors " + std::to_string(r.fill_errors)).c_str() : "");
  if (f.latency) PrintLatency(m);
  if (f.baselines && !f.latency) {
    std::printf("  raw libuv pump %10.1f MiB/s  ratio %.3f\n", m.pump_mib_per_second,
                m.RatioToPump());
    std::printf("  memcpy         %10.1f MiB/s  ratio %.3f\n", m.memcpy_mib_per_second,
                m.RatioToMemcpy());
  }
  if (f.zmq_baseline && !f.latency) {
    std::printf("  ZeroMQ         %10.1f MiB/s  ratio %.3f (PUSH/PULL, %.3f M records/s, %u per "
                "message)\n",
                m.zmq_mib_per_second, m.RatioToZmq(), m.zmq_records_per_second / 1e6,
                m.zmq_records_per_message);
  }
  if (f.debloat || f.consumer_rate_mib > 0) {
    std::printf("  debloat %-3s    inflight %.0f B/channel, producer %.1f segments, event crossing "
                "%.0f us (%llu events), buffer size %u\n",
                f.debloat ? "on" : "off", r.inflight_bytes, r.producer_segments,
                r.event_crossing_us, static_cast<unsigned long long>(r.event_samples),
                r.debloat_buffer_size);
  }
  if (r.error[0] != 0) std::printf("  ERROR: %s\n", r.error);
  if (!m.zmq_error.empty()) std::printf("  ERROR: %s\n", m.zmq_error.c_str());
}

std::string ToJson(const Measurement& m) {
  const BenchFlags& f = m.flags;
  const HostInfo host = ReadHostInfo();
  const RunResult& r = m.run;
  std::vector<std::pair<std::string, std::string>> kv = {
      {"mode", JsonString(f.mode)},
      {"host_cpu", JsonString(host.cpu)},
      {"host_cpus", std::to_string(host.cpus)},
      {"host_kernel", JsonString(host.kernel)},
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
      {"in_place_fill", f.in_place_fill ? "true" : "false"},
      {"auth", f.auth && f.mode == "remote" ? "true" : "false"},
      {"direct", f.direct < 0 ? "\"env\"" : f.direct != 0 ? "true" : "false"},
      {"direct_reads", f.direct_reads < 0 ? "\"env\"" : f.direct_reads != 0 ? "true" : "false"},
      {"consume_on", f.consume_on_io ? "\"io\"" : "\"consumer\""},
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
      {"server_frames_out", std::to_string(r.server_frames_out)},
      {"server_direct_writes", std::to_string(r.server_direct_writes)},
      {"server_direct_read_frames", std::to_string(r.server_direct_read_frames)},
      {"server_backlog_announcements", std::to_string(r.server_backlog_announcements)},
      {"server_notifications_posted", std::to_string(r.server_notifications_posted)},
      {"client_frames_out", std::to_string(r.client_frames_out)},
      {"network_memory_bytes", std::to_string(r.network_memory_bytes)},
      {"pool_total_segments", std::to_string(r.pool_total_segments)},
      {"pool_peak_used_segments", std::to_string(r.pool_peak_used_segments)},
      {"peak_rss_bytes", std::to_string(r.peak_rss_bytes)},
      {"consumer_peak_rss_bytes", std::to_string(r.consumer_peak_rss_bytes)},
      {"producer_peak_rss_bytes", std::to_string(r.producer_peak_rss_bytes)},
      {"leaked_segments", std::to_string(r.leaked_segments)},
      {"order_errors", std::to_string(r.order_errors)},
      {"fill_errors", std::to_string(r.fill_errors)},
  };
  if (!f.latency) {  // the throughput ceilings; a --latency run at a fixed rate has none
    kv.push_back({"baseline_pump_mib_per_second", Fmt("%.2f", m.pump_mib_per_second)});
    kv.push_back({"baseline_memcpy_mib_per_second", Fmt("%.2f", m.memcpy_mib_per_second)});
    kv.push_back({"ratio_to_pump", Fmt("%.4f", m.RatioToPump())});
    kv.push_back({"ratio_to_memcpy", Fmt("%.4f", m.RatioToMemcpy())});
  }
  if (f.latency) {
    kv.push_back({"rate", std::to_string(f.rate)});
    kv.push_back({"interleave_ms", std::to_string(f.TurnPaths() > 1 ? f.interleave_ms : 0)});
    kv.push_back({"latency_samples", std::to_string(r.latency_samples)});
    kv.push_back({"p50_us", Fmt("%.2f", r.p50_us)});
    kv.push_back({"p99_us", Fmt("%.2f", r.p99_us)});
    kv.push_back({"p999_us", Fmt("%.2f", r.p999_us)});
    kv.push_back({"max_us", Fmt("%.2f", r.max_us)});
    kv.push_back({"baseline_tcp_p50_us", Fmt("%.2f", m.raw_latency.p50_us)});
    kv.push_back({"baseline_tcp_p99_us", Fmt("%.2f", m.raw_latency.p99_us)});
    kv.push_back({"baseline_tcp_p999_us", Fmt("%.2f", m.raw_latency.p999_us)});
    AppendLatencyJson(m, &kv);
  }
  if (f.zmq_baseline && !f.latency) {
    kv.push_back({"baseline_zmq_mib_per_second", Fmt("%.2f", m.zmq_mib_per_second)});
    kv.push_back({"baseline_zmq_records_per_second", Fmt("%.1f", m.zmq_records_per_second)});
    kv.push_back({"baseline_zmq_records_per_message", std::to_string(m.zmq_records_per_message)});
    kv.push_back({"ratio_to_zmq", Fmt("%.4f", m.RatioToZmq())});
  }
  // Buffer debloating (tools/bench/debloat_bench.h).
  kv.push_back({"debloat", f.debloat ? "true" : "false"});
  kv.push_back({"debloat_target_ms", Fmt("%.3f", f.debloat_target_ms)});
  kv.push_back({"consumer_rate_mib", Fmt("%.1f", f.consumer_rate_mib)});
  kv.push_back({"inflight_bytes", Fmt("%.0f", r.inflight_bytes)});
  kv.push_back({"producer_segments", Fmt("%.1f", r.producer_segments)});
  kv.push_back({"event_crossing_us", Fmt("%.1f", r.event_crossing_us)});
  kv.push_back({"event_crossing_samples", std::to_string(r.event_samples)});
  kv.push_back({"debloat_buffer_size", std::to_string(r.debloat_buffer_size)});
  if (r.error[0] != 0) kv.push_back({"error", JsonString(r.error)});
  if (!m.zmq_error.empty()) kv.push_back({"zmq_error", JsonString(m.zmq_error)});
  std::string out = "{";
  for (size_t i = 0; i < kv.size(); ++i) {
    out += (i == 0 ? "\"" : ", \"") + kv[i].first + "\": " + kv[i].second;
  }
  return out + "}";
}

namespace {

// --latency: medians of rounds per value, the baselines of the same value's rounds, and p99
// against the first value's (e.g. --sweep channels=1,64: 64 channels over one).
void PrintLatencySweepTable(const std::string& name, const std::vector<SweepPoint>& points) {
  std::printf("\n%-12s %9s %9s %9s %9s %9s %9s %9s %9s %9s %6s\n", name.c_str(), "p50 us",
              "p99 us", "p999 us", "max us", "tcp p50", "tcp p99", "zmq p50", "zmq p99",
              "p99/first", "leaks");
  const double first_p99 = points.empty() ? 0 : points[0].measurement.run.p99_us;
  for (const SweepPoint& p : points) {
    const Measurement& m = p.measurement;
    std::printf("%-12s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.2f %6lld%s\n",
                p.value.c_str(), m.run.p50_us, m.run.p99_us, m.run.p999_us, m.run.max_us,
                m.raw_latency.p50_us, m.raw_latency.p99_us, m.zmq_latency.p50_us,
                m.zmq_latency.p99_us, Ratio(m.run.p99_us, first_p99),
                static_cast<long long>(m.run.leaked_segments), m.run.error[0] ? "  ERROR" : "");
  }
}

}  // namespace

void PrintSweepTable(const std::string& name, const std::vector<SweepPoint>& points) {
  if (!points.empty() && points[0].measurement.flags.latency) {
    PrintLatencySweepTable(name, points);
    return;
  }
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
  const BenchFlags& f0 = points.empty() ? BenchFlags() : points[0].measurement.flags;
  // Throughput against the pump, or with --latency p99 against ZeroMQ's (else the TCP floor's).
  using Value = double (*)(const Measurement&);
  const bool lat = f0.latency;
  const Value primary = lat ? +[](const Measurement& m) { return m.run.p99_us; }
                            : +[](const Measurement& m) { return m.run.mib_per_second(); };
  const Value baseline = !lat ? +[](const Measurement& m) { return m.pump_mib_per_second; }
                         : f0.zmq_baseline ? +[](const Measurement& m) { return m.zmq_latency.p99_us; }
                                           : +[](const Measurement& m) { return m.raw_latency.p99_us; };
  const std::string baseline_label = !lat ? "raw libuv pump" : f0.zmq_baseline ? "ZeroMQ p99" : "raw TCP p99";
  double y_max = 1;
  for (const SweepPoint& p : points) {
    y_max = std::max({y_max, primary(p.measurement), baseline(p.measurement)});
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
  svg += "<text x=\"" + Fmt("%.0f", kLeft) + "\" y=\"24\" font-size=\"14\">sluice-bench " +
         XmlEscape(f0.mode) + (lat ? ": p99 latency vs " : ": throughput vs ") + XmlEscape(name) +
         "</text>\n";
  for (int t = 0; t <= 5; ++t) {
    const double v = y_max * t / 5;
    const double y = y_of(v);
    svg += Fmt("<line x1=\"%.0f\" ", kLeft) + Fmt("x2=\"%.0f\" ", kLeft + plot_w) +
           Fmt("y1=\"%.1f\" ", y) + Fmt("y2=\"%.1f\" stroke=\"#ddd\"/>\n", y);
    svg += Fmt("<text x=\"%.0f\" ", kLeft - 6) + Fmt("y=\"%.1f\" text-anchor=\"end\">", y + 4) +
           Fmt("%.0f</text>\n", v);
  }
  svg += Fmt("<text x=\"16\" y=\"%.0f\" ", kTop + plot_h / 2) +
         Fmt("transform=\"rotate(-90 16 %.0f)\" text-anchor=\"middle\">", kTop + plot_h / 2) +
         (lat ? "p99 us" : "MiB/s") + "</text>\n";
  for (size_t i = 0; i < n; ++i) {
    svg += Fmt("<text x=\"%.1f\" ", x_of(i)) + Fmt("y=\"%.0f\" text-anchor=\"middle\">", kTop + plot_h + 18) +
           XmlEscape(points[i].value) + "</text>\n";
  }
  svg += Fmt("<text x=\"%.0f\" ", kLeft + plot_w / 2) +
         Fmt("y=\"%.0f\" text-anchor=\"middle\">--", kH - 16) + XmlEscape(name) + "</text>\n";
  svg += polyline(baseline, "#888", "6,4");
  svg += polyline(primary, "#1f77b4", "none");
  for (size_t i = 0; i < n; ++i) {
    svg += Fmt("<circle cx=\"%.1f\" ", x_of(i)) +
           Fmt("cy=\"%.1f\" r=\"4\" fill=\"#1f77b4\"/>\n", y_of(primary(points[i].measurement)));
  }
  const double lx = kLeft + plot_w + 16;
  svg += Fmt("<line x1=\"%.0f\" y1=\"60\" ", lx) + Fmt("x2=\"%.0f\" y2=\"60\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n", lx + 24);
  svg += Fmt("<text x=\"%.0f\" y=\"64\">sluice</text>\n", lx + 30);
  svg += Fmt("<line x1=\"%.0f\" y1=\"80\" ", lx) + Fmt("x2=\"%.0f\" y2=\"80\" stroke=\"#888\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/>\n", lx + 24);
  svg += Fmt("<text x=\"%.0f\" y=\"84\">", lx + 30) + baseline_label + "</text>\n";
  svg += "</svg>\n";
  std::ofstream out(path);
  out << svg;
  if (!out.good()) return InternalError("cannot write the sweep chart to '" + path + "'");
  return Status::Ok();
}

}  // namespace sluice::bench
