// Cluster: the sluiced processes of one harness run. Each daemon is fork/exec'ed with its own
// port (--port 0 --port-file), its stderr in <run_dir>/node-<i>.log, its state directory
// <run_dir>/node-<i>.state, optionally inside a
// network namespace, in its own process group and with PR_SET_PDEATHSIG so it dies with the
// harness. The destructor SIGKILLs and reaps whatever still runs.
//
// Thread-compatible.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/control/control_client.h"

namespace sluice::harness {

class NetnsTopology;

struct DaemonConfig {
  std::string sluiced;
  std::string run_dir;
  std::vector<std::string> args;  // passed to every daemon
  std::string secret_file;        // --auth-secret-file of every daemon; empty: none
  // Every daemon gets --state-dir <run_dir>/node-<i>.state (made 0700), so nothing it keeps
  // lands in the system's /var/lib/sluice.
  bool state_dirs = true;
  std::string working_dir;        // the daemons' cwd; empty: the harness's
  const NetnsTopology* netns = nullptr;
  control::ControlClientOptions client;
};

struct Node {
  int index = 0;
  pid_t pid = -1;
  std::string host;
  uint16_t port = 0;
  std::string log_path;
  std::string port_file;
  bool alive = false;    // not yet reaped
  bool stopped = false;  // SIGSTOPped by a fault
  int wait_status = 0;   // raw waitpid status once reaped
  std::string address() const { return host + ":" + std::to_string(port); }
};

class Cluster {
 public:
  explicit Cluster(DaemonConfig config) : config_(std::move(config)) {}
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Launches n daemons and waits until each wrote its port file and answers a control
  // Connect, all within `deadline`. Errors name the node and point at its log.
  Status Start(int n, std::chrono::milliseconds deadline);

  std::vector<Node>& nodes() { return nodes_; }
  const Node& node(int i) const { return nodes_[static_cast<size_t>(i)]; }
  int size() const { return static_cast<int>(nodes_.size()); }

  Result<std::unique_ptr<control::ControlClient>> Connect(int i) const;
  Result<std::unique_ptr<control::ControlClient>> Connect(
      int i, const control::ControlClientOptions& options) const;

  // Sends a signal; SIGKILL also reaps the process.
  void Signal(int i, int sig);
  // Reaps node i if it exited; true when it is gone.
  bool Reap(int i, std::chrono::milliseconds wait);
  // SIGTERMs every live node and waits up to `deadline` for each; every node that does not
  // exit 0 in time yields an error (then it is SIGKILLed).
  std::vector<std::string> Shutdown(std::chrono::milliseconds deadline);

  // The last lines of node i's log, for error messages.
  std::string LogTail(int i, size_t lines = 5) const;

 private:
  Status Launch(int i);
  DaemonConfig config_;
  std::vector<Node> nodes_;
};

// "exit 0", "exit 3", "signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

}  // namespace sluice::harness
