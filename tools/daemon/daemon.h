// Daemon: everything sluiced is, minus main(): a ShuffleEnvironment listening on one port for
// shuffle data and control messages, the jobs it runs (tools/daemon/job_runner.h), its stats
// and metrics, and a graceful shutdown. Tests run daemons in-process through this class.
//
// Control requests arrive on the environment's loop thread and are served in order on the
// daemon's control thread (job start can wait on the network; the loop must not). Ended jobs
// are reaped there too: their runner is destroyed (every segment goes home) and their final
// status kept for later JobStatus requests (the last 256).
//
// Thread-safe: every public method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "shuffle/shuffle_environment.h"
#include "tools/control/job_spec.h"
#include "tools/daemon/daemon_config.h"
#include "tools/daemon/job_runner.h"
#include "tools/daemon/metrics.h"

namespace sluice::daemon {

struct ShutdownReport {
  uint32_t jobs_finished = 0;   // ended on their own within the grace period
  uint32_t jobs_cancelled = 0;  // still running when it passed
  uint64_t leaked_segments = 0; // not back in the pool after everything was released
};

class Daemon final : public shuffle::ControlService {
 public:
  // Reads the secret file, creates the pool (admission of network_memory) and starts
  // listening. Errors name the option.
  static Result<std::unique_ptr<Daemon>> Start(const DaemonConfig& config);
  ~Daemon() override;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  uint16_t port() const { return env_->port(); }
  const std::string& node_name() const { return node_name_; }

  void OnControlRequest(schema::MessageType type, std::span<const uint8_t> message,
                        const std::string& peer, shuffle::ControlReply reply) override;

  control::NodeStats Stats();
  std::string Prometheus();

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

  explicit Daemon(const DaemonConfig& config);
  void ControlLoop();
  void Serve(Request& r);
  void ReapEndedJobs();
  void RecordEnded(const control::JobStatus& st);
  JobCounters Counters();
  std::string CreditDump();

  const DaemonConfig config_;
  std::string node_name_;
  std::unique_ptr<shuffle::ShuffleEnvironment> env_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> queue_;
  bool stopping_ = false;
  bool accepting_jobs_ = true;
  std::map<std::string, std::unique_ptr<JobRunner>> running_;
  std::map<std::string, control::JobStatus> ended_;
  std::deque<std::string> ended_order_;
  JobCounters ended_counters_;  // succeeded/failed/cancelled and records of ended jobs

  std::mutex shutdown_mu_;
  std::optional<ShutdownReport> shutdown_;
  std::thread control_thread_;
};

}  // namespace sluice::daemon
