// sluiced: the Sluice shuffle daemon. See `sluiced --help` and README.md.
//
// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT, every segment back), 2 for a bad
// command line or configuration, 1 when it cannot start (port taken, memory), 3 when segments
// were still out at shutdown (a bug: the log names the numbers).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tools/common/conventions.h"
#include "tools/common/fd_io.h"
#include "tools/daemon/daemon.h"
#include "tools/daemon/notify.h"
#include "transport/log.h"

namespace {

using sluice::daemon::CommandLine;
using sluice::daemon::DaemonConfig;

// Writes `text` to `path` atomically (a reader never sees half a file), through a temporary
// file next to it created with O_EXCL | O_NOFOLLOW: a symlink planted under the temporary name
// is removed, never followed. The file gets exactly `mode`, whatever the umask (the packaged
// unit's UMask=0077 would otherwise leave a 0640 file 0600). False with errno on failure.
bool WriteFileAtomically(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  int fd = ::open(tmp.c_str(), kFlags, mode & 0600);  // no wider than the owner's until fchmod
  if (fd < 0 && errno == EEXIST && ::unlink(tmp.c_str()) == 0) {
    fd = ::open(tmp.c_str(), kFlags, mode & 0600);  // what was there (a leftover, a link) is gone
  }
  if (fd < 0) return false;
  const bool written = ::fchmod(fd, mode) == 0 &&
                       sluice::tools::WriteAll(fd, text.data(), text.size());
  const bool closed = ::close(fd) == 0;
  if (written && closed && std::rename(tmp.c_str(), path.c_str()) == 0) return true;
  const int saved = errno;
  ::unlink(tmp.c_str());
  errno = saved;
  return false;
}
// The port files say nothing secret; the metrics file holds what GET /metrics serves only
// with the bearer token: the owner and its group (a textfile collector's, through a setgid
// directory) read it.
constexpr mode_t kPortFileMode = 0644;
constexpr mode_t kMetricsFileMode = 0640;

// The daemon's logger. SIGHUP replaces it with one on a freshly opened log_file (logrotate moved
// the old one away), so every user goes through Get(). Thread-safe.
class LogHolder {
 public:
  std::shared_ptr<spdlog::logger> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    return logger_;
  }
  void Set(std::shared_ptr<spdlog::logger> logger) {
    std::lock_guard<std::mutex> lock(mu_);
    logger_ = std::move(logger);
  }

 private:
  std::mutex mu_;
  std::shared_ptr<spdlog::logger> logger_;
};

LogHolder g_log;

// Throws spdlog::spdlog_ex when log_file cannot be opened.
std::shared_ptr<spdlog::logger> MakeLogger(const DaemonConfig& c) {
  spdlog::sink_ptr sink;
  if (c.log_file.empty()) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(c.log_file, false);
  }
  auto logger = std::make_shared<spdlog::logger>("sluiced", std::move(sink));
  logger->set_level(spdlog::level::from_str(c.log_level));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  logger->flush_on(spdlog::level::trace);  // every line: a daemon logs little, and tail -f shows it
  return logger;
}

void SetLibraryLogLevel(const DaemonConfig& config) {
  sluice::SetLogLevel(config.log_level == "trace" || config.log_level == "debug"
                          ? sluice::LogLevel::kDebug
                          : sluice::LogLevel::kInfo);
}

// The library's log lines go to the daemon's logger.
void InstallLogSink(const DaemonConfig& config) {
  SetLibraryLogLevel(config);
  sluice::SetLogSink([](sluice::LogLevel level, std::string_view m) {
    const auto logger = g_log.Get();
    switch (level) {
      case sluice::LogLevel::kDebug: logger->debug("{}", m); break;
      case sluice::LogLevel::kInfo: logger->info("{}", m); break;
      case sluice::LogLevel::kWarn: logger->warn("{}", m); break;
      case sluice::LogLevel::kError: logger->error("{}", m); break;
    }
  });
}

