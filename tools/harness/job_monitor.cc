// Job monitoring of sluice-harness (HarnessRun's half that drives one job): submit to every
// node, poll status and pool statistics, fire the fault plan's trigger, settle (cancel
// survivors, detect hangs), tally records, check leaks, and the follow-up job.
#include <csignal>
#include <thread>

#include "tools/harness/fault_plan.h"
#include "tools/harness/harness_run.h"
#include "tools/harness/process_util.h"
#include "tools/harness/run_util.h"

namespace sluice::harness {

using control::JobState;
using std::chrono::milliseconds;

HarnessRun::Tally HarnessRun::Count(const control::JobSpec& spec, const JobView& view) {
  Tally t;
  const bool pointwise = spec.pattern == control::Pattern::kPointwise;
  for (const auto& [p, ps] : view.producers) t.sent += ps.records;
  for (const auto& [c, cs] : view.consumers) {
    t.received += cs.records;
    t.bytes += cs.bytes;
    t.duplicated += cs.duplicated;
    t.reordered += cs.reordered;
    t.corrupted += cs.corrupted;
  }
  // Lost, per channel (p, c): what p says it sent to c minus what c validly got from p.
  for (const auto& [p, ps] : view.producers) {
    for (size_t k = 0; k < ps.records_per_consumer.size(); ++k) {
      const uint32_t c = pointwise ? p : static_cast<uint32_t>(k);
      const uint64_t sent = ps.records_per_consumer[k];
      uint64_t got = 0;
      auto it = view.consumers.find(c);
      if (it != view.consumers.end()) {
        const auto& rpp = it->second.records_per_producer;
        if (p < rpp.size()) {
          got = rpp[p];
        } else if (pointwise && rpp.size() == 1) {
          got = rpp[0];
        }
      }
      if (sent > got) t.lost += sent - got;
    }
  }
  return t;
}

void HarnessRun::CancelOn(const control::JobSpec& spec, const std::vector<int>& ids,
                          const JobView& view, const std::string& reason,
                          std::vector<std::string>* errors) {
  for (size_t k = 0; k < ids.size(); ++k) {
    const Node& node = cluster_->node(ids[k]);
    if (!node.alive || node.stopped || Terminal(view.state[k])) continue;
    auto* c = Client(ids[k]);
    if (c == nullptr) continue;
    Status s = c->CancelJob(spec.job_id, spec.token, reason);
    if (!s.ok()) {
      errors->push_back("CancelJob on node " + std::to_string(ids[k]) + " (" + node.address() +
                        ") failed: " + s.ToString());
      DropClient(ids[k]);
    }
  }
}

void HarnessRun::PrintProgress(const control::JobSpec& spec, const JobView& view, double elapsed,
                               bool final) {
  if (o_.quiet) return;
  uint64_t records = 0;
  uint64_t bytes = 0;
  for (const auto& [c, cs] : view.consumers) {
    records += cs.records;
    bytes += cs.bytes;
  }
  const double dt = elapsed - std::max(0.0, last_print_s_);
  const double rate =
      dt > 0 ? static_cast<double>(bytes - std::min(bytes, last_print_bytes_)) / kMiB / dt : 0;
  if (!final && !progress_tty_ && last_print_s_ >= 0 && elapsed - last_print_s_ < 2.0) return;
  last_print_s_ = elapsed;
  last_print_bytes_ = bytes;
  uint64_t total = 0;
  uint64_t used = 0;
  for (size_t i = 0; i < stats_.size(); ++i) {
    if (!cluster_->node(static_cast<int>(i)).alive) continue;
    total += stats_[i].total_segments;
    used +=
        stats_[i].total_segments - std::min(stats_[i].total_segments, stats_[i].available_segments);
  }
  const uint64_t expected = spec.kind == control::JobKind::kGenerated
                                ? spec.records_per_producer * spec.producer_nodes.size()
                                : 0;
  char line[256];
  std::snprintf(
      line, sizeof line,
      "[%6.1fs] %s %llu%s%s records  %.1f MiB  %.1f MiB/s  pool %llu/%llu segments (%.0f%%)",
      elapsed, spec.job_id.c_str(), static_cast<unsigned long long>(records),
      expected ? ("/" + std::to_string(expected)).c_str() : "",
      expected
          ? (" (" + Fixed(100.0 * static_cast<double>(records) / static_cast<double>(expected), 0) +
             "%)")
                .c_str()
          : "",
      static_cast<double>(bytes) / kMiB,
      final ? static_cast<double>(bytes) / kMiB / std::max(elapsed, 1e-3) : rate,
      static_cast<unsigned long long>(used), static_cast<unsigned long long>(total),
      total ? 100.0 * static_cast<double>(used) / static_cast<double>(total) : 0.0);
  if (progress_tty_) {
    std::fprintf(stderr, "\r%-120s%s", line, final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line);
  }
  std::fflush(stderr);
}

bool HarnessRun::SubmitAll(const control::JobSpec& spec, const std::vector<int>& ids,
                           JobOutcome* out) {
  JobView& view = out->view;
  // For an operator's `sluicectl status JOB --token-file <run dir>/JOB.token`.
  if (Status s = WriteWholeFile(run_dir_ + "/" + spec.job_id + ".token", spec.token + "\n", 0600);
      !s.ok()) {
    out->errors.push_back(s.ToString());
  }
  // Submit to every node; a refusal cancels what was already submitted.
  for (size_t k = 0; k < ids.size(); ++k) {
    auto* c = Client(ids[k]);
    Status s = c != nullptr ? c->SubmitJob(spec, static_cast<uint32_t>(k))
                            : IoError(client_errors_[static_cast<size_t>(ids[k])]);
    if (!s.ok()) {
      out->errors.push_back("node " + std::to_string(ids[k]) + " (" +
                            cluster_->node(ids[k]).address() + ") did not take job " + spec.job_id +
                            ": " + s.ToString());
      for (size_t m = 0; m < k; ++m) view.state[m] = JobState::kRunning;
      CancelOn(spec, std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(k)), view,
               "another node refused the job", &out->errors);
      return false;
    }
    view.state[k] = JobState::kRunning;
  }
  return true;
}

