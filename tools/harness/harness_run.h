// HarnessRun: one sluice-harness invocation. Starts the daemons (optionally in network
// namespaces), runs the job and the fault, checks every expected outcome, stops the daemons and
// fills a Report. Everything it made is torn down when it is destroyed, also after an error or
// an interrupt (SIGINT/SIGTERM to the harness set a flag the polling loop checks).
// Files: harness_run.cc (setup, the run, its report), job_monitor.cc (driving one job:
// submit, poll, fault trigger, settle, tally, leak check), fault_plan.h (what each fault
// does and expects), external_job.h (--external: writer and reader processes).
//
// Thread-compatible: one thread drives it.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tools/control/control_client.h"
#include "tools/harness/cluster.h"
#include "tools/harness/fault_plan.h"
#include "tools/harness/harness_options.h"
#include "tools/harness/netns.h"
#include "tools/harness/report.h"

namespace sluice::harness {

// Installs SIGINT/SIGTERM handlers that ask the run to stop, and ignores SIGPIPE.
void InstallSignalHandlers();

class ExternalJob;

class HarnessRun {
 public:
  explicit HarnessRun(Options options) : o_(std::move(options)) {}
  ~HarnessRun();
  HarnessRun(const HarnessRun&) = delete;
  HarnessRun& operator=(const HarnessRun&) = delete;

  // Runs everything and returns the report; report.ok is the exit status.
  Report Run();

 private:
  // Merged status of one job over the nodes that run it.
  struct JobView {
    std::vector<control::JobState> state;  // per job node
    std::vector<std::string> node_error;
    std::map<uint32_t, control::ProducerStatus> producers;
    std::map<uint32_t, control::ConsumerStatus> consumers;
    std::map<uint32_t, double> consumer_end_s;  // seconds after submit when first seen ended
  };
  struct JobOutcome {
    JobView view;
    double seconds = 0;
    bool all_succeeded = false;
    double fault_fired_s = -1;
    std::vector<std::string> errors;
    std::vector<std::string> notes;  // what the fault did, for `observed`
  };
  struct Tally {
    uint64_t sent = 0, received = 0, bytes = 0, lost = 0, duplicated = 0, reordered = 0,
             corrupted = 0;
  };

  // The state of one RunJob polling loop (job_monitor.cc).
  struct JobLoop {
    const control::JobSpec* spec = nullptr;
    const std::vector<int>* ids = nullptr;  // cluster indexes, in spec.nodes order
    std::chrono::steady_clock::time_point start;
    Fault fault = Fault::kNone;
    uint64_t expected = 0;  // records, generated jobs; 0: unknown
    int victim_k = -1;      // the victim as a position in ids
    int victim = -1;        // its cluster index
    std::vector<bool> gone;
    std::set<uint32_t> affected;  // AffectedConsumers of the fault
    std::set<std::string> reported;
    bool fired = false;
    double fired_s = -1;
    double stall_until = -1;
    bool cancel_sent = false;
    double cancel_s = -1;
    double first_failure_s = -1;
    bool victim_exit_checked = false;
    double last_stats_s = -1;
  };

  // What Run() carries from step to step (harness_run.cc).
  struct MainRun {
    std::vector<int> all;  // every node
    Placement placement;
    std::string id_prefix;
    double calibration_rate = 0;  // slow-consumer, MiB/s
    bool skip_main = false;       // the calibration failed
    control::JobSpec spec;
    JobOutcome out;
    std::vector<int> survivors;  // nodes alive after the main job
    std::map<int, int64_t> leaks;
    std::vector<std::string> notes;  // what happened, for `observed`
  };

  // Run()'s steps, in order (harness_run.cc).
  double Calibrate(MainRun& m);
  void RunMainJob(MainRun& m);
  void CheckFaultOutcome(MainRun& m);
  void CheckJobSucceeded(const MainRun& m);
  void CheckPeersNamed(MainRun& m);
  void CheckSlowConsumer(MainRun& m);
  void CheckFileOutput(MainRun& m);
  void AddNodeReports(const MainRun& m);
  void FinishRun(MainRun& m);