// SIGHUP: reopens log_file, then reloads the reloadable options from the same command line
// (the file again, flags still override). A configuration that fails to load changes nothing.
void Reload(const std::vector<std::string>& args, sluice::daemon::Daemon& daemon,
            DaemonConfig* running) {
  sluice::daemon::NotifySystemd("RELOADING=1");
  if (!running->log_file.empty()) {
    try {
      g_log.Set(MakeLogger(*running));
    } catch (const spdlog::spdlog_ex& e) {
      g_log.Get()->error("SIGHUP: cannot reopen log_file {}: {}; logging to the old file",
                         running->log_file, e.what());
    }
  }
  const auto logger = g_log.Get();
  auto cl = sluice::daemon::ParseCommandLine(args);
  sluice::Status st = cl.ok() ? daemon.Reload(cl->config) : cl.status();
  if (!st.ok()) {
    logger->error("SIGHUP: configuration not reloaded, the running settings stay: {}",
                  st.message());
  } else {
    if (!sluice::daemon::DiffersOnlyInReloadable(*running, cl->config)) {
      logger->warn("SIGHUP: options other than log_level, metrics_interval_ms, allowed_peers, "
                   "job_memory and max_line_bytes changed; restart sluiced to apply them");
    }
    running->log_level = cl->config.log_level;
    running->metrics_interval_ms = cl->config.metrics_interval_ms;
    running->allowed_peers = cl->config.allowed_peers;
    running->job_memory = cl->config.job_memory;
    running->max_line_bytes = cl->config.max_line_bytes;
    logger->set_level(spdlog::level::from_str(running->log_level));
    SetLibraryLogLevel(*running);
    logger->info("SIGHUP: log file reopened, configuration reloaded (log_level {}, "
                 "metrics_interval_ms {}, allowed_peers {}, job_memory {}, max_line_bytes {})",
                 running->log_level, running->metrics_interval_ms, running->allowed_peers,
                 running->job_memory, running->max_line_bytes);
  }
  sluice::daemon::NotifySystemd("READY=1");
}

std::string AuthLabel(const DaemonConfig& c) {
  if (c.auth == "off") return "off";
  return c.auth_secret_file.empty() ? "on, secret in " + c.state_dir
                                    : "on, secret from " + c.auth_secret_file;
}

// A configuration the daemon cannot use (bad option, unusable secret) exits 2; else 1.
int ExitCodeOf(const sluice::Status& st) {
  return st.code() == sluice::StatusCode::kInvalidArgument ||
                 st.code() == sluice::StatusCode::kPermissionDenied
             ? 2
             : 1;
}

// Writes the port files and announces readiness. False when a port file cannot be written.
bool AnnounceListening(sluice::daemon::Daemon& d, const DaemonConfig& config) {
  const auto logger = g_log.Get();
  const uint16_t port = d.port();
  logger->info("{} listening on {}:{} (network memory {} MiB in {} KiB segments, auth {}, "
               "{} IO thread(s))",
               d.node_name(), config.listen, port, config.network_memory >> 20,
               config.segment_size >> 10, AuthLabel(config), config.io_threads);
  if (d.metrics_port() != 0) {
    logger->info("{} serves GET /metrics and /healthz on http://{}:{}/", d.node_name(),
                 config.metrics_listen.substr(0, config.metrics_listen.rfind(':')),
                 d.metrics_port());
  }
  if (!config.port_file.empty() &&
      !WriteFileAtomically(config.port_file, std::to_string(port) + "\n", kPortFileMode)) {
    logger->error("cannot write port_file {}: {}", config.port_file, std::strerror(errno));
    return false;
  }
  if (!config.metrics_port_file.empty() &&
      !WriteFileAtomically(config.metrics_port_file, std::to_string(d.metrics_port()) + "\n",
                           kPortFileMode)) {
    logger->error("cannot write metrics_port_file {}: {}", config.metrics_port_file,
                  std::strerror(errno));
    return false;
  }
  sluice::daemon::NotifySystemd("READY=1\nSTATUS=listening on port " + std::to_string(port));
  return true;
}

