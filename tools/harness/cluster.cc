#include "tools/harness/cluster.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <sstream>
#include <thread>

#include "tools/harness/netns.h"
#include "tools/harness/process_util.h"

namespace sluice::harness {
namespace {

using Clock = std::chrono::steady_clock;

std::optional<uint16_t> ReadPort(const std::string& path) {
  auto text = ReadWholeFile(path);
  if (!text.ok() || text->empty()) return std::nullopt;
  char* end = nullptr;
  unsigned long v = std::strtoul(text->c_str(), &end, 10);
  if (end == text->c_str() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

}  // namespace

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  }
  return "status " + std::to_string(status);
}

Cluster::~Cluster() {
  for (auto& n : nodes_) {
    if (!n.alive) continue;
    kill(n.pid, SIGKILL);
    int st = 0;
    while (waitpid(n.pid, &st, 0) < 0 && errno == EINTR) {
    }
    n.alive = false;
    n.wait_status = st;
  }
}

Status Cluster::Launch(int i) {
  Node n;
  n.index = i;
  n.host = config_.netns != nullptr ? config_.netns->node_address(i) : "127.0.0.1";
  n.log_path = config_.run_dir + "/node-" + std::to_string(i) + ".log";
  n.port_file = config_.run_dir + "/node-" + std::to_string(i) + ".port";
  std::vector<std::string> args = {config_.sluiced,  "--listen",    n.host,
                                   "--port",         "0",           "--port-file",
                                   n.port_file,      "--node-name", "node" + std::to_string(i)};
  if (config_.state_dirs) {
    const std::string state = config_.run_dir + "/node-" + std::to_string(i) + ".state";
    if (mkdir(state.c_str(), 0700) != 0 && errno != EEXIST) {
      return IoError("cannot create " + state + ": " + std::strerror(errno));
    }
    args.insert(args.end(), {"--state-dir", state});
  }
  if (!config_.secret_file.empty()) {
    args.push_back("--auth-secret-file");
    args.push_back(config_.secret_file);
  }
  args.insert(args.end(), config_.args.begin(), config_.args.end());
  std::string ns_path = config_.netns != nullptr ? "/run/netns/" + config_.netns->ns_name(i) : "";

  int log_fd = open(n.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return IoError("cannot create " + n.log_path + ": " + std::strerror(errno));
  {
    std::string cmd;
    for (const auto& a : args) cmd += a + " ";
    cmd = "# sluice-harness: " + cmd + "\n";
    ssize_t ignored = write(log_fd, cmd.data(), cmd.size());
    (void)ignored;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string workdir = config_.working_dir;
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return IoError(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    if (!ns_path.empty()) {
      int fd = open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        static const char kMsg[] = "sluice-harness: cannot enter the network namespace\n";
        ssize_t ignored = write(log_fd, kMsg, sizeof kMsg - 1);
        (void)ignored;
        _exit(125);
      }
    }
    if (!workdir.empty() && chdir(workdir.c_str()) != 0) {
      static const char kMsg[] = "sluice-harness: cannot enter the daemons' working directory\n";
      ssize_t ignored = write(log_fd, kMsg, sizeof kMsg - 1);
      (void)ignored;
      _exit(125);
    }
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    static const char kMsg[] = "sluice-harness: exec of sluiced failed\n";
    ssize_t ignored = write(log_fd, kMsg, sizeof kMsg - 1);
    (void)ignored;
    _exit(127);
  }
  close(log_fd);
  n.pid = pid;
  n.alive = true;
  nodes_.push_back(std::move(n));
  return Status::Ok();
}

Status Cluster::Start(int n, std::chrono::milliseconds deadline) {
  if (access(config_.sluiced.c_str(), X_OK) != 0) {
    return InvalidArgument("sluiced not found or not executable at " + config_.sluiced +
                           " (build the sluiced target, or pass --sluiced PATH)");
  }
  for (int i = 0; i < n; ++i) {
    Status s = Launch(i);
    if (!s.ok()) return s;
  }
  const auto until = Clock::now() + deadline;
  for (int i = 0; i < n; ++i) {
    Node& node = nodes_[static_cast<size_t>(i)];
    // The port file, read twice to be sure it is complete.
    while (true) {
      if (Reap(i, std::chrono::milliseconds(0))) {
        if (WIFEXITED(node.wait_status) && WEXITSTATUS(node.wait_status) == 2) {
          // sluiced exits 2 on options it refuses: a usage error, its log names the option.
          return InvalidArgument("node " + std::to_string(i) + ": sluiced refused its options " +
                                 "(exit 2; fix the --daemon-arg or daemon flag it names); " +
                                 "its log " + node.log_path + " ends with:\n" + LogTail(i));
        }
        return IoError("node " + std::to_string(i) + " (sluiced pid " + std::to_string(node.pid) +
                       ") exited at start with " + DescribeWaitStatus(node.wait_status) +
                       "; its log " + node.log_path + " ends with:\n" + LogTail(i));
      }
      auto a = ReadPort(node.port_file);
      if (a) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (ReadPort(node.port_file) == a) {
          node.port = *a;
          break;
        }
      }
      if (Clock::now() > until) {
        return TimeoutError("node " + std::to_string(i) + " wrote no port file " + node.port_file +
                            " within " + std::to_string(deadline.count()) + " ms; log " +
                            node.log_path + " ends with:\n" + LogTail(i));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // Reachable: a control connection (with the handshake) succeeds.
    while (true) {
      auto c = Connect(i);
      if (c.ok()) break;
      if (c.status().code() == StatusCode::kPermissionDenied || Clock::now() > until) {
        return Status(c.status().code(), "node " + std::to_string(i) + " at " + node.address() +
                                             " is not reachable: " + c.status().message());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<control::ControlClient>> Cluster::Connect(int i) const {
  return Connect(i, config_.client);
}

Result<std::unique_ptr<control::ControlClient>> Cluster::Connect(
    int i, const control::ControlClientOptions& options) const {
  const Node& n = node(i);
  return control::ControlClient::Connect(n.host, n.port, options);
}

void Cluster::Signal(int i, int sig) {
  Node& n = nodes_[static_cast<size_t>(i)];
  if (!n.alive) return;
  kill(n.pid, sig);
  if (sig == SIGSTOP) n.stopped = true;
  if (sig == SIGCONT) n.stopped = false;
  if (sig == SIGKILL) Reap(i, std::chrono::milliseconds(5000));
}

bool Cluster::Reap(int i, std::chrono::milliseconds wait) {
  Node& n = nodes_[static_cast<size_t>(i)];
  if (!n.alive) return true;
  const auto until = Clock::now() + wait;
  while (true) {
    int st = 0;
    pid_t r = waitpid(n.pid, &st, WNOHANG);
    if (r == n.pid) {
      n.alive = false;
      n.stopped = false;
      n.wait_status = st;
      return true;
    }
    if (r < 0 && errno != EINTR) {
      n.alive = false;
      return true;
    }
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::vector<std::string> Cluster::Shutdown(std::chrono::milliseconds deadline) {
  std::vector<std::string> errors;
  for (auto& n : nodes_) {
    if (!n.alive) continue;
    if (n.stopped) kill(n.pid, SIGCONT);
    kill(n.pid, SIGTERM);
  }
  const auto until = Clock::now() + deadline;
  for (auto& n : nodes_) {
    if (!n.alive) continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    if (!Reap(n.index, std::max(left, std::chrono::milliseconds(0)))) {
      errors.push_back("node " + std::to_string(n.index) + " (" + n.address() + ", pid " +
                       std::to_string(n.pid) + ") did not exit within " +
                       std::to_string(deadline.count() / 1000) +
                       " s after SIGTERM; killed it. Log: " + n.log_path);
      Signal(n.index, SIGKILL);
      continue;
    }
    if (!WIFEXITED(n.wait_status) || WEXITSTATUS(n.wait_status) != 0) {
      errors.push_back("node " + std::to_string(n.index) + " (" + n.address() +
                       ") ended with " + DescribeWaitStatus(n.wait_status) +
                       " after SIGTERM, expected exit 0; its log " + n.log_path + " ends with: " +
                       LogTail(n.index, 3));
    }
  }
  return errors;
}

std::string Cluster::LogTail(int i, size_t lines) const {
  auto text = ReadWholeFile(node(i).log_path);
  if (!text.ok()) return "(no log)";
  std::deque<std::string> tail;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string out;
  for (const auto& l : tail) out += (out.empty() ? "" : "\n") + l;
  return out;
}

}  // namespace sluice::harness
