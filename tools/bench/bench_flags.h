// sluice-bench's command line: the flags of one run, parsed and checked, and --sweep, which
// re-applies one flag with each of several values. A plain value type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "buffer/redistribution.h"
#include "buffer/status.h"

namespace sluice::bench {

struct BenchFlags {
  std::string mode = "remote";  // local | remote
  uint32_t channels = 64;
  uint32_t record_min = 100;  // --record-size N or MIN-MAX
  uint32_t record_max = 100;
  uint32_t segment_size = 32 * 1024;
  uint32_t buffers_per_channel = 2;
  uint32_t floating_per_gate = 8;
  int buffer_timeout_ms = 100;  // 0: flush per record; -1: only full buffers
  double seconds = 5;
  double warmup = 1;
  bool checksum = false;
  bool latency = false;
  uint32_t rate = 10000;  // --latency: records per second
  uint32_t batch = 64;    // records per emit call to one subpartition (1: plain Emit)
  bool in_place = false;  // fill records in place (EmitInPlace*), writing only the stamp
  // --in-place fill: in place, and every byte of each record written (a pattern after the
  // stamp), as an engine serialising straight into the buffer writes its whole record.
  bool in_place_fill = false;
  uint64_t network_memory = 0;  // bytes per process; 0: the recommended estimate
  int rounds = 1;
  bool baselines = true;
  int pump_bufs_per_write = 8;
  int pump_inflight = 4;
  bool json = false;
  // Remote mode authenticates its one connection as sluiced does (on by default): the secret
  // from auth_secret_file, else <state_dir>/auth_secret when state_dir is given, else a random
  // one made before the fork; the partition is scoped by a random job token. --auth off
  // measures the same path without the handshake's proofs.
  bool auth = true;
  std::string auth_secret_file;
  std::string state_dir;
  std::string secret;  // resolved by ResolveBenchSecret; never printed
  // Latency measurement (issue 15): --latency --events makes every 10th scheduled send a user
  // event (ResultPartition::EmitEvent) and reports its latency on a line of its own;
  // --baselines zmq (or on,zmq) adds ZeroMQ PUSH/PULL between two processes to the baselines
  // (only when sluice-bench was built with libzmq: ZmqAvailable() in zmq_baseline.h).
  bool events = false;
  bool zmq_baseline = false;
  // --direct on|off: the producer's write-through (TransportOptions::direct_writes) in the
  // data path's processes, set through SLUICE_DIRECT_WRITES before they are forked; -1 (not
  // given): as the environment says. --sweep direct=off,on compares both in one run.
  int direct = -1;
  // --direct-reads on|off: the producer's read-through (TransportOptions::direct_reads: out of
  // credit, it reads the AddCredits waiting on its connection itself), through
  // SLUICE_DIRECT_READS likewise. --sweep direct-reads=off,on.
  int direct_reads = -1;
  // --consume-on consumer|io: where the consumer's work runs. consumer (default): a consumer
  // thread blocks in the gate (RecordReader::Next) and the IO thread wakes it. io: push mode
  // (ShuffleEnvironment::CreateInputGate with a listener): the IO thread that read a buffer
  // runs the consumer's work on it, one thread hop fewer. --sweep consume-on=consumer,io.
  bool consume_on_io = false;
  // --interleave-ms T (with --latency): each round runs Sluice and the latency baselines at
  // the same time, taking turns of T ms to send (turn_board.h), so host noise lands on all of
  // them alike; the baselines then measure --seconds too. 0 (default): one after the other.
  uint32_t interleave_ms = 0;

  // Wide gates (issue 14): a gate of more remote channels than wide_threshold takes no
  // exclusive buffers and shares wide_gate_buffers floating ones (0: never wide, Flink's rule).
  uint32_t wide_threshold = 1024;
  uint32_t wide_gate_buffers = 512;

  // Buffer debloating (tools/bench/debloat_bench.h): --debloat on|off, its target,
  // --consumer-rate-mib (0: the consumer is not throttled), --event-interval-ms (0: 100 ms
  // when debloated or throttled, else no events).
  bool debloat = false;
  double debloat_target_ms = 1000;
  double consumer_rate_mib = 0;
  double event_interval_ms = 0;

  std::string sweep_name;  // --sweep NAME=v1,v2,...
  std::vector<std::string> sweep_values;
  std::string sweep_out = "sluice-bench-sweep.svg";

  // Issue 14 (usage-driven redistribution): the policy of both processes' pools; N idle gates
  // (and partitions) beside the busy one; a delay line on every connection.
  buffer::RedistributionPolicy redistribution = buffer::RedistributionPolicy::kUsage;
  uint32_t idle_gates = 0;
  uint32_t delay_ms = 0;
  std::string series_name;  // --series NAME=a,b: one chart line per value (sweep_chart.h)
  std::vector<std::string> series_values;

  std::string RecordSizeString() const;
  // Records per emit call: 1 with --latency, else --batch capped so that one batch of records
  // stays within 256 KiB (cache resident, like a producer's own output would be).
  uint32_t EffectiveBatch() const;
  double MeanRecordSize() const { return (record_min + record_max) / 2.0; }
  // The paths that share a round's time with --latency --interleave-ms: Sluice, the TCP floor
  // (--baselines on) and ZeroMQ; else 1. A path sends in one turn of every TurnPaths(), so
  // its warm-up and measured window last that many times longer.
  uint32_t TurnPaths() const {
    if (!latency || interleave_ms == 0) return 1;
    return 1 + (baselines ? 1 : 0) + (zmq_baseline ? 1 : 0);
  }
  // The data path's warm-up and measured window in wall-clock seconds (scaled by TurnPaths()).
  double WarmupWallSeconds() const { return warmup * TurnPaths(); }
  double MeasuredWallSeconds() const { return seconds * TurnPaths(); }
};

// Parses argv with CLI11 (tools/common/cli.h conventions: --flag value and --flag=value, k/m/g
// sizes). Returns -1 when the run should go on (*out filled), else the exit code to return now:
// 0 after --help or --version, 2 after a usage error (printed, naming the flag).
int ParseBenchFlags(int argc, char** argv, BenchFlags* out);
// Sets one flag by its name without dashes ("channels", "record-size", ...), as --sweep does.
Status ApplyFlag(BenchFlags* flags, const std::string& name, const std::string& value);
const char* BenchUsage();
// Fills flags->secret (when auth may be on: --auth on, or a sweep over auth): the file, the
// state directory's secret, or a random one. The errors of control::FindSecret (a missing
// secret names both options; a group/other-readable file names the chmod): exit 2.
// REQUIRES: called before any fork, so both processes share the secret.
Status ResolveBenchSecret(BenchFlags* flags);

}  // namespace sluice::bench
