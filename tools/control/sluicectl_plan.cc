// sluicectl plan: the memory model as a command. Per node of a job file: the exact minimum and
// the recommended network memory (per gate and per partition), and the job heap charge
// (sluiced's job_memory), from the same functions sluiced admits jobs with.
#include <cstdio>

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
};

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

int RunPlan(const Globals& g, const PlanArgs& a) {
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
  sub->add_option("job_file", a->file, "the job (TOML)")->required();
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
  return {sub, [&g, a] { return RunPlan(g, *a); }};
}

}  // namespace sluice::control::ctl