// Polls every live, running node for the job's status.
void HarnessRun::PollNodes(JobLoop& l, double now, JobOutcome* out) {
  JobView& view = out->view;
  const control::JobSpec& spec = *l.spec;
  for (size_t k = 0; k < l.ids->size(); ++k) {
    const int id = (*l.ids)[k];
    if (l.gone[k]) continue;
    const bool is_victim = l.fired && id == l.victim;
    if (cluster_->Reap(id, milliseconds(0))) {
      l.gone[k] = true;
      const Node& node = cluster_->node(id);
      if (!is_victim) {
        out->errors.push_back("node " + std::to_string(id) + " (" + node.address() +
                              ") died during job " + spec.job_id + " with " +
                              DescribeWaitStatus(node.wait_status) + "; its log " + node.log_path +
                              " ends with: " + cluster_->LogTail(id, 3));
      }
      continue;
    }
    if (cluster_->node(id).stopped) continue;
    auto* c = Client(id);
    if (c == nullptr) continue;
    auto st = c->GetJobStatus(spec.job_id, spec.token);
    if (!st.ok()) {
      const std::string e =
          "GetJobStatus on node " + std::to_string(id) + " failed: " + st.status().ToString();
      if (l.reported.insert(e).second && !is_victim) out->errors.push_back(e);
      DropClient(id);
      continue;
    }
    view.state[k] = st->state;
    view.node_error[k] = st->error;
    for (auto& p : st->producers) view.producers[p.index] = p;
    for (auto& cs : st->consumers) {
      if ((cs.done || !cs.error.empty()) && !view.consumer_end_s.count(cs.index)) {
        view.consumer_end_s[cs.index] = now;
      }
      view.consumers[cs.index] = cs;
    }
    if (st->state == JobState::kFailed && l.first_failure_s < 0) l.first_failure_s = now;
  }
}

