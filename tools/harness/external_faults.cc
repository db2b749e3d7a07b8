// ExternalJob's faults, release and leak checks, and its Run (external_job.h).
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <thread>

#include "client/ext_control.h"
#include "client/map_output.h"
#include "shuffle/auth.h"
#include "tools/harness/external_job.h"
#include "tools/harness/harness_run.h"
#include "tools/harness/process_util.h"
#include "tools/harness/run_util.h"

namespace sluice::harness {
namespace {

using std::chrono::milliseconds;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The value of metric `name` in Prometheus text (its first sample), or -1.
double Metric(const std::string& text, const std::string& name) {
  size_t pos = 0;
  while ((pos = text.find(name, pos)) != std::string::npos) {
    const bool line_start = pos == 0 || text[pos - 1] == '\n';
    const size_t after = pos + name.size();
    if (line_start && after < text.size() && (text[after] == '{' || text[after] == ' ')) {
      const size_t space = text.find(' ', text[after] == '{' ? text.find('}', after) : after);
      if (space != std::string::npos) return std::strtod(text.c_str() + space + 1, nullptr);
    }
    pos = after;
  }
  return -1;
}

}  // namespace

uint64_t ExternalJob::SpillFileBytes(int node, int* files) const {
  namespace fs = std::filesystem;
  const fs::path dir = run_.run_dir_ + "/node-" + std::to_string(node) + ".state/spill";
  uint64_t bytes = 0;
  int n = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec) ||
        it->path().filename().string().rfind("sluice-spill-", 0) != 0) {
      continue;
    }
    ++n;
    bytes += it->file_size(ec);
  }
  if (files != nullptr) *files = n;
  return bytes;
}

std::string ExternalJob::ListState(int node, uint32_t partition, uint32_t attempt,
                                   uint64_t* held) {
  if (held != nullptr) *held = 0;
  control::ControlClient* c = run_.Client(node);
  if (c == nullptr) return "unreachable";
  auto list = client::ListExternal(*c, job_);
  if (!list.ok()) {
    run_.DropClient(node);
    return "error " + list.status().ToString();
  }
  for (const auto& p : list->partitions) {
    if (p.job != job_ || p.partition != partition || p.attempt != attempt) continue;
    if (held != nullptr) *held = p.bytes_in_memory + p.bytes_on_disk;
    return p.state;
  }
  return "absent";
}

// SIGKILL map 0's writer once it wrote --fault-at of its records: the daemon fails its map
// output, a reader naming it gets ProducerFailed naming job and partition, and a re-run
// attempt (1) then commits and is what the job's readers name.
void ExternalJob::KillWriterFault(std::vector<WriterSpec>* specs) {
  Report& r = run_.report_;
  WriterSpec victim = specs->front();
  victim.pause_after = std::max<uint64_t>(1, static_cast<uint64_t>(
                                                 static_cast<double>(victim.records) * o_.fault_at));
  Task t = StartWriter(victim);
  if (!WaitForLine(t, "paused", o_.timeout_s)) {
    r.errors.push_back("kill-writer: " + t.name + " did not reach record " +
                       std::to_string(victim.pause_after) + ": " + Describe(t));
    return;
  }
  kill(t.pid, SIGKILL);
  Reap(t, 5);
  notes_.push_back("SIGKILL " + t.name + " after " + std::to_string(victim.pause_after) + " of " +
                   std::to_string(victim.records) + " records");
  // The daemon sees the socket close: the map output fails (not committed, never served).
  // Its memory and spill files are freed at once.
  std::string state;
  uint64_t held = 0;
  const auto start = Clock::now();
  do {
    state = ListState(victim.node, victim.partition, victim.attempt, &held);
    if (state != "writing" && state != "open" && held == 0) break;
    std::this_thread::sleep_for(milliseconds(50));
  } while (Seconds(start) < o_.fault_deadline_s);
  notes_.push_back("node " + std::to_string(victim.node) + " lists it as " + state + ", holding " +
                   FormatBytes(held));
  if (state == "committed" || state == "writing" || state == "open") {
    r.errors.push_back("kill-writer: the killed writer's map output is " + state +
                       " on node " + std::to_string(victim.node) + ", expected failed");
  }
  if (held > 0) {
    r.errors.push_back("kill-writer: the killed writer's map output still holds " +
                       std::to_string(held) + " bytes in memory or on disk");
  }
  Task probe = StartReader(0, {PlannedOutput(victim)});
  Reap(probe, o_.fault_deadline_s + 10);
  const ReaderResult pr = ReaderOutcome(0, probe);
  const std::string want = "job '" + job_ + "' partition " + std::to_string(victim.partition);
  if (pr.ended || !Contains(pr.error, "ProducerFailed") || !Contains(pr.error, want)) {
    r.errors.push_back("kill-writer: a reader naming the killed attempt should fail with "
                       "ProducerFailed naming " + want + ", got: " +
                       (pr.ended ? "end of data" : pr.error));
  } else {
    notes_.push_back("a reader naming it failed: " + pr.error);
  }
  for (WriterSpec& w : *specs) {
    if (w.partition == victim.partition) ++w.attempt;  // the re-run
  }
  notes_.push_back("re-ran partition " + std::to_string(victim.partition) + " as attempt " +
                   std::to_string(specs->front().attempt));
}

