// sluice-bench: throughput and latency of Sluice's data path, next to the machine's own limits
// (a raw libuv socket pump and memcpy) measured in the same run. See --help and docs/benchmarks.md.
//
// This process only orchestrates: every measurement runs in forked children (the data path
// in one or two, the pump's receiver in one), so it never starts a thread and each run's peak
// RSS and leak check are its own.
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tools/bench/bench_flags.h"
#include "tools/bench/child_process.h"
#include "tools/bench/data_path.h"
#include "tools/bench/debloat_bench.h"
#include "tools/bench/external_mode.h"
#include "tools/bench/raw_pump.h"
#include "tools/bench/report.h"
#include "tools/bench/sweep_chart.h"
#include "tools/bench/turn_board.h"
#include "tools/bench/zmq_baseline.h"
#include "tools/common/report_util.h"

namespace sluice::bench {
namespace {

// memcpy's working set: DRAM-sized, like the slab the data path cycles through.
constexpr uint64_t kMemcpyWorkingSet = 64u << 20;
// The ceilings need less time than the data path to settle.
constexpr double kMaxBaselineSeconds = 2;

using tools::Median;
using tools::MedianBy;

// The latency baselines' options (the floor's and ZeroMQ's): the run's rate, largest record and
// warm-up, measured for at most kMaxBaselineSeconds.
RawLatencyOptions BaselineLatencyOptions(const BenchFlags& f) {
  RawLatencyOptions lo;
  lo.seconds = std::min(f.seconds, kMaxBaselineSeconds);
  lo.warmup = f.warmup;
  lo.rate = f.rate;
  lo.message_size = f.record_max;
  return lo;
}

// --baselines zmq, one round: ZeroMQ's latency at the run's rate and record size, or its
// throughput with the run's records packed into segment-sized messages.
void MeasureZmq(const BenchFlags& f, Measurement* m) {
  if (f.latency) {
    const ZmqLatencyResult z = RunZmqLatency(BaselineLatencyOptions(f));  // at least 16 bytes
    if (z.error[0] != 0 && m->zmq_error.empty()) m->zmq_error = z.error;
    m->zmq_latency_rounds.push_back(z.latency);
    m->zmq_actual_rounds.push_back(z.from_actual);
    return;
  }
  ZmqThroughputOptions zo;
  zo.seconds = std::min(f.seconds, kMaxBaselineSeconds);
  zo.message_size = f.segment_size;
  zo.record_size = static_cast<uint32_t>(f.MeanRecordSize());
  const ZmqThroughputResult z = RunZmqThroughput(zo);
  if (z.error[0] != 0 && m->zmq_error.empty()) m->zmq_error = z.error;
  if (z.order_errors != 0 && m->zmq_error.empty()) m->zmq_error = "zeromq: records out of order";
  m->zmq_mib_rounds.push_back(z.mib_per_second());
  m->zmq_records_rounds.push_back(z.records_per_second());
  m->zmq_records_per_message =
      std::max<uint32_t>(1, f.segment_size / (std::max<uint32_t>(zo.record_size, 8) + 4));
}

// --interleave-ms, one round: Sluice, the TCP floor (--baselines on) and ZeroMQ (--baselines
// zmq) run at once and take turns to send (turn_board.h). Each path is a forked process that
// joins the board before it forks its own pair; all send --seconds x --rate measured messages.
// Returns Sluice's run; the baselines' rounds go into `m`.
RunResult MeasureInterleaved(const BenchFlags& f, Measurement* m) {
  TurnBoard* board = MapTurnBoard(f.TurnPaths(), uint64_t{f.interleave_ms} * 1000000);
  if (board == nullptr) Die(std::string("mmap of the turn board: ") + std::strerror(errno));
  RawLatencyOptions lo = BaselineLatencyOptions(f);
  lo.seconds = f.seconds;  // as many measured messages as Sluice's window holds
  std::vector<Child> paths;
  auto fork_path = [&](auto run) {
    const auto index = static_cast<uint32_t>(paths.size());
    paths.push_back(ForkChild([board, index, &run](int, int to_parent) {
      JoinTurns(board, index);
      return WritePod(to_parent, run()) ? 0 : 1;
    }));
  };
  fork_path([&f] { return RunDataPath(f); });
  if (f.baselines) fork_path([&lo] { return RunRawLatency(lo); });
  if (f.zmq_baseline) fork_path([&lo] { return RunZmqLatency(lo); });
  // A path that exits before it is ready (it failed to set up) will never be: start anyway.
  StartTurns(board, kTurnStartWaitNs, [&paths] {
    return std::any_of(paths.begin(), paths.end(), [](const Child& c) { return HasExited(c); });
  });
  RunResult run;
  if (!ReadPod(paths[0].from_child, &run)) SetMessage(run.error, "the interleaved data path failed");
  size_t next = 1;
  if (f.baselines) {
    RawLatencyResult t;
    if (!ReadPod(paths[next++].from_child, &t)) Die("the interleaved TCP floor failed");
    m->tcp_rounds.push_back(t.latency);
    m->tcp_actual_rounds.push_back(t.from_actual);
  }
  if (f.zmq_baseline) {
    ZmqLatencyResult z;
    if (!ReadPod(paths[next++].from_child, &z)) SetMessage(z.error, "interleaved ZeroMQ failed");
    if (z.error[0] != 0 && m->zmq_error.empty()) m->zmq_error = z.error;
    m->zmq_latency_rounds.push_back(z.latency);
    m->zmq_actual_rounds.push_back(z.from_actual);
  }
  for (Child& c : paths) WaitChild(c);
  UnmapTurnBoard(board);
  return run;
}

Measurement Measure(const BenchFlags& f) {
  Measurement m;
  m.flags = f;
  m.rounds = f.rounds;
  std::vector<double> pump, copy;
  std::vector<RunResult> runs;
  const bool interleaved = f.TurnPaths() > 1;
  for (int round = 0; round < f.rounds; ++round) {
    // The throughput ceilings mean nothing to a run at a fixed --rate: not with --latency.
    if (f.baselines && !f.latency) {
      RawPumpOptions po;
      po.seconds = std::min(f.seconds, kMaxBaselineSeconds);
      po.block_size = f.segment_size;
      po.bufs_per_write = f.pump_bufs_per_write;
      po.inflight = f.pump_inflight;
      pump.push_back(RunRawPump(po).mib_per_second());
      const auto piece = static_cast<uint32_t>(f.MeanRecordSize());
      copy.push_back(RunMemcpy(po.seconds, piece, kMemcpyWorkingSet).mib_per_second());
    }
    if (f.baselines && f.latency && !interleaved) {
      const RawLatencyResult t = RunRawLatency(BaselineLatencyOptions(f));
      m.tcp_rounds.push_back(t.latency);
      m.tcp_actual_rounds.push_back(t.from_actual);
    }
    if (f.zmq_baseline && !interleaved) MeasureZmq(f, &m);
    // --direct: the forked data path reads SLUICE_DIRECT_WRITES once per process (this
    // orchestrating process opens no connection, so each child reads the value set here).
    if (f.direct >= 0) ::setenv("SLUICE_DIRECT_WRITES", f.direct != 0 ? "on" : "off", 1);
    if (f.direct_reads >= 0) {
      ::setenv("SLUICE_DIRECT_READS", f.direct_reads != 0 ? "on" : "off", 1);
    }
    runs.push_back(interleaved ? MeasureInterleaved(f, &m) : RunDataPath(f));
    if (f.latency) {
      const RunResult& r = runs.back();
      m.record_rounds.push_back({r.latency_samples, r.p50_us, r.p99_us, r.p999_us, r.max_us});
      if (f.events) m.event_rounds.push_back(r.event_latency);
      m.actual_send_rounds.push_back(r.actual_send_latency);
    }
    if (!f.json && f.rounds > 1) {
      PrintRound(m, round, runs.back(), pump.empty() ? 0 : pump.back(),
                 copy.empty() ? 0 : copy.back());
    }
  }
  // The median round: by throughput, or with --latency by p99 (its throughput is the rate).
  m.run = MedianBy(runs, [&f](const RunResult& r) {
    return f.latency ? r.p99_us : r.mib_per_second();
  });
  // A failure or leak in any round shows in the result.
  for (const RunResult& r : runs) {
    if (r.error[0] != 0 && m.run.error[0] == 0) std::copy(r.error, r.error + sizeof(r.error), m.run.error);
    m.run.leaked_segments = std::max(m.run.leaked_segments, r.leaked_segments);
    m.run.order_errors = std::max(m.run.order_errors, r.order_errors);
    m.run.fill_errors = std::max(m.run.fill_errors, r.fill_errors);
    m.run.peak_rss_bytes = std::max(m.run.peak_rss_bytes, r.peak_rss_bytes);
  }
  m.pump_mib_per_second = Median(pump);
  m.memcpy_mib_per_second = Median(copy);
  m.zmq_mib_per_second = Median(m.zmq_mib_rounds);
  m.zmq_records_per_second = Median(m.zmq_records_rounds);
  FinishLatency(&m);
  return m;
}

// The header's note on --interleave-ms: how many paths share each round, in turns of how long.
std::string InterleaveNote(const BenchFlags& f) {
  if (f.TurnPaths() < 2) return "";
  return ", " + std::to_string(f.TurnPaths()) + " paths interleaved in turns of " +
         std::to_string(f.interleave_ms) + " ms";
}

bool Healthy(const Measurement& m) {
  return m.run.error[0] == 0 && m.run.leaked_segments == 0 && m.run.order_errors == 0 &&
         m.run.fill_errors == 0 && m.run.records > 0 && m.zmq_error.empty();
}

int Main(int argc, char** argv) {
  BenchFlags parsed;
  if (const int exit_code = ParseBenchFlags(argc, argv, &parsed); exit_code >= 0) {
    return exit_code;
  }
  if (Status s = ResolveBenchSecret(&parsed); !s.ok()) {
    std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
    return 2;
  }
  const BenchFlags& flags = parsed;
  signal(SIGPIPE, SIG_IGN);
  if (flags.mode == "external") return RunExternalBench(flags);  // issue 13: its own report
  if (flags.sweep_name.empty()) {
    if (!flags.json) {
      std::printf("sluice-bench %s: %u channels, %s-byte records, %u-byte segments, warm-up %.1f s, "
                  "%.1f s%s%s\n",
                  flags.mode.c_str(), flags.channels, flags.RecordSizeString().c_str(),
                  flags.segment_size, flags.warmup, flags.seconds,
                  flags.latency ? (", latency at " + std::to_string(flags.rate) + " records/s").c_str()
                                : "",
                  InterleaveNote(flags).c_str());
    }
    const Measurement m = Measure(flags);
    if (flags.json) {
      std::printf("%s\n", ToJson(m).c_str());
    } else {
      PrintSummary(m);
    }
    return Healthy(m) ? 0 : 1;
  }
  if (!flags.series_name.empty()) return RunSeriesSweep(flags, Measure, Healthy);
  std::vector<SweepPoint> points;
  bool healthy = true;
  for (const std::string& value : flags.sweep_values) {
    BenchFlags f = flags;
    if (Status s = ApplyFlag(&f, flags.sweep_name, value); !s.ok()) {
      std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
      return 2;
    }
    if (!f.json) std::printf("\n== --%s %s\n", flags.sweep_name.c_str(), value.c_str());
    points.push_back({value, Measure(f)});
    healthy = healthy && Healthy(points.back().measurement);
    if (f.json) {
      std::printf("%s\n", ToJson(points.back().measurement).c_str());
    } else {
      PrintSummary(points.back().measurement);
    }
  }
  if (!flags.json) PrintSweepTable(flags.sweep_name, points);
  if (!flags.json && (flags.debloat || flags.sweep_name == "debloat")) {
    PrintDebloatTable(flags.sweep_name, points);
  }
  if (Status s = WriteSweepSvg(flags.sweep_out, flags.sweep_name, points); !s.ok()) {
    std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
    return 1;
  }
  if (!flags.json) std::printf("chart: %s\n", flags.sweep_out.c_str());
  return healthy ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
