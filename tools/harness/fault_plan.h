// Fault plans: one row per fault of sluice-harness saying where it is placed, what triggers it,
// what the harness must then watch for, and the expected outcome in words. The harness's run,
// options and report read these rows instead of switching over the fault in each place.
// Thread-safe (immutable tables and pure functions).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "tools/control/job_spec.h"
#include "tools/harness/harness_options.h"

namespace sluice::harness {

// Where the fault's victim sits in the job's node list.
enum class VictimPlacement {
  kNone,              // no victim
  kConsumerOnlyLast,  // the last node runs consumers only and is the victim
  kProducerOnlyLast,  // the last node runs producers only and is the victim
  kLast,              // the last node, with producers and consumers
  kFirst,             // node 0
  kShiftedConsumers,  // no victim; consumer i on the node after producer i's (pointwise)
};

struct FaultPlan {
  Fault fault;
  const char* name;  // the --fault value
  VictimPlacement placement;
  // Fires once --fault-at of the expected records were received (else: before the job, or
  // for the whole run).
  bool mid_shuffle;
  // Ends the channels that cross the victim: the affected consumers must fail (or finish)
  // within --fault-deadline, then the harness cancels the survivors and runs a follow-up job.
  bool ends_channels;
  // The victim process goes away (SIGKILL, or SIGTERM and exit).
  bool victim_leaves;
  // The trigger counts generated records: file-partition jobs cannot use it.
  bool generated_only;
  // The expected outcome in words, for these options.
  std::string (*expected)(const Options& o);
};

// The plan of `f` (every Fault has one).
const FaultPlan& PlanOf(Fault f);
// The fault named by a --fault value; InvalidArgument naming --fault otherwise.
Result<Fault> FaultByName(const std::string& name);

// Where producers and consumers run, as indexes into the job's node list, and the node a
// fault targets (-1: none).
struct Placement {
  std::vector<uint32_t> producer_nodes;
  std::vector<uint32_t> consumer_nodes;
  int victim = -1;
};

// The layout the fault's plan asks for (see VictimPlacement) on `nodes` nodes.
Placement MakePlacement(const Options& o, int nodes, int producers, int consumers);

// The consumers (indexes into spec.consumer_nodes) a fault that ends channels must fail: every
// consumer with a channel that crosses the cut around the victim (the job's node `victim_k`).
// Empty for the other faults.
std::set<uint32_t> AffectedConsumers(Fault f, const control::JobSpec& spec, int victim_k);

}  // namespace sluice::harness
