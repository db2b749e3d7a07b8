// Daemon: everything sluiced is, minus main(): a ShuffleEnvironment listening on one port for
// shuffle data and control messages, the jobs it runs (tools/daemon/job_runner.h), its stats
// and metrics, and a graceful shutdown. Tests run daemons in-process through this class.
//
// Control requests arrive on the environment's loop thread and are served in order on the
// daemon's control thread (job start can wait on the network; the loop must not). Ended jobs
// are reaped there too: their runner is destroyed (every segment goes home) and their final
// status kept for later JobStatus requests (the last 256).
//
// Security (issue 11): every connection is authenticated, on every address (the secret from
// auth_secret_file, else <state_dir>/auth_secret, created 0600 on first start), and so is every
// request to the metrics endpoint (a bearer token of its own, metrics_token_file). A job carries
// a token (JobSpec::token, >= 32 characters): its partitions are served only to readers that
// prove it, and JobStatus and CancelJob must carry it (compared in constant time; a wrong token
// and an unknown job get the same PermissionDenied). Fault hooks
// need enable_fault_injection. Jobs may only name nodes inside allowed_peers. The control queue
// holds at most kMaxQueuedRequests (more: ResourceExhausted at once); jobs' heap outside
// network memory is charged against job_memory at submit; no reply exceeds the frame metadata
// limit (it becomes a ControlResult error instead).
//
// Thread-safe: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "store/partition_store.h"
#include "tools/control/job_spec.h"
#include "tools/daemon/daemon_config.h"
#include "tools/daemon/http_server.h"
#include "tools/daemon/job_runner.h"
#include "tools/daemon/local_writer_service.h"
#include "tools/daemon/metrics.h"

namespace sluice::daemon {

struct ShutdownReport {
  uint32_t jobs_finished = 0;   // ended on their own within the grace period
  uint32_t jobs_cancelled = 0;  // still running when it passed
  uint64_t leaked_segments = 0; // not back in the pool after everything was released
  // Task threads that did not return after their job was cancelled (blocked in I/O): the
  // shutdown did not wait for them. Their jobs' segments count as leaked; the process should
  // exit without destroying the Daemon while this is not 0.
  uint32_t stuck_tasks = 0;
};

// Control requests queued for the control thread at most; more are refused at once.
inline constexpr size_t kMaxQueuedRequests = 64;

// Wraps a control reply so that a message over the frame's 64 KiB metadata
// (control::kMaxControlMessageBytes) is sent as a ControlResult error naming the sizes instead
// (a frame that large would be refused by the transport). Callable like the reply it wraps.
shuffle::ControlReply LimitReplySize(shuffle::ControlReply reply, const std::string& node_name);

class Daemon final : public shuffle::ControlService {
 public:
  // Reads the secret file, creates the pool (admission of network_memory) and starts
  // listening. Errors name the option.
  static Result<std::unique_ptr<Daemon>> Start(const DaemonConfig& config);
  ~Daemon() override;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  uint16_t port() const { return env_->port(); }
  // The port of GET /metrics and /healthz (metrics_listen), 0 when not served.
  uint16_t metrics_port() const { return http_ ? http_->port() : 0; }
  // False once Shutdown began (/healthz answers 503 from then on).
  bool serving() const { return !shutting_down_.load(std::memory_order_acquire); }

  // Applies the reloadable settings of `config` (SIGHUP): allowed_peers, job_memory and
  // max_line_bytes (jobs submitted afterwards see them; running jobs keep theirs); the caller
  // applies log_level and metrics_interval_ms. Everything else must equal the running
  // configuration: InvalidArgument naming the first option that differs (restart to change it),
  // and nothing is applied.
  Status Reload(const DaemonConfig& config);
  const std::string& node_name() const { return node_name_; }

  void OnControlRequest(schema::MessageType type, std::span<const uint8_t> message,
                        const std::string& peer, shuffle::ControlReply reply) override;

  control::NodeStats Stats();
  // Running jobs, then the remembered ended ones (newest first): ids, states, counts, no tokens.
  control::JobList ListJobs();
  std::string Prometheus();

