// sluicectl plan: the memory model as a command. Per node of a job file: the exact minimum and
// the recommended network memory (per gate and per partition), and the job heap charge
// (sluiced's job_memory), from the same functions sluiced admits jobs with. With --rtt and
// --throughput, bandwidth-delay sizing (buffer::PlanBandwidthDelay): buffers per channel and what
// wide gates and debloating change.
#include <cstdio>
#include <cstdlib>

#include "buffer/memory_estimate.h"
#include "tools/control/job_file.h"
#include "tools/control/sluicectl_common.h"
#include "tools/daemon/job_runner.h"

namespace sluice::control::ctl {
namespace {

using ULL = unsigned long long;

struct PlanArgs {
  std::string file;
  bool offline = false;                         // do not ask the nodes
  buffer::CreditOptions credit;                 // used for nodes that cannot be asked
  uint64_t max_line_bytes = 1u << 20;           // sluiced --max-line-bytes default
  // Bandwidth-delay sizing: both or neither.
  std::string rtt;                              // "2ms", "250us", "0.1s" (plain: ms)
  uint64_t throughput = 0;                      // bytes per second per channel
  uint32_t channels = 1;                        // remote channels of the gate
  std::string debloat_target = "1s";
};

// "2ms", "250us", "0.5s", "3" (milliseconds): seconds, or an error naming `flag`.
Result<double> ParseDuration(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  const std::string unit = end ? std::string(end) : std::string();
  double scale = -1;
  if (unit.empty() || unit == "ms") scale = 1e-3;
  if (unit == "us") scale = 1e-6;
  if (unit == "s") scale = 1;
  if (end == v.c_str() || scale < 0 || !(x >= 0) || x > 3600) {
    return InvalidArgument(flag + " wants a duration such as 2ms, 250us or 0.5s, got '" + v +
                           "'");
  }
  return x * scale;
}

// The bandwidth-delay section: buffers per channel for R over RTT, and what wide gates and
// debloating change in the minimum and the recommendation.
int PrintBandwidthDelay(const PlanArgs& a) {
  auto rtt = ParseDuration("--rtt", a.rtt);
  if (!rtt.ok()) return Refuse(rtt.status());
  auto target = ParseDuration("--debloat-target", a.debloat_target);
  if (!target.ok()) return Refuse(target.status());
  buffer::BandwidthDelayInput in;
  in.throughput_bytes_per_s = static_cast<double>(a.throughput);
  in.rtt_s = *rtt;
  in.channels = a.channels;
  in.debloat_target_s = *target;
  const buffer::BandwidthDelayPlan p = buffer::PlanBandwidthDelay(in, a.credit);
  std::printf("bandwidth-delay sizing: %llu bytes/s per channel over an RTT of %s, a gate of %u "
              "remote channels, segment size %u, debloat_target %s\n",
              ULL(a.throughput), a.rtt.c_str(), a.channels, a.credit.segment_size,
              a.debloat_target.c_str());
  std::fputs(p.ToString(a.credit.segment_size).c_str(), stdout);
  std::printf("recommended buffers_per_channel = %u\n", p.buffers_per_channel);
  return tools::kExitOk;
}

// The credit options of node `i`: from its StatsResponse when it answers, else the flags'.
// *source says which.
buffer::CreditOptions NodeCredit(const JobSpec& spec, uint32_t i, const PlanArgs& a,
                                 const Result<ControlClientOptions>& options,
                                 std::string* source) {
  buffer::CreditOptions c = a.credit;
  *source = "flags (--segment-size " + std::to_string(c.segment_size) +
            ", --buffers-per-channel " + std::to_string(c.buffers_per_channel) +
            ", --floating-per-gate " + std::to_string(c.floating_per_gate) + ")";
  if (a.offline || !options.ok()) return c;
  auto client = ConnectTo(spec.nodes[i], *options);
  if (!client.ok()) {
    *source += "; the node did not answer: " + client.status().message();
    return c;
  }
  auto stats = (*client)->GetStats();
  if (!stats.ok() || stats->buffers_per_channel == 0) {
    *source += "; the node did not report its credit options";
    return c;
  }
  c.segment_size = (*client)->segment_size();
  c.buffers_per_channel = stats->buffers_per_channel;
  c.floating_per_gate = stats->floating_per_gate;
  *source = "the node (segment size " + std::to_string(c.segment_size) +
            " from its handshake, buffers_per_channel " + std::to_string(c.buffers_per_channel) +
            ", floating_per_gate " + std::to_string(c.floating_per_gate) + ")";
  return c;
}

int RunJobPlan(const Globals& g, const PlanArgs& a);

int RunPlan(const Globals& g, const PlanArgs& a) {
  const bool bdp = !a.rtt.empty() || a.throughput > 0;
  if (bdp && (a.rtt.empty() || a.throughput == 0)) {
    return Refuse(InvalidArgument("plan: --rtt and --throughput go together (e.g. --rtt 2ms "
                                  "--throughput 100m)"));
  }
  if (a.file.empty()) {
    if (!bdp) {
      return Refuse(InvalidArgument("plan needs a job file, or --rtt and --throughput"));
    }
    return PrintBandwidthDelay(a);
  }
  const int rc = RunJobPlan(g, a);
  if (rc != tools::kExitOk || !bdp) return rc;
  std::printf("\n");
  return PrintBandwidthDelay(a);
}

int RunJobPlan(const Globals& g, const PlanArgs& a) {
  auto spec = LoadJobFile(a.file);
  if (!spec.ok()) return Refuse(spec.status());
  if (spec->job_id.empty()) spec->job_id = "plan";
  if (Status st = daemon::ValidateJobSpec(*spec); !st.ok()) {
    return Refuse(Status(st.code(), "job file " + a.file + ": " + st.message()));
  }
  const auto options = a.offline ? Result<ControlClientOptions>(ControlClientOptions{})
                                 : ClientOptions(g);
  uint64_t total_min = 0;
  uint64_t total_rec = 0;
  for (uint32_t i = 0; i < spec->nodes.size(); ++i) {
    std::string source;
    const buffer::CreditOptions credit = NodeCredit(*spec, i, a, options, &source);
    const daemon::JobMemoryEstimate e =
        daemon::EstimateJobMemory(*spec, i, credit, a.max_line_bytes);
    std::printf("node %u (%s): credit options from %s\n", i, spec->nodes[i].c_str(),
                source.c_str());
    std::fputs(e.network.ToString().c_str(), stdout);
    std::printf("  fixed per-process overhead: 0 segments (every segment of the pool is lent to "
                "a gate or a partition)\n");
    std::printf("  network memory: minimum %llu bytes, recommended %llu bytes\n",
                ULL(e.network.min_bytes), ULL(e.network.recommended_bytes));
    std::printf("  job heap (job_memory charge): %llu bytes\n\n", ULL(e.heap_bytes));
    total_min += e.network.min_bytes;
    total_rec += e.network.recommended_bytes;
  }
  std::printf("all %zu nodes: minimum %llu bytes, recommended %llu bytes of network memory\n",
              spec->nodes.size(), ULL(total_min), ULL(total_rec));
  return tools::kExitOk;
}

}  // namespace

Command AddPlan(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand(
      "plan", "per node, the minimum and recommended network memory for a job file");
  auto a = std::make_shared<PlanArgs>();
  sub->add_option("job_file", a->file, "the job (TOML); optional with --rtt and --throughput");
  sub->add_flag("--offline", a->offline, "do not ask the nodes; use the flags below");
  sub->add_option("--segment-size", a->credit.segment_size,
                  "for nodes that do not answer (default 32k)")
      ->transform(tools::SizeValue());
  sub->add_option("--buffers-per-channel", a->credit.buffers_per_channel,
                  "for nodes that do not answer (default 2)")
      ->check(CLI::Range(1u, 1024u));
  sub->add_option("--floating-per-gate", a->credit.floating_per_gate,
                  "for nodes that do not answer (default 8)")
      ->check(CLI::Range(0u, 1u << 20));
  sub->add_option("--max-line-bytes", a->max_line_bytes,
                  "file jobs: the nodes' max_line_bytes (default 1m)")
      ->transform(tools::SizeValue());
  sub->add_option("--rtt", a->rtt,
                  "bandwidth-delay sizing: round trip time, e.g. 2ms, 250us, 0.1s");
  sub->add_option("--throughput", a->throughput,
                  "bandwidth-delay sizing: bytes per second one channel must carry, e.g. 100m")
      ->transform(tools::SizeValue());
  sub->add_option("--channels", a->channels,
                  "bandwidth-delay sizing: remote channels of the gate (default 1)")
      ->check(CLI::Range(1u, 1u << 24));
  sub->add_option("--debloat-target", a->debloat_target,
                  "bandwidth-delay sizing: debloating's in-flight time target (default 1s)");
  sub->add_option("--wide-threshold", a->credit.wide_threshold,
                  "a gate of more remote channels is wide: no exclusive buffers (default 1024; "
                  "0 never)");
  sub->add_option("--wide-gate-buffers", a->credit.wide_gate_buffers,
                  "the floating budget of a wide gate (default 512)")
      ->check(CLI::Range(1u, 1u << 20));
  return {sub, [&g, a] { return RunPlan(g, *a); }};
}

}  // namespace sluice::control::ctl