// Every half second: the nodes' pool statistics and the progress line.
void HarnessRun::PollStats(JobLoop& l, double now, const JobView& view) {
  if (now - l.last_stats_s < 0.5) return;
  l.last_stats_s = now;
  for (size_t k = 0; k < l.ids->size(); ++k) {
    const int id = (*l.ids)[k];
    if (l.gone[k] || cluster_->node(id).stopped) continue;
    if (auto* c = Client(id)) {
      auto st = c->GetStats();
      if (st.ok()) {
        stats_[static_cast<size_t>(id)] = std::move(*st);
      } else {
        DropClient(id);
      }
    }
  }
  PrintProgress(*l.spec, view, now, false);
}

// The plan's trigger: once the job moved --fault-at of its records, act on the victim.
void HarnessRun::MaybeFire(JobLoop& l, double now, JobOutcome* out) {
  uint64_t received = 0;
  for (const auto& [ci, cs] : out->view.consumers) received += cs.records;
  if (l.fired || !PlanOf(l.fault).mid_shuffle || l.expected == 0 ||
      static_cast<double>(received) < o_.fault_at * static_cast<double>(l.expected)) {
    return;
  }
  l.fired = true;
  l.fired_s = now;
  out->fault_fired_s = now;
  const Node& vn = cluster_->node(l.victim);
  const double share = 100.0 * static_cast<double>(received) / static_cast<double>(l.expected);
  const std::string where = "node " + std::to_string(l.victim) + " (" + vn.address() + ", pid " +
                            std::to_string(vn.pid) + ") at " + Fixed(now, 2) + " s, " +
                            Fixed(share, 1) + "% of the records received";
  switch (l.fault) {
    case Fault::kKillConsumer:
    case Fault::kKillProducer:
      cluster_->Signal(l.victim, SIGKILL);
      l.gone[static_cast<size_t>(l.victim_k)] = true;
      DropClient(l.victim);
      out->notes.push_back("SIGKILL " + where);
      break;
    case Fault::kSigterm:
      // The victim may drain its share (sluiced's shutdown grace) or cancel it: keep
      // polling it until it exits.
      cluster_->Signal(l.victim, SIGTERM);
      out->notes.push_back("SIGTERM " + where);
      break;
    case Fault::kStallConsumer:
      cluster_->Signal(l.victim, SIGSTOP);
      l.stall_until = now + o_.stall_seconds;
      out->notes.push_back("SIGSTOP " + where);
      break;
    case Fault::kCutConnection: {
      auto* c = Client(l.victim);
      auto r =
          c != nullptr ? c->CutConnections() : Result<uint32_t>(IoError("no control connection"));
      if (r.ok()) {
        out->notes.push_back("CutConnections closed " + std::to_string(*r) +
                             " data connections of " + where);
        if (*r == 0) out->errors.push_back("CutConnections closed no connection");
      } else {
        out->errors.push_back("CutConnections on node " + std::to_string(l.victim) +
                              " failed: " + r.status().ToString());
      }
      break;
    }
    default:
      break;
  }
}