// Serves until SIGTERM or SIGINT (returned); SIGHUP reloads; the metrics file is rewritten.
int WaitForStop(const std::vector<std::string>& args, const sigset_t& signals,
                sluice::daemon::Daemon& d, DaemonConfig* config) {
  while (true) {
    if (!config->metrics_file.empty() &&
        !WriteFileAtomically(config->metrics_file, d.Prometheus(), kMetricsFileMode)) {
      g_log.Get()->warn("cannot write metrics_file {}: {}", config->metrics_file,
                        std::strerror(errno));
    }
    const long ms = config->metrics_file.empty() ? 3600000 : config->metrics_interval_ms;
    timespec ts{ms / 1000, (ms % 1000) * 1000000};
    const int sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) return sig;
    if (sig == SIGHUP) Reload(args, d, config);
  }
}

// Shuts down and returns the exit code (0, or 3 when segments were still out).
int Stop(std::unique_ptr<sluice::daemon::Daemon> daemon, int sig, const DaemonConfig& config) {
  const auto logger = g_log.Get();
  sluice::daemon::NotifySystemd("STOPPING=1");
  logger->info("{} received {}: no new connections, running jobs get {} ms to finish",
               daemon->node_name(), sig == SIGTERM ? "SIGTERM" : "SIGINT",
               config.shutdown_grace_ms);
  const auto report = daemon->Shutdown(std::chrono::milliseconds(config.shutdown_grace_ms));
  if (!config.metrics_file.empty()) {
    WriteFileAtomically(config.metrics_file, daemon->Prometheus(), kMetricsFileMode);
  }
  const std::string name = daemon->node_name();
  if (report.stuck_tasks > 0) {
    // Destroying the daemon would join threads blocked in system calls: exit without it.
    logger->error("{} stopped with {} job threads blocked (not waited for) and {} segments "
                  "still out", name, report.stuck_tasks, report.leaked_segments);
    logger->flush();
    std::_Exit(3);
  }
  daemon.reset();
  if (report.leaked_segments != 0) {
    logger->error("{} stopped with {} segments not returned to the pool (a bug)", name,
                  report.leaked_segments);
    return 3;
  }
  logger->info("{} stopped cleanly: {} jobs finished, {} cancelled, every segment returned",
               name, report.jobs_finished, report.jobs_cancelled);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto cl = sluice::daemon::ParseCommandLine(args);
  if (!cl.ok()) {
    std::fprintf(stderr, "sluiced: %s\n", cl.status().message().c_str());
    return sluice::tools::kExitUsage;
  }
  if (cl->action == CommandLine::Action::kHelp) {
    std::fputs(sluice::daemon::HelpText().c_str(), stdout);
    return 0;
  }
  if (cl->action == CommandLine::Action::kVersion) {
    std::printf("sluiced %s\n", sluice::tools::kVersion);
    return 0;
  }
  DaemonConfig config = cl->config;
  try {
    g_log.Set(MakeLogger(config));
  } catch (const spdlog::spdlog_ex& e) {
    std::fprintf(stderr, "sluiced: log_file %s: %s\n", config.log_file.c_str(), e.what());
    return sluice::tools::kExitUsage;
  }
  InstallLogSink(config);

  // Signals are taken synchronously by this thread (sigtimedwait); every other thread inherits
  // the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto daemon = sluice::daemon::Daemon::Start(config);
  if (!daemon.ok()) {
    g_log.Get()->error("cannot start: {}", daemon.status().message());
    sluice::SetLogSink(nullptr);
    return ExitCodeOf(daemon.status());
  }
  if (!AnnounceListening(**daemon, config)) {
    (*daemon)->Shutdown(std::chrono::milliseconds(0));
    sluice::SetLogSink(nullptr);
    return 1;
  }
  const int sig = WaitForStop(args, signals, **daemon, &config);
  const int rc = Stop(std::move(*daemon), sig, config);
  sluice::SetLogSink(nullptr);
  return rc;
}
