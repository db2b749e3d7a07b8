#include "tools/harness/fault_plan.h"

#include "tools/harness/report.h"

namespace sluice::harness {
namespace {

std::string Fixed(double v, int digits) { return tools::FormatFixed(v, digits); }
std::string At(const Options& o) { return Fixed(o.fault_at * 100, 0) + "%"; }
std::string Deadline(const Options& o) { return Fixed(o.fault_deadline_s, 0) + " s"; }

std::string ExpectNone(const Options& o) {
  if (o.external) {
    return std::string(o.ext_pipelined ? "pipelined" : "blocking") +
           ": every writer process commits, every reader process reads every record of the "
           "named attempts exactly once and in order per writer per subpartition, release "
           "leaves no spill file, every segment returns, every daemon exits 0 on SIGTERM";
  }
  return "every record arrives exactly once and in order, every segment returns, every "
         "daemon exits 0 on SIGTERM";
}
std::string ExpectKillConsumer(const Options& o) {
  return "SIGKILL of the consumer-only node at " + At(o) +
         " of the records: the job fails cleanly, no hang: the survivors end (by their own "
         "errors, or cancelled by the harness after 5 s) within " +
         Deadline(o) + ", return every segment, and then run a follow-up job successfully";
}
std::string ExpectKillProducer(const Options& o) {
  return "SIGKILL of the producer-only node at " + At(o) +
         ": every consumer reading from it fails within " + Deadline(o) +
         " with an error naming its host:port, the survivors return every segment and run a "
         "follow-up job successfully";
}
std::string ExpectStallConsumer(const Options& o) {
  return "SIGSTOP of the consumer-only node at " + At(o) + " for " + Fixed(o.stall_seconds, 1) +
         " s, then SIGCONT: the job succeeds with nothing lost, duplicated, reordered or "
         "corrupted, and every daemon's peak RSS stays <= its network memory + " +
         FormatBytes(o.rss_slack);
}
std::string ExpectCutConnection(const Options& o) {
  return "node 0 closes every data connection at " + At(o) +
         ": the affected consumers fail within " + Deadline(o) +
         " with errors naming the peer, nothing hangs, zero leaked segments, and a "
         "follow-up job succeeds";
}
std::string ExpectDrop(const Options& o) {
  return Fixed(o.drop_percent, 1) +
         "% random packet loss between the daemons: the job succeeds with nothing lost";
}
std::string ExpectSlowConsumer(const Options&) {
  return "pointwise, consumer 0 throttled to a tenth of the calibrated per-consumer rate: "
         "the other consumers' median rate stays >= 0.5x the calibration rate, nothing lost";
}
std::string ExpectGarbage(const Options&) {
  return "a client sending garbage (random bytes, a 2 GiB frame length, HTTP) is "
         "disconnected within 5 s and counted as a protocol error; the daemon then serves "
         "the job successfully";
}
std::string ExpectSigterm(const Options& o) {
  return "SIGTERM of a node at " + At(o) + ": it exits 0 within " +
         Fixed(o.shutdown_deadline_s, 0) +
         " s (after draining or cancelling its tasks within its shutdown grace and "
         "checking every segment is back); either it drained its share and the job succeeds "
         "on the survivors, or the consumers reading from it fail within " +
         Deadline(o) + " naming its host:port; the survivors leak nothing and run a follow-up job";
}
std::string ExpectWrongSecret(const Options&) {
  return "a wrong and a missing secret are refused with PermissionDenied at connect; the "
         "right secret runs the job successfully";
}

std::string ExpectKillWriter(const Options& o) {
  return "SIGKILL of map 0's writer after " + At(o) +
         " of its records: its daemon lists the map output as failed, a reader naming that "
         "attempt fails with ProducerFailed naming the job and partition (never a short "
         "partition as complete), a re-run attempt commits and the readers naming it read "
         "every record exactly once; release leaves no spill file and every segment returns";
}
std::string ExpectKillDaemon(const Options& o) {
  return "blocking: SIGKILL of the last daemon while every reader is paused after its first "
         "record: every reader fails within " + Deadline(o) +
         " naming that daemon's host:port; readers of the survivors' map outputs read every "
         "record exactly once; the survivors leak nothing and keep no spill file after release";
}
std::string ExpectDiskQuota(const Options& o) {
  return "blocking, spill_max_bytes " + FormatBytes(o.spill_quota) +
         ": a writer needing 4x the quota waits for credit and fails with the credit (or "
         "quota) error without committing, the spill files never exceed the quota, and the "
         "committed map outputs stay readable exactly once";
}

using VP = VictimPlacement;
// fault, name, placement, mid_shuffle, ends_channels, victim_leaves, generated_only, expected
constexpr FaultPlan kPlans[] = {
    {Fault::kNone, "none", VP::kNone, false, false, false, false, ExpectNone},
    {Fault::kKillConsumer, "kill-consumer", VP::kConsumerOnlyLast, true, true, true, true,
     ExpectKillConsumer},
    {Fault::kKillProducer, "kill-producer", VP::kProducerOnlyLast, true, true, true, true,
     ExpectKillProducer},
    {Fault::kStallConsumer, "stall-consumer", VP::kConsumerOnlyLast, true, false, false, true,
     ExpectStallConsumer},
    {Fault::kCutConnection, "cut-connection", VP::kFirst, true, true, false, true,
     ExpectCutConnection},
    {Fault::kDrop, "drop", VP::kNone, false, false, false, false, ExpectDrop},
    {Fault::kSlowConsumer, "slow-consumer", VP::kShiftedConsumers, false, false, false, true,
     ExpectSlowConsumer},
    {Fault::kGarbage, "garbage", VP::kNone, false, false, false, false, ExpectGarbage},
    {Fault::kSigterm, "sigterm", VP::kLast, true, true, true, true, ExpectSigterm},
    {Fault::kWrongSecret, "wrong-secret", VP::kNone, false, false, false, false, ExpectWrongSecret},
    {Fault::kKillWriter, "kill-writer", VP::kNone, false, false, false, false, ExpectKillWriter},
    {Fault::kKillDaemon, "kill-daemon", VP::kLast, false, false, true, false, ExpectKillDaemon},
    {Fault::kDiskQuota, "disk-quota", VP::kNone, false, false, false, false, ExpectDiskQuota},
};

}  // namespace

const FaultPlan& PlanOf(Fault f) {
  for (const FaultPlan& p : kPlans) {
    if (p.fault == f) return p;
  }
  return kPlans[0];  // unreachable: every Fault has a row
}

Result<Fault> FaultByName(const std::string& name) {
  for (const FaultPlan& p : kPlans) {
    if (name == p.name) return p.fault;
  }
  return InvalidArgument("--fault: unknown fault '" + name + "' (see --help for the list)");
}

const char* FaultName(Fault f) { return PlanOf(f).name; }

bool ExternalFault(Fault f) {
  return f == Fault::kKillWriter || f == Fault::kKillDaemon || f == Fault::kDiskQuota;
}

Placement MakePlacement(const Options& o, int nodes, int producers, int consumers) {
  Placement p;
  const auto n = static_cast<uint32_t>(nodes);
  const uint32_t last = n - 1;
  for (int i = 0; i < producers; ++i) p.producer_nodes.push_back(static_cast<uint32_t>(i) % n);
  for (int j = 0; j < consumers; ++j) p.consumer_nodes.push_back(static_cast<uint32_t>(j) % n);
  switch (PlanOf(o.fault).placement) {
    case VP::kConsumerOnlyLast:
      for (int i = 0; i < producers; ++i) p.producer_nodes[i] = static_cast<uint32_t>(i) % last;
      p.victim = static_cast<int>(last);
      break;
    case VP::kProducerOnlyLast:
      for (int j = 0; j < consumers; ++j) p.consumer_nodes[j] = static_cast<uint32_t>(j) % last;
      p.victim = static_cast<int>(last);
      break;
    case VP::kLast:
      p.victim = static_cast<int>(last);
      break;
    case VP::kFirst:
      p.victim = 0;
      break;
    case VP::kShiftedConsumers:
      for (int j = 0; j < consumers; ++j) p.consumer_nodes[j] = static_cast<uint32_t>(j + 1) % n;
      break;
    case VP::kNone:
      break;
  }
  return p;
}

std::set<uint32_t> AffectedConsumers(Fault f, const control::JobSpec& spec, int victim_k) {
  std::set<uint32_t> affected;
  if (!PlanOf(f).ends_channels) return affected;
  const bool pointwise = spec.pattern == control::Pattern::kPointwise;
  for (size_t c = 0; c < spec.consumer_nodes.size(); ++c) {
    const auto cn = static_cast<int>(spec.consumer_nodes[c]);
    for (size_t p = 0; p < spec.producer_nodes.size(); ++p) {
      if (pointwise && p != c) continue;
      const auto pn = static_cast<int>(spec.producer_nodes[p]);
      bool hit = false;
      if (f == Fault::kKillProducer || f == Fault::kSigterm) {
        hit = pn == victim_k && cn != victim_k;  // channels from the victim to elsewhere
      } else if (f == Fault::kCutConnection) {
        hit = pn != cn && (pn == victim_k || cn == victim_k);  // remote channels of the victim
      }
      if (hit) affected.insert(static_cast<uint32_t>(c));
    }
  }
  return affected;
}

}  // namespace sluice::harness
