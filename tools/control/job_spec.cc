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

JobTotals ComputeTotals(const JobStatus& status) {
  JobTotals t;
  t.producers = static_cast<uint32_t>(status.producers.size());
  t.consumers = static_cast<uint32_t>(status.consumers.size());
  for (const ProducerStatus& p : status.producers) {
    t.producers_done += p.done ? 1 : 0;
    t.records_produced += p.records;
    t.bytes_produced += p.bytes;
    t.bad_lines += p.bad_lines;
  }
  for (const ConsumerStatus& c : status.consumers) {
    t.consumers_done += c.done ? 1 : 0;
    t.records_consumed += c.records;
    t.bytes_consumed += c.bytes;
    t.duplicated += c.duplicated;
    t.reordered += c.reordered;
    t.corrupted += c.corrupted;
  }
  return t;
}

}  // namespace sluice::control
