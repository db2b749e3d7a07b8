#include "tools/control/job_spec.h"

namespace sluice::control {

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kUnknown: return "unknown";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
  }
  return "invalid";
}

}  // namespace sluice::control