  // The external shuffle store (issue 13): writers append to it, readers are served from it
  // through the server ("ext/..." partition ids). Null after Shutdown.
  store::PartitionStore* store() { return store_.get(); }

  // Tests only: runs first on every task thread of jobs started afterwards.
  void SetTaskHookForTesting(std::function<void()> hook);

  // --- External shuffle: the local write path (issue 13, extwrite) ---
  // Starts the local writer service (config.local_socket, default <state_dir>/sluiced-<port>.sock)
  // over `store`, which must outlive the daemon's Shutdown. Call after the store exists; a
  // local_socket of "off" starts nothing. Shutdown stops it first (writers not committed are
  // aborted), before the store goes.
  Status StartLocalWriters(const DaemonConfig& config, store::PartitionStore* store);
  // Counters of the local writer service (zeros when it does not run).
  LocalWriterStats LocalWriters() const;
  // The local socket's path, "" when the service does not run.
  std::string local_socket() const;

  // Stops accepting connections, lets running jobs end within `grace`, cancels the rest
  // (reason "daemon shutting down"), closes every connection and checks the pool. Idempotent:
  // later calls return the first report.
  ShutdownReport Shutdown(std::chrono::milliseconds grace);

 private:
  struct Request {
    schema::MessageType type;
    std::vector<uint8_t> message;
    std::string peer;
    shuffle::ControlReply reply;
  };

  struct EndedJob {
    control::JobStatus status;
    std::string token;
  };

  explicit Daemon(const DaemonConfig& config);
  void ControlLoop();
  void Serve(Request& r);
  Status StartStore(const DaemonConfig& config);  // external store (issue 13)
  void ServeSubmit(Request& r);
  void ServeJobStatus(Request& r);
  void ServeCancel(Request& r);
  void ServeCutConnections(Request& r);
  // Checks a submit against the daemon (token, duplicates, allowed_peers, limits, job memory);
  // mu_ held.
  Status CheckSubmitLocked(const control::JobSpec& spec, uint32_t node, uint64_t heap_bytes);
  // Whether `token` is the token of job `id` (running or ended); mu_ held. Constant time.
  bool TokenMatchesLocked(const std::string& id, const std::string& token);
  Status DeniedJob(const std::string& id) const;
  // Waits a few seconds at most for cancelled runners; keeps the ones whose threads are stuck
  // in stuck_. Returns how many task threads did not stop.
  uint32_t AwaitCancelled(std::map<std::string, std::unique_ptr<JobRunner>>& runners);
  void ReapEndedJobs();
  void RecordEnded(const control::JobStatus& st, const std::string& token);
  JobCounters Counters();
  std::string CreditDump();

  DaemonConfig config_;  // reloadable fields (see Reload) read and written under mu_
  std::string node_name_;
  std::unique_ptr<shuffle::ShuffleEnvironment> env_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> queue_;
  bool stopping_ = false;
  bool accepting_jobs_ = true;
  std::map<std::string, std::unique_ptr<JobRunner>> running_;
  std::map<std::string, uint64_t> job_heap_;  // heap charged per running job (job_memory)
  uint64_t job_heap_charged_ = 0;
  std::vector<Cidr> allowed_peers_;
  std::function<void()> task_hook_;
  std::map<std::string, EndedJob> ended_;
  std::deque<std::string> ended_order_;
  JobCounters ended_counters_;  // succeeded/failed/cancelled and records of ended jobs

  std::mutex shutdown_mu_;
  std::optional<ShutdownReport> shutdown_;
  // Runners whose threads did not stop at shutdown: destroyed (joined) with the Daemon.
  std::vector<std::unique_ptr<JobRunner>> stuck_;
  std::thread control_thread_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<uint64_t> http_on_data_port_{0};
  std::unique_ptr<store::PartitionStore> store_;  // external store; destroyed in Shutdown
  // External shuffle, local write path (issue 13, extwrite): the service and its sink.
  std::unique_ptr<WriterSink> writer_sink_;
  std::unique_ptr<LocalWriterService> local_writers_;
  std::unique_ptr<HttpServer> http_;  // last: stopped first, before what its handlers read
};

}  // namespace sluice::daemon
