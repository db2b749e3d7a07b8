// ExternalJob: sluice-harness --external, the external shuffle service (issue 13) driven by
// separate processes. After HarnessRun started the daemons, it runs WRITER processes (map
// tasks: this binary as `--ext-task write`, sluice::client::Writer into its host's daemon over
// the local socket), then READER processes (`--ext-task read`, sluice::client::Reader, one
// subpartition each, from every daemon), verifies every record exactly once and in order per
// writer per subpartition, releases the job on every daemon (ExtReleaseJob), and checks that
// no spill file is left and every segment is back. Faults: kill-writer, kill-daemon,
// disk-quota (see tools/harness/README.md for the expected outcomes it checks).
//
// Thread-compatible: HarnessRun's thread drives it. Owns its task processes (SIGKILLed and
// reaped when it is destroyed).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tools/harness/ext_task.h"

namespace sluice::harness {

class HarnessRun;
struct Options;

class ExternalJob {
 public:
  explicit ExternalJob(HarnessRun& run);
  ~ExternalJob();
  ExternalJob(const ExternalJob&) = delete;
  ExternalJob& operator=(const ExternalJob&) = delete;

  // Runs the job and its fault; fills the run's report (errors, counts, node rows, extras)
  // and appends what happened to `notes` (the report's `observed`).
  void Run(std::vector<std::string>* notes);

 private:
  struct Task {
    std::string name;  // "writer 3", "reader 1"
    pid_t pid = -1;
    std::string out_path, err_path;
    int wait_status = 0;
    bool done = false;
  };
  struct WriterSpec {
    uint32_t partition = 0;
    uint32_t attempt = 0;
    int node = 0;
    uint64_t records = 0;
    uint64_t pause_after = ~0ull;
    uint32_t credit_timeout_ms = 0;
  };
  struct WriterResult {
    WriterSpec spec;
    bool committed = false;
    std::string map_output;  // EncodeMapOutput line
    std::vector<uint64_t> records, bytes;  // per subpartition
    std::string error;
  };
  struct ReaderResult {
    uint32_t subpartition = 0;
    bool ended = false;  // read to the end of data
    std::string error;
    std::map<std::pair<uint32_t, uint32_t>, ReadTally> got;  // (partition, attempt)
    ReadChecks checks;
  };

  // Processes.
  Task Spawn(const std::string& name, const std::vector<std::string>& args);
  bool Reap(Task& t, double wait_s);
  // Waits until every task ended (SIGKILLs what is left after `deadline_s`).
  void WaitAll(std::vector<Task>& tasks, double deadline_s);
  // Waits until `t` printed `line` (true), or ended / `deadline_s` passed (false).
  bool WaitForLine(Task& t, const std::string& line, double deadline_s);
  std::string Output(const Task& t) const;
  std::string Describe(const Task& t) const;

  // Tasks.
  std::vector<std::string> CommonArgs() const;
  Task StartWriter(const WriterSpec& w);
  WriterResult WriterOutcome(const WriterSpec& w, Task& t);
  Task StartReader(uint32_t subpartition, const std::vector<std::string>& map_outputs,
                   uint64_t pause_after = ~0ull);
  ReaderResult ReaderOutcome(uint32_t subpartition, Task& t);
  std::string PlannedOutput(const WriterSpec& w) const;
  std::string SocketOf(int node) const;

  // Phases.
  std::vector<WriterSpec> PlanWriters() const;
  std::vector<WriterResult> RunWriters(const std::vector<WriterSpec>& specs);
  std::vector<ReaderResult> RunReaders(const std::vector<std::string>& outputs);
  // Pipelined: writers and readers at once (the readers start once every writer opened).
  void RunPipelined(const std::vector<WriterSpec>& specs, std::vector<WriterResult>* writers,
                    std::vector<ReaderResult>* readers);
  // Compares what the readers got with what the named writers committed.
  void Verify(const std::vector<WriterResult>& named, const std::vector<ReaderResult>& readers,
              bool count_in_report);
  void KillWriterFault(std::vector<WriterSpec>* specs);
  void KillDaemonFault(const std::vector<WriterResult>& writers);
  void DiskQuotaFault(uint32_t partition);
  std::vector<WriterResult> Named(const std::vector<WriterResult>& writers) const;
  // Releases the job on `nodes`, then checks spill files and segments.
  void ReleaseAndCheck(const std::vector<int>& nodes);
  uint64_t SpillFileBytes(int node, int* files) const;
  // The map output's state on `node` ("absent", "unreachable", "error ..." otherwise); *held:
  // its bytes in memory and on disk.
  std::string ListState(int node, uint32_t partition, uint32_t attempt,
                        uint64_t* held = nullptr);
  void AddNodeReports(const std::vector<WriterSpec>& specs);

  HarnessRun& run_;
  const Options& o_;
  std::string self_;     // this executable
  std::string job_;
  std::string token_file_;
  std::string token_;
  uint32_t subpartitions_ = 0;
  int task_seq_ = 0;
  std::vector<pid_t> live_;  // spawned and not reaped
  std::vector<std::string> notes_;
  std::map<int, int64_t> leaks_;  // segments not back, per node checked
};

}  // namespace sluice::harness