// Blocking: SIGKILL the last node while every reader is paused after its first record; each
// reader must then fail naming that daemon's address. Readers naming only the survivors' map
// outputs then read every record exactly once.
void ExternalJob::KillDaemonFault(const std::vector<WriterResult>& named) {
  Report& r = run_.report_;
  const int victim = o_.nodes - 1;
  const std::string address = run_.cluster_->node(victim).address();
  std::vector<std::string> all, survivors;
  std::vector<WriterResult> surviving;
  for (const WriterResult& w : named) {
    if (!w.committed) continue;
    all.push_back(w.map_output);
    if (w.spec.node != victim) {
      survivors.push_back(w.map_output);
      surviving.push_back(w);
    }
  }
  std::vector<Task> tasks;
  for (uint32_t k = 0; k < subpartitions_; ++k) tasks.push_back(StartReader(k, all, 1));
  for (Task& t : tasks) {
    if (!WaitForLine(t, "paused", o_.fault_deadline_s)) {
      r.errors.push_back("kill-daemon: " + t.name + " did not pause after its first record: " +
                         Describe(t));
    }
  }
  run_.cluster_->Signal(victim, SIGKILL);
  run_.DropClient(victim);
  const auto fired = Clock::now();
  notes_.push_back("SIGKILL node " + std::to_string(victim) + " (" + address +
                   ") with every reader paused after its first record");
  (void)WriteWholeFile(run_.run_dir_ + "/go-readers", "go\n");
  WaitAll(tasks, o_.fault_deadline_s + 10);
  int named_it = 0;
  for (uint32_t k = 0; k < subpartitions_; ++k) {
    const ReaderResult rr = ReaderOutcome(k, tasks[k]);
    if (!rr.ended && Contains(rr.error, address)) {
      ++named_it;
      continue;
    }
    r.errors.push_back("kill-daemon: " + tasks[k].name + " should fail naming " + address +
                       ", got: " + (rr.ended ? "end of data" : rr.error));
  }
  notes_.push_back(std::to_string(named_it) + " of " + std::to_string(subpartitions_) +
                   " readers failed naming " + address + " within " +
                   Fixed(Seconds(fired), 1) + " s");
  r.AddExtra("readers_failed_naming_daemon", static_cast<double>(named_it));
  if (survivors.empty()) return;
  const auto readers = RunReaders(survivors);
  Verify(surviving, readers, true);
  notes_.push_back("readers of the surviving daemons' map outputs: " +
                   std::to_string(r.records_received) + " of " +
                   std::to_string(r.records_expected) + " records");
}