// After SIGSTOP: SIGCONT when the stall is over. After SIGTERM: the victim must exit 0.
void HarnessRun::WatchVictim(JobLoop& l, double now, JobOutcome* out) {
  if (l.stall_until >= 0 && now >= l.stall_until) {
    cluster_->Signal(l.victim, SIGCONT);
    out->notes.push_back("SIGCONT after " + Fixed(now - l.fired_s, 1) + " s");
    l.stall_until = -1;
  }
  if (l.fault != Fault::kSigterm || !l.fired || l.victim_exit_checked) return;
  const Node& vn = cluster_->node(l.victim);
  if (!vn.alive || cluster_->Reap(l.victim, milliseconds(0))) {
    l.victim_exit_checked = true;
    const std::string how = DescribeWaitStatus(vn.wait_status);
    out->notes.push_back("node " + std::to_string(l.victim) + " exited with " + how + " " +
                         Fixed(now - l.fired_s, 1) + " s after SIGTERM");
    if (how != "exit 0") {
      out->errors.push_back("node " + std::to_string(l.victim) + " ended with " + how +
                            " after SIGTERM during a job, expected exit 0; its log " + vn.log_path +
                            " ends with: " + cluster_->LogTail(l.victim, 3));
    }
  } else if (now - l.fired_s > o_.shutdown_deadline_s) {
    l.victim_exit_checked = true;
    out->errors.push_back("node " + std::to_string(l.victim) + " did not exit within " +
                          Fixed(o_.shutdown_deadline_s, 0) + " s after SIGTERM; killed it");
    cluster_->Signal(l.victim, SIGKILL);
  }
}

// A fault that ends channels: once the affected consumers failed (or the deadline passed),
// cancel the survivors; a survivor that still runs 10 s later hangs. True: stop polling.
bool HarnessRun::SettleAfterFault(JobLoop& l, double now, JobOutcome* out) {
  const JobView& view = out->view;
  const control::JobSpec& spec = *l.spec;
  const double since = now - l.fired_s;
  if (l.cancel_sent) {
    if (now - l.cancel_s <= 10.0 || since <= o_.fault_deadline_s) return false;
    for (size_t k = 0; k < l.ids->size(); ++k) {
      if (!l.gone[k] && !Terminal(view.state[k])) {
        out->errors.push_back("node " + std::to_string((*l.ids)[k]) + " still runs job " +
                              spec.job_id + " " + Fixed(since, 0) +
                              " s after the fault and after CancelJob: it hangs");
      }
    }
    return true;
  }
  bool affected_ended = true;
  bool affected_failed = false;
  std::string running;  // affected consumers neither failed nor finished
  for (uint32_t c : l.affected) {
    if (l.gone[spec.consumer_nodes[c]]) continue;
    auto it = view.consumers.find(c);
    if (it == view.consumers.end() || (!it->second.done && it->second.error.empty())) {
      affected_ended = false;
      running += (running.empty() ? "" : ", ") + std::to_string(c);
    } else if (!it->second.error.empty()) {
      affected_failed = true;
    }
  }
  // When every affected channel ended well (a SIGTERMed node drained its share), the job goes
  // on as if nothing happened.
  const bool drained = !l.affected.empty() && affected_ended && !affected_failed;
  const bool ready =
      l.fault == Fault::kKillConsumer ? since >= 5.0 : affected_ended && affected_failed;
  if (drained || (!ready && since < o_.fault_deadline_s)) return false;
  if (!ready) {
    out->errors.push_back("consumers " + running + " neither failed nor finished within " +
                          Fixed(o_.fault_deadline_s, 0) + " s after the fault");
  }
  l.cancel_sent = true;
  l.cancel_s = now;
  bool any = false;
  for (size_t k = 0; k < l.ids->size(); ++k) any = any || (!l.gone[k] && !Terminal(view.state[k]));
  if (any) {
    out->notes.push_back("harness cancelled the job on the survivors still running " +
                         Fixed(since, 1) + " s after the fault");
  }
  CancelOn(spec, *l.ids, view, std::string("sluice-harness: fault ") + FaultName(l.fault),
           &out->errors);
  return false;
}

