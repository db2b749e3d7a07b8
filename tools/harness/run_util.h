// Small helpers shared by the harness's run (harness_run.cc) and its job monitor
// (job_monitor.cc). Internal to sluice-harness. Thread-safe except where noted.
#pragma once

#include <chrono>
#include <string>

#include "tools/common/report_util.h"
#include "tools/control/job_spec.h"

namespace sluice::harness {

using Clock = std::chrono::steady_clock;

using tools::kMiB;

// Follow-up job size: small, so that it proves the survivors serve jobs without costing time.
inline constexpr uint64_t kFollowUpRecords = 20000;

inline bool Terminal(control::JobState s) {
  return s == control::JobState::kSucceeded || s == control::JobState::kFailed ||
         s == control::JobState::kCancelled;
}

inline double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

inline std::string Fixed(double v, int digits = 1) { return tools::FormatFixed(v, digits); }

// True once SIGINT or SIGTERM reached the harness (InstallSignalHandlers in harness_run.h).
bool Interrupted();

}  // namespace sluice::harness
