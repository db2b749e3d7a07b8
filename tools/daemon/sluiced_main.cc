// sluiced: the Sluice shuffle daemon. See `sluiced --help` and README.md.
//
// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT, every segment back), 2 for a bad
// command line or configuration, 1 when it cannot start (port taken, memory), 3 when segments
// were still out at shutdown (a bug: the log names the numbers).
#include <signal.h>
#include <unistd.h>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "tools/daemon/daemon.h"
#include "transport/log.h"

namespace {

using sluice::daemon::CommandLine;
using sluice::daemon::DaemonConfig;

// Writes `text` to `path` atomically (a reader never sees half a file).
bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return false;
    out << text;
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::shared_ptr<spdlog::logger> MakeLogger(const DaemonConfig& c) {
  std::shared_ptr<spdlog::logger> logger;
  if (c.log_file.empty()) {
    logger = spdlog::stderr_logger_mt("sluiced");
  } else {
    logger = spdlog::basic_logger_mt("sluiced", c.log_file);
  }
  logger->set_level(spdlog::level::from_str(c.log_level));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  logger->flush_on(spdlog::level::info);
  return logger;
}

// The library's log lines go to the daemon's logger.
void InstallLogSink(const std::shared_ptr<spdlog::logger>& logger, const DaemonConfig& config) {
  sluice::SetLogLevel(config.log_level == "trace" || config.log_level == "debug"
                          ? sluice::LogLevel::kDebug
                          : sluice::LogLevel::kInfo);
  sluice::SetLogSink([logger](sluice::LogLevel level, std::string_view m) {
    switch (level) {
      case sluice::LogLevel::kDebug: logger->debug("{}", m); break;
      case sluice::LogLevel::kInfo: logger->info("{}", m); break;
      case sluice::LogLevel::kWarn: logger->warn("{}", m); break;
      case sluice::LogLevel::kError: logger->error("{}", m); break;
    }
  });
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

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto cl = sluice::daemon::ParseCommandLine(args);
  if (!cl.ok()) {
    std::fprintf(stderr, "sluiced: %s\n", cl.status().message().c_str());
    return 2;
  }
  if (cl->action == CommandLine::Action::kHelp) {
    std::fputs(sluice::daemon::HelpText().c_str(), stdout);
    return 0;
  }
  if (cl->action == CommandLine::Action::kVersion) {
    std::printf("sluiced %s\n", sluice::daemon::kVersion);
    return 0;
  }
  const DaemonConfig& config = cl->config;

  std::shared_ptr<spdlog::logger> logger;
  try {
    logger = MakeLogger(config);
  } catch (const spdlog::spdlog_ex& e) {
    std::fprintf(stderr, "sluiced: log_file %s: %s\n", config.log_file.c_str(), e.what());
    return 2;
  }
  InstallLogSink(logger, config);

  // Signals are taken synchronously by this thread (sigtimedwait); every other thread inherits
  // the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto daemon = sluice::daemon::Daemon::Start(config);
  if (!daemon.ok()) {
    logger->error("cannot start: {}", daemon.status().message());
    sluice::SetLogSink(nullptr);
    return ExitCodeOf(daemon.status());
  }
  const uint16_t port = (*daemon)->port();
  logger->info("{} listening on {}:{} (network memory {} MiB in {} KiB segments, auth {}, "
               "{} IO thread(s))",
               (*daemon)->node_name(), config.listen, port, config.network_memory >> 20,
               config.segment_size >> 10, AuthLabel(config),
               config.io_threads);
  if (!config.port_file.empty() &&
      !WriteFileAtomically(config.port_file, std::to_string(port) + "\n")) {
    logger->error("cannot write port_file {}", config.port_file);
    (*daemon)->Shutdown(std::chrono::milliseconds(0));
    return 1;
  }

  int sig = 0;
  while (true) {
    if (!config.metrics_file.empty() &&
        !WriteFileAtomically(config.metrics_file, (*daemon)->Prometheus())) {
      logger->warn("cannot write metrics_file {}", config.metrics_file);
    }
    const long ms = config.metrics_file.empty() ? 3600000 : config.metrics_interval_ms;
    timespec ts{ms / 1000, (ms % 1000) * 1000000};
    sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) break;
  }
  logger->info("{} received {}: no new connections, running jobs get {} ms to finish",
               (*daemon)->node_name(), sig == SIGTERM ? "SIGTERM" : "SIGINT",
               config.shutdown_grace_ms);
  const auto report =
      (*daemon)->Shutdown(std::chrono::milliseconds(config.shutdown_grace_ms));
  if (!config.metrics_file.empty()) WriteFileAtomically(config.metrics_file, (*daemon)->Prometheus());
  const std::string name = (*daemon)->node_name();
  if (report.stuck_tasks > 0) {
    // Destroying the daemon would join threads blocked in system calls: exit without it.
    logger->error("{} stopped with {} job threads blocked (not waited for) and {} segments "
                  "still out", name, report.stuck_tasks, report.leaked_segments);
    logger->flush();
    std::_Exit(3);
  }
  daemon->reset();
  if (report.leaked_segments != 0) {
    logger->error("{} stopped with {} segments not returned to the pool (a bug)", name,
                  report.leaked_segments);
    sluice::SetLogSink(nullptr);
    return 3;
  }
  logger->info("{} stopped cleanly: {} jobs finished, {} cancelled, every segment returned",
               name, report.jobs_finished, report.jobs_cancelled);
  sluice::SetLogSink(nullptr);
  return 0;
}