// True when polling should stop: every survivor ended, or the job hangs.
bool HarnessRun::JobSettled(JobLoop& l, double now, JobOutcome* out) {
  const JobView& view = out->view;
  const control::JobSpec& spec = *l.spec;
  bool survivors_terminal = true;
  for (size_t k = 0; k < l.ids->size(); ++k) {
    if (!l.gone[k] && !Terminal(view.state[k])) survivors_terminal = false;
  }
  const bool victim_settled = l.fault != Fault::kSigterm || !l.fired || l.victim_exit_checked;
  if (survivors_terminal && l.stall_until < 0 && victim_settled) return true;
  if (PlanOf(l.fault).ends_channels && l.fired) {
    if (SettleAfterFault(l, now, out)) return true;
  } else if (l.first_failure_s >= 0 && !l.cancel_sent && now - l.first_failure_s > 5.0) {
    // A node failed on its own: give the others 5 s to notice, then cancel them.
    l.cancel_sent = true;
    l.cancel_s = now;
    CancelOn(spec, *l.ids, view, "sluice-harness: another node failed", &out->errors);
  } else if (l.cancel_sent && now - l.cancel_s > 15.0) {
    out->errors.push_back("job " + spec.job_id + " still runs 15 s after CancelJob");
    return true;
  }
  if (now > o_.timeout_s + 5 && !l.cancel_sent) {
    out->errors.push_back("job " + spec.job_id + " did not finish within --timeout " +
                          Fixed(o_.timeout_s, 0) + " s");
    l.cancel_sent = true;
    l.cancel_s = now;
    CancelOn(spec, *l.ids, view, "sluice-harness: timeout", &out->errors);
  }
  return false;
}

// A SIGTERMed victim not yet seen exiting gets --shutdown-deadline more.
void HarnessRun::ReapSigtermVictim(JobLoop& l, JobOutcome* out) {
  if (l.fault != Fault::kSigterm || !l.fired || l.victim_exit_checked) return;
  if (cluster_->Reap(l.victim, std::chrono::duration_cast<milliseconds>(
                                   std::chrono::duration<double>(o_.shutdown_deadline_s)))) {
    const std::string how = DescribeWaitStatus(cluster_->node(l.victim).wait_status);
    out->notes.push_back("node " + std::to_string(l.victim) + " exited with " + how);
    if (how != "exit 0") {
      out->errors.push_back("node " + std::to_string(l.victim) + " ended with " + how +
                            " after SIGTERM during a job, expected exit 0");
    }
  } else {
    out->errors.push_back("node " + std::to_string(l.victim) + " did not exit after SIGTERM");
    cluster_->Signal(l.victim, SIGKILL);
  }
}

HarnessRun::JobOutcome HarnessRun::RunJob(const control::JobSpec& spec, const std::vector<int>& ids,
                                          const Placement& placement, bool inject) {
  JobOutcome out;
  const size_t n = ids.size();
  out.view.state.assign(n, JobState::kUnknown);
  out.view.node_error.assign(n, "");
  last_print_s_ = -1;
  last_print_bytes_ = 0;
  if (!SubmitAll(spec, ids, &out)) return out;

  JobLoop l;
  l.spec = &spec;
  l.ids = &ids;
  l.start = Clock::now();
  l.fault = inject ? o_.fault : Fault::kNone;
  l.expected = spec.kind == control::JobKind::kGenerated
                   ? spec.records_per_producer * spec.producer_nodes.size()
                   : 0;
  l.victim_k = placement.victim;  // the victim as a position in ids (the job's node index)
  l.victim = l.victim_k >= 0 ? ids[static_cast<size_t>(l.victim_k)] : -1;
  l.gone.assign(n, false);
  l.affected = AffectedConsumers(l.fault, spec, l.victim_k);
  while (true) {
    // Until a mid-shuffle fault fires, poll often: a 256 MiB job takes about 0.2 s on
    // loopback, and at 40 ms a poll covered a fifth of it (the fault at 30% fired at 35-53%).
    const bool waiting_to_fire = !l.fired && PlanOf(l.fault).mid_shuffle;
    const int poll_ms = waiting_to_fire ? 10 : (l.fired || l.fault == Fault::kNone ? 100 : 40);
    std::this_thread::sleep_for(milliseconds(poll_ms));
    const double now = Seconds(l.start);
    if (Interrupted()) {
      out.errors.push_back("interrupted by a signal: cancelled the job and stopped the daemons");
      CancelOn(spec, ids, out.view, "sluice-harness interrupted", &out.errors);
      break;
    }
    PollNodes(l, now, &out);
    PollStats(l, now, out.view);
    MaybeFire(l, now, &out);
    WatchVictim(l, now, &out);
    if (JobSettled(l, now, &out)) break;
  }
  out.seconds = Seconds(l.start);
  ReapSigtermVictim(l, &out);
  out.all_succeeded = true;
  for (size_t k = 0; k < n; ++k) {
    if (out.view.state[k] != JobState::kSucceeded) out.all_succeeded = false;
  }
  PrintProgress(spec, out.view, out.seconds, true);
  return out;
}