  Status Setup();
  // The shared secret (o_.secret, or a random one in <run dir>/secret) for daemons and client.
  Status SetupSecret(DaemonConfig* cfg);
  // File jobs: the daemons' --input-dir/--output-dir root and working directory.
  Status SetupFileRoot(DaemonConfig* cfg);
  // `path` relative to file_root_ ("." for the root itself).
  std::string RelativeToRoot(const std::filesystem::path& path) const;
  control::ControlClient* Client(int node);
  void DropClient(int node) { clients_[static_cast<size_t>(node)].reset(); }

  control::JobSpec MakeSpec(const std::string& job_id, const std::vector<int>& ids,
                            const Placement& placement, uint64_t records_per_producer) const;
  // Submits `spec` to every node of `ids` (cluster indexes, in spec.nodes order) and polls
  // until it ended everywhere; with `inject` the configured fault fires on the way.
  JobOutcome RunJob(const control::JobSpec& spec, const std::vector<int>& ids,
                    const Placement& placement, bool inject);
  // RunJob's steps (job_monitor.cc). SubmitAll: false when a node refused (others cancelled).
  bool SubmitAll(const control::JobSpec& spec, const std::vector<int>& ids, JobOutcome* out);
  void PollNodes(JobLoop& l, double now, JobOutcome* out);
  void PollStats(JobLoop& l, double now, const JobView& view);
  void MaybeFire(JobLoop& l, double now, JobOutcome* out);
  void WatchVictim(JobLoop& l, double now, JobOutcome* out);
  bool SettleAfterFault(JobLoop& l, double now, JobOutcome* out);
  bool JobSettled(JobLoop& l, double now, JobOutcome* out);
  void ReapSigtermVictim(JobLoop& l, JobOutcome* out);
  void CancelOn(const control::JobSpec& spec, const std::vector<int>& ids, const JobView& view,
                const std::string& reason, std::vector<std::string>* errors);
  static Tally Count(const control::JobSpec& spec, const JobView& view);
  // Polls GetStats on each node until every segment is back or `wait` passed; returns the
  // segments still out per node (-1 when the node could not be asked).
  std::map<int, int64_t> CheckLeaks(const std::vector<int>& ids, std::chrono::milliseconds wait,
                                    std::vector<std::string>* errors);
  // A small job on `ids` that must succeed with nothing lost and nothing leaked.
  bool RunFollowUp(const std::vector<int>& ids, std::vector<std::string>* errors);
  void SendGarbage(int node, std::vector<std::string>* errors, std::vector<std::string>* notes);
  void CheckAuthRefusal(int node, std::vector<std::string>* errors,
                        std::vector<std::string>* notes);
  void PrintProgress(const control::JobSpec& spec, const JobView& view, double elapsed,
                     bool final);
  std::string ExpectedOutcome() const;

  // --external: drives writer and reader processes on this run's daemons (external_job.h).
  friend class ExternalJob;

  Options o_;
  std::string run_dir_;
  std::string secret_;
  std::string secret_file_;  // the daemons' --auth-secret-file (absolute)
  // File jobs: the root of every input and of the output directory (absolute, canonical).
  std::filesystem::path file_root_;
  std::vector<std::filesystem::path> input_paths_;  // canonical, in --input order
  std::filesystem::path output_path_;
  std::unique_ptr<NetnsTopology> netns_;
  std::unique_ptr<Cluster> cluster_;
  std::vector<std::unique_ptr<control::ControlClient>> clients_;
  std::vector<control::NodeStats> stats_;  // latest per node
  std::vector<std::string> client_errors_;  // first control error per node
  Report report_;
  // Progress line state.
  double last_print_s_ = -1;
  uint64_t last_print_bytes_ = 0;
  bool progress_tty_ = false;
};

}  // namespace sluice::harness