// At spill_max_bytes: a writer on node 0 that needs more than the quota waits for credit (and
// fails after its credit timeout with the clear error); the spill files never exceed the quota;
// the committed map outputs stay readable (the readers run after this).
void ExternalJob::DiskQuotaFault(uint32_t partition) {
  Report& r = run_.report_;
  const uint64_t avg = (uint64_t{o_.record_min} + o_.record_max) / 2;
  WriterSpec big;
  big.partition = partition;
  big.node = 0;
  big.records = 4 * o_.spill_quota / avg + 1;
  big.credit_timeout_ms = 2000;
  Task t = StartWriter(big);
  uint64_t peak = 0;
  double waiting = 0, disk_metric = 0;  // the daemon's own view (sluice_store_writers_waiting)
  const auto start = Clock::now();
  while (!Reap(t, 0) && Seconds(start) < o_.timeout_s) {
    peak = std::max(peak, SpillFileBytes(0, nullptr));
    if (control::ControlClient* c = run_.Client(0); c != nullptr) {
      auto st = c->GetStats();
      if (st.ok()) {
        waiting = std::max(waiting, Metric(st->prometheus, "sluice_store_writers_waiting"));
        disk_metric = std::max(disk_metric, Metric(st->prometheus, "sluice_spill_disk_bytes"));
      } else {
        run_.DropClient(0);
      }
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  if (!t.done) {
    kill(t.pid, SIGKILL);
    Reap(t, 5);
  }
  const WriterResult w = WriterOutcome(big, t);
  notes_.push_back("disk-quota: a writer of " + FormatBytes(big.records * avg) + " on node 0 " +
                   (w.committed ? "COMMITTED" : "failed: " + w.error) + "; spill files peaked at " +
                   FormatBytes(peak) + " of the " + FormatBytes(o_.spill_quota) + " quota");
  r.AddExtra("spill_peak_bytes", static_cast<double>(peak));
  r.AddExtra("writers_waiting_peak", waiting);
  notes_.push_back("node 0's metrics: sluice_store_writers_waiting peaked at " + Fixed(waiting, 0) +
                   ", sluice_spill_disk_bytes at " + FormatBytes(static_cast<uint64_t>(disk_metric)));
  // Not asserted: the store's 200 ms timer clears its quota flag whenever memory is under
  // store_memory, so the gauge can read 0 while a writer still waits (reported to the store's
  // owner). The writer's own error says that it waited.
  if (disk_metric > static_cast<double>(o_.spill_quota)) {
    r.errors.push_back("disk-quota: node 0 reported sluice_spill_disk_bytes " +
                       Fixed(disk_metric, 0) + " above the quota");
  }
  if (w.committed) {
    r.errors.push_back("disk-quota: a writer of 4x the quota committed: the quota held nothing");
  } else if (!Contains(w.error, "write credit") && !Contains(w.error, "No space left") &&
             !Contains(w.error, "quota")) {
    r.errors.push_back("disk-quota: the writer at the quota failed without the credit or "
                       "quota error: " + w.error);
  }
  if (peak > o_.spill_quota) {
    r.errors.push_back("disk-quota: spill files reached " + std::to_string(peak) +
                       " bytes, above spill_max_bytes " + std::to_string(o_.spill_quota));
  }
  const std::string state = ListState(0, big.partition, 0);
  notes_.push_back("node 0 lists its map output as " + state);
  if (state == "committed") r.errors.push_back("disk-quota: the failed writer's output is listed as committed");
}

void ExternalJob::ReleaseAndCheck(const std::vector<int>& nodes) {
  Report& r = run_.report_;
  uint64_t on_disk = 0, in_memory = 0;
  for (int node : nodes) {
    control::ControlClient* c = run_.Client(node);
    if (c == nullptr) continue;
    auto list = client::ListExternal(*c, job_);
    if (!list.ok()) continue;
    for (const auto& p : list->partitions) {
      on_disk += p.bytes_on_disk;
      in_memory += p.bytes_in_memory;
    }
  }
  r.AddExtra("bytes_on_disk_before_release", static_cast<double>(on_disk));
  r.AddExtra("bytes_in_memory_before_release", static_cast<double>(in_memory));
  for (int node : nodes) {
    control::ControlClient* c = run_.Client(node);
    Status s = c != nullptr ? client::ReleaseExternalJob(*c, job_, token_)
                            : IoError("no control connection");
    if (!s.ok()) {
      r.errors.push_back("release of job " + job_ + " on node " + std::to_string(node) +
                         " failed: " + s.ToString());
    }
  }
  int left = 0;
  const auto start = Clock::now();
  for (int node : nodes) {
    int files = 0;
    while (true) {
      SpillFileBytes(node, &files);
      if (files == 0 || Seconds(start) > 10) break;
      std::this_thread::sleep_for(milliseconds(50));
    }
    if (files > 0) {
      r.errors.push_back("node " + std::to_string(node) + " still has " + std::to_string(files) +
                         " spill files 10 s after the release");
    }
    left += files;
  }
  r.AddExtra("spill_files_left", static_cast<double>(left));
  leaks_ = run_.CheckLeaks(nodes, milliseconds(10000), &r.errors);
  for (auto& [id, l] : leaks_) r.leaked_segments += l > 0 ? static_cast<uint64_t>(l) : 0;
  notes_.push_back("released on " + std::to_string(nodes.size()) + " daemons (held " +
                   FormatBytes(in_memory) + " in memory, " + FormatBytes(on_disk) +
                   " on disk): " +
                   std::to_string(left) + " spill files left, " +
                   std::to_string(r.leaked_segments) + " segments not back");
}

void ExternalJob::AddNodeReports(const std::vector<WriterSpec>& specs) {
  Report& r = run_.report_;
  for (int i = 0; i < o_.nodes; ++i) {
    NodeReport nr;
    const Node& node = run_.cluster_->node(i);
    nr.index = i;
    nr.address = node.address();
    nr.pid = node.pid;
    for (const auto& w : specs) {
      if (w.node != i) continue;
      // Appends only (GCC 12 at -O3: a false -Wrestrict on "W" + string&&).
      nr.tasks.append(nr.tasks.empty() ? "W" : " W").append(std::to_string(w.partition));
      if (w.attempt > 0) nr.tasks.append(".").append(std::to_string(w.attempt));
    }
    if (nr.tasks.size() > 14) nr.tasks = nr.tasks.substr(0, 12) + "..";
    nr.state = node.alive ? "up" : "killed";
    const auto& st = run_.stats_[static_cast<size_t>(i)];
    nr.network_memory_bytes = st.total_segments * st.segment_size;
    auto l = leaks_.find(i);
    nr.leaked_segments = l != leaks_.end() ? l->second : -1;
    if (node.alive) nr.peak_rss_bytes = ReadPeakRss(node.pid).value_or(st.peak_rss_bytes);
    r.node_reports.push_back(std::move(nr));
  }
}

// The highest attempt of each partition: what the readers name.
std::vector<ExternalJob::WriterResult> ExternalJob::Named(
    const std::vector<WriterResult>& writers) const {
  std::map<uint32_t, WriterResult> last;
  for (const auto& w : writers) {
    auto it = last.find(w.spec.partition);
    if (it == last.end() || it->second.spec.attempt < w.spec.attempt) last[w.spec.partition] = w;
  }
  std::vector<WriterResult> named;
  for (auto& [p, w] : last) named.push_back(std::move(w));
  return named;
}

void ExternalJob::Run(std::vector<std::string>* notes) {
  Report& r = run_.report_;
  r.job = std::string("external-") + (o_.ext_pipelined ? "pipelined" : "blocking");
  r.producers = o_.writers;
  r.consumers = o_.readers;
  token_ = shuffle::auth::MakeJobToken();
  token_file_ = run_.run_dir_ + "/" + job_ + ".token";
  if (Status s = WriteWholeFile(token_file_, token_ + "\n", 0600); !s.ok()) {
    r.errors.push_back(s.ToString());
    return;
  }
  std::vector<WriterSpec> specs = PlanWriters();
  const auto start = Clock::now();
  if (o_.fault == Fault::kKillWriter) KillWriterFault(&specs);
  std::vector<WriterResult> writers;
  std::vector<ReaderResult> readers;
  if (o_.ext_pipelined) {
    RunPipelined(specs, &writers, &readers);
  } else {
    writers = RunWriters(specs);
  }
  const std::vector<WriterResult> named = Named(writers);
  if (o_.attempts > 1) {
    notes_.push_back("map 0 committed attempts 0 to " + std::to_string(o_.attempts - 1) +
                     "; the readers name attempt " + std::to_string(named.front().spec.attempt));
  }
  uint64_t sent = 0;
  for (const auto& w : named) {
    for (uint64_t n : w.records) sent += n;
  }
  if (o_.fault == Fault::kDiskQuota) DiskQuotaFault(static_cast<uint32_t>(o_.writers));
  if (o_.fault == Fault::kKillDaemon) {
    KillDaemonFault(named);
  } else {
    if (!o_.ext_pipelined) {
      std::vector<std::string> outputs;
      for (const auto& w : named) {
        if (w.committed) outputs.push_back(w.map_output);
      }
      readers = RunReaders(outputs);
    }
    Verify(named, readers, true);
  }
  // kill-daemon: what the survivors' readers were to read.
  r.records_sent = o_.fault == Fault::kKillDaemon ? r.records_expected : sent;
  r.seconds = Seconds(start);
  r.mib_per_second = tools::MiBPerSecond(r.bytes_received, r.seconds);
  std::vector<int> alive;
  for (int i = 0; i < o_.nodes; ++i) {
    if (run_.cluster_->node(i).alive) alive.push_back(i);
  }
  ReleaseAndCheck(alive);
  AddNodeReports(specs);
  r.AddExtra("mode", o_.ext_pipelined ? "pipelined" : "blocking");
  r.AddExtra("writers", static_cast<double>(specs.size()));
  r.AddExtra("subpartitions", static_cast<double>(subpartitions_));
  notes->insert(notes->end(), notes_.begin(), notes_.end());
}

}  // namespace sluice::harness