std::map<int, int64_t> HarnessRun::CheckLeaks(const std::vector<int>& ids, milliseconds wait,
                                              std::vector<std::string>* errors) {
  std::map<int, int64_t> leaked;
  const auto until = Clock::now() + wait;
  for (int id : ids) {
    if (!cluster_->node(id).alive) continue;
    int64_t out = -1;
    while (true) {
      auto* c = Client(id);
      auto st = c != nullptr
                    ? c->GetStats()
                    : Result<control::NodeStats>(IoError(client_errors_[static_cast<size_t>(id)]));
      if (!st.ok()) {
        DropClient(id);
        if (Clock::now() >= until) {
          errors->push_back("leak check: GetStats on node " + std::to_string(id) +
                            " failed: " + st.status().ToString());
          break;
        }
      } else {
        stats_[static_cast<size_t>(id)] = *st;
        out =
            static_cast<int64_t>(st->total_segments) - static_cast<int64_t>(st->available_segments);
        if (out == 0 || Clock::now() >= until) break;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    leaked[id] = out;
    if (out > 0) {
      errors->push_back("node " + std::to_string(id) + " (" + cluster_->node(id).address() +
                        ") has " + std::to_string(out) + " of " +
                        std::to_string(stats_[static_cast<size_t>(id)].total_segments) +
                        " segments not back in its pool " +
                        Fixed(std::chrono::duration<double>(wait).count(), 0) +
                        " s after the job ended");
    }
  }
  return leaked;
}

bool HarnessRun::RunFollowUp(const std::vector<int>& ids, std::vector<std::string>* errors) {
  Options saved = o_;
  Placement p;
  for (size_t k = 0; k < ids.size(); ++k) {
    p.producer_nodes.push_back(static_cast<uint32_t>(k));
    p.consumer_nodes.push_back(static_cast<uint32_t>(k));
  }
  o_.pattern = control::Pattern::kAllToAll;
  o_.kind = control::JobKind::kGenerated;
  auto spec = MakeSpec("h" + std::to_string(getpid()) + "-followup", ids, p, kFollowUpRecords);
  o_ = saved;
  auto out = RunJob(spec, ids, p, false);
  const Tally t = Count(spec, out.view);
  bool ok = out.all_succeeded && out.errors.empty() && t.lost == 0 && t.duplicated == 0 &&
            t.reordered == 0 && t.corrupted == 0 && t.received == kFollowUpRecords * ids.size();
  for (const auto& e : out.errors) errors->push_back("follow-up job: " + e);
  if (!ok) {
    std::string why;
    for (size_t k = 0; k < ids.size(); ++k) {
      if (out.view.state[k] != JobState::kSucceeded) {
        why += " node " + std::to_string(ids[k]) + " " + control::JobStateName(out.view.state[k]) +
               (out.view.node_error[k].empty() ? "" : " (" + out.view.node_error[k] + ")") + ";";
      }
    }
    errors->push_back("the surviving daemons did not serve the follow-up job: received " +
                      std::to_string(t.received) + " of " +
                      std::to_string(kFollowUpRecords * ids.size()) + " records, lost " +
                      std::to_string(t.lost) + ";" + why);
  }
  auto leaks = CheckLeaks(ids, milliseconds(10000), errors);
  for (auto& [id, l] : leaks) ok = ok && l == 0;
  return ok;
}

}  // namespace sluice::harness
