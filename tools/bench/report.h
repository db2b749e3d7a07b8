// sluice-bench's output: the iperf3-style summary, the --json object, and for --sweep a table
// and an SVG chart (throughput against the swept value, the baselines as lines).
// Thread-compatible (free functions).
#pragma once

#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/bench/bench_flags.h"
#include "tools/bench/data_path.h"
#include "tools/bench/latency_stats.h"

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

  // --latency, per round (index = round) and as medians of each figure over the rounds
  // (FinishLatency): Sluice's records (run.p50_us... hold the medians), --events' events, the
  // raw TCP floor (raw_latency above) and ZeroMQ with --baselines zmq.
  std::vector<LatencyResult> record_rounds;
  std::vector<LatencyResult> event_rounds;
  std::vector<LatencyResult> tcp_rounds;
  std::vector<LatencyResult> zmq_latency_rounds;
  std::vector<LatencyResult> actual_send_rounds;  // RunResult::actual_send_latency
  // The baselines' messages timed from their actual send (no samples: records under 16 bytes
  // for the floor, 24 for ZeroMQ): what each path adds once its sender is awake.
  std::vector<LatencyResult> tcp_actual_rounds;
  std::vector<LatencyResult> zmq_actual_rounds;
  LatencyResult event_latency;
  LatencyResult actual_send_latency;
  LatencyResult zmq_latency;
  // ZeroMQ's medians over its rounds without a stall (p99 under 20 ms; samples 0 when none
  // stalled or all did). ZeroMQ at its best: a stricter baseline for Sluice's p99 ratio.
  LatencyResult zmq_whole_latency;
  size_t zmq_whole_rounds = 0;
  LatencyResult raw_actual_latency;
  LatencyResult zmq_actual_latency;
  // --baselines zmq without --latency: ZeroMQ PUSH/PULL throughput, per round and the
  // medians of rounds.
  std::vector<double> zmq_mib_rounds;
  std::vector<double> zmq_records_rounds;
  double zmq_mib_per_second = 0;
  double zmq_records_per_second = 0;
  uint32_t zmq_records_per_message = 0;
  std::string zmq_error;  // the first failed ZeroMQ round's error, if any

  double RatioToPump() const;
  double RatioToMemcpy() const;
  double RatioToZmq() const;  // throughput, MiB/s over ZeroMQ's
  LatencyResult run_latency() const;  // run's latency figures as a LatencyResult
};

// Sets the medians over rounds from the per-round vectors: run's p50/p99/p999/max/samples,
// event_latency, actual_send_latency, raw_latency, zmq_latency (and zmq_whole_latency) and the
// baselines' from-actual figures.
void FinishLatency(Measurement* m);
// One line per round (after a round; only with --rounds > 1 and without --json).
void PrintRound(const Measurement& m, int round, const RunResult& run, double pump,
                double memcpy_mib);

// The machine a run measured, for telling hosts apart across sessions: the CPU's model name
// (/proc/cpuinfo, "unknown" when absent), the CPUs online and the kernel release.
struct HostInfo {
  std::string cpu;
  unsigned cpus = 0;
  std::string kernel;
};
HostInfo ReadHostInfo();

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
