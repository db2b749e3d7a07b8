// sluice-harness command line: what to start (daemons, namespaces), which job to run and which
// fault to inject. Plain value types; ParseOptions never exits the process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/control/job_spec.h"

namespace sluice::harness {

enum class Fault {
  kNone,
  kKillConsumer,   // SIGKILL a node that runs only consumers, mid-shuffle
  kKillProducer,   // SIGKILL a node that runs only producers, mid-shuffle
  kStallConsumer,  // SIGSTOP a consumer-only node for --stall-seconds, then SIGCONT
  kCutConnection,  // ControlClient::CutConnections on node 0, mid-shuffle
  kDrop,           // --netns only: random packet loss in every daemon namespace
  kSlowConsumer,   // pointwise, one consumer throttled to a tenth of the calibrated rate
  kGarbage,        // hostile client: garbage bytes to a daemon before the job
  kSigterm,        // SIGTERM a node mid-shuffle: it must exit 0 with every segment back
  kWrongSecret,    // --auth: a wrong and a missing secret must be refused
  // --external only (the external shuffle service, tools/harness/external_job.h):
  kKillWriter,     // SIGKILL map 0's writer mid-partition; a re-run attempt then commits
  kKillDaemon,     // blocking: SIGKILL the last daemon while readers read from it
  kDiskQuota,      // blocking: a writer needing more than spill_max_bytes waits and fails
};
// True for the faults of --external.
bool ExternalFault(Fault f);
// The --fault value of `f` (tools/harness/fault_plan.cc).
const char* FaultName(Fault f);

struct Options {
  // Daemons.
  int nodes = 3;
  std::string sluiced;  // empty: ../daemon/sluiced next to this executable
  bool keep_logs = false;
  std::string network_memory;  // passed to every sluiced (--network-memory), empty = its default
  std::string segment_size;    // passed to every sluiced (--segment-size), empty = its default
  uint32_t segment_size_bytes = 32 * 1024;
  int io_threads = 0;  // 0 = the daemon's default
  std::string log_level;
  std::vector<std::string> daemon_args;  // --daemon-arg, passed through verbatim
  // Authentication is always on, as in sluiced. The secret: auth_secret_file, else
  // <state_dir>/auth_secret when state_dir is given, else a random one written 0600 into the
  // run directory.
  std::string auth_secret_file;
  std::string state_dir;
  std::string secret;  // read by main from the two above (FindSecret); empty: generate one

  // Network namespaces (root only).
  bool netns = false;
  double rate_mbit = 0;      // tc tbf on every veth; 0 = unlimited
  double drop_percent = -1;  // nftables random drop in every daemon namespace; <0 = none
  double delay_ms = 0;       // the daemons' fault shim: hold every write this long
  double corrupt_ppm = 0;    // the daemons' fault shim: corrupt this many per million buffers

  // Job.
  control::JobKind kind = control::JobKind::kGenerated;
  int producers = 0;  // 0 = one per node (slow-consumer: two per node)
  int consumers = 0;
  uint64_t records_per_producer = 0;  // 0 = derived from total_bytes
  uint64_t total_bytes = 1ull << 30;
  uint32_t record_min = 100;
  uint32_t record_max = 1000;
  control::KeyDistribution keys = control::KeyDistribution::kUniform;
  double zipf_s = 1.1;
  control::Partitioner partitioner = control::Partitioner::kKeyHash;
  control::Pattern pattern = control::Pattern::kAllToAll;
  bool pattern_set = false;
  uint64_t seed = 1;
  std::vector<std::string> inputs;
  char delimiter = ',';
  uint32_t key_field = 0;
  std::string output_dir;
  bool checksums = false;
  double timeout_s = 600;

  // External shuffle service job (--external): writer and reader processes.
  bool external = false;
  bool ext_pipelined = false;  // --mode pipelined (default blocking)
  int writers = 0;             // map tasks; 0 = two per node
  int readers = 0;             // reduce tasks = subpartitions; 0 = one per node
  int attempts = 1;            // map 0 commits this many attempts; readers name the last
  uint64_t spill_quota = 0;    // disk-quota: the daemons' spill_max_bytes

  // Faults.
  Fault fault = Fault::kNone;
  double fault_at = 0.3;           // fraction of the records moved before a mid-shuffle fault
  double stall_seconds = 5;        // stall-consumer
  double fault_deadline_s = 20;    // affected channels must fail / nodes end within this
  double shutdown_deadline_s = 20; // each daemon must exit 0 within this after SIGTERM
  uint64_t rss_slack = 128ull << 20;  // stall-consumer: peak RSS <= network memory + this

  // Output.
  bool json = false;
  bool quiet = false;  // no progress line
};

// Parses argv with CLI11 (tools/common/cli.h conventions) and checks the combination. Returns
// -1 when the run should go on (*out filled), else the exit code to return now: 0 after --help
// or --version (printed), 2 after a usage error (one line on stderr naming the flag).
int ParseOptions(int argc, char** argv, Options* out);
std::string UsageText();

}  // namespace sluice::harness
