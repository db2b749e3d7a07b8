#include "tools/harness/external_job.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <thread>

#include "client/ext_control.h"
#include "client/map_output.h"
#include "shuffle/auth.h"
#include "tools/harness/harness_run.h"
#include "tools/harness/process_util.h"
#include "tools/harness/run_util.h"

namespace sluice::harness {
namespace {

using std::chrono::milliseconds;

std::vector<uint64_t> Numbers(const std::string& text) {
  std::vector<uint64_t> v;
  size_t pos = 0;
  while (pos < text.size()) {
    char* end = nullptr;
    v.push_back(std::strtoull(text.c_str() + pos, &end, 10));
    pos = static_cast<size_t>(end - text.c_str());
    if (pos < text.size() && text[pos] != ' ') break;
    while (pos < text.size() && text[pos] == ' ') ++pos;
  }
  return v;
}

std::string Last(const std::multimap<std::string, std::string>& m, const std::string& key) {
  auto range = m.equal_range(key);
  std::string v;
  for (auto it = range.first; it != range.second; ++it) v = it->second;
  return v;
}

std::string Mode(const Options& o) { return o.ext_pipelined ? "pipelined" : "blocking"; }

}  // namespace

ExternalJob::ExternalJob(HarnessRun& run) : run_(run), o_(run.o_) {
  std::error_code ec;
  self_ = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  job_ = std::string("h").append(std::to_string(getpid())).append("-ext");
  subpartitions_ = static_cast<uint32_t>(o_.readers);
}

ExternalJob::~ExternalJob() {
  for (pid_t pid : live_) {
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
  }
}

// ---- processes ----

ExternalJob::Task ExternalJob::Spawn(const std::string& name,
                                     const std::vector<std::string>& args) {
  Task t;
  t.name = name;
  const std::string base = run_.run_dir_ + "/task-" + std::to_string(task_seq_++);
  t.out_path = base + ".out";
  t.err_path = base + ".err";
  std::vector<std::string> all = {self_, kExtTaskFlag};
  all.insert(all.end(), args.begin(), args.end());
  {
    std::string cmd = "# " + name + ":";
    for (const auto& a : all) cmd += " " + a;
    (void)WriteWholeFile(base + ".cmd", cmd + "\n");
  }
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int out = open(t.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err = open(t.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    const int in = open("/dev/null", O_RDONLY);
    dup2(in, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out);
  close(err);
  t.pid = pid;
  if (pid > 0) {
    live_.push_back(pid);
  } else {
    t.done = true;
    t.wait_status = 127 << 8;
  }
  return t;
}

bool ExternalJob::Reap(Task& t, double wait_s) {
  const auto start = Clock::now();
  while (!t.done) {
    int st = 0;
    const pid_t r = waitpid(t.pid, &st, WNOHANG);
    if (r == t.pid) {
      t.done = true;
      t.wait_status = st;
      live_.erase(std::remove(live_.begin(), live_.end(), t.pid), live_.end());
      break;
    }
    if (Seconds(start) >= wait_s || Interrupted()) break;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return t.done;
}

void ExternalJob::WaitAll(std::vector<Task>& tasks, double deadline_s) {
  const auto start = Clock::now();
  for (Task& t : tasks) {
    if (!Reap(t, std::max(0.0, deadline_s - Seconds(start)))) {
      run_.report_.errors.push_back(t.name + " (pid " + std::to_string(t.pid) +
                                    ") did not end within " + Fixed(deadline_s, 0) +
                                    " s: killed (see " + t.out_path + ")");
      kill(t.pid, SIGKILL);
      Reap(t, 5);
    }
  }
}

bool ExternalJob::WaitForLine(Task& t, const std::string& line, double deadline_s) {
  const auto start = Clock::now();
  while (Seconds(start) < deadline_s && !Interrupted()) {
    const std::string out = Output(t);
    if (out.find(line + "\n") != std::string::npos) return true;
    if (Reap(t, 0)) return Output(t).find(line + "\n") != std::string::npos;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

std::string ExternalJob::Output(const Task& t) const {
  auto text = ReadWholeFile(t.out_path);
  return text.ok() ? *text : std::string();
}

std::string ExternalJob::Describe(const Task& t) const {
  std::string err;
  if (auto e = ReadWholeFile(t.err_path); e.ok()) err = *e;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  return t.name + " ended with " + DescribeWaitStatus(t.wait_status) +
         (err.empty() ? "" : ": " + err);
}

// ---- tasks ----

std::vector<std::string> ExternalJob::CommonArgs() const {
  return {"--job", job_, "--token-file", token_file_, "--secret-file", run_.secret_file_};
}

std::string ExternalJob::SocketOf(int node) const {
  return run_.run_dir_ + "/node-" + std::to_string(node) + ".state/sluiced-" +
         std::to_string(run_.cluster_->node(node).port) + ".sock";
}

ExternalJob::Task ExternalJob::StartWriter(const WriterSpec& w) {
  std::vector<std::string> a = {"write"};
  const auto common = CommonArgs();
  a.insert(a.end(), common.begin(), common.end());
  a.insert(a.end(), {"--socket", SocketOf(w.node), "--partition", std::to_string(w.partition),
                     "--attempt", std::to_string(w.attempt), "--subpartitions",
                     std::to_string(subpartitions_), "--mode", Mode(o_), "--records",
                     std::to_string(w.records), "--record-min", std::to_string(o_.record_min),
                     "--record-max", std::to_string(o_.record_max), "--seed",
                     std::to_string(o_.seed), "--credit-timeout-ms",
                     std::to_string(w.credit_timeout_ms)});
  if (w.pause_after != ~0ull) {
    // Paused before the first record: until the readers are there (pipelined). Mid-way: until
    // it is killed (kill-writer).
    a.insert(a.end(), {"--pause-after", std::to_string(w.pause_after), "--go-file",
                       run_.run_dir_ + (w.pause_after == 0 ? "/go-writers" : "/never")});
  }
  return Spawn("writer of partition " + std::to_string(w.partition) + " attempt " +
                   std::to_string(w.attempt) + " on node " + std::to_string(w.node),
               a);
}

ExternalJob::WriterResult ExternalJob::WriterOutcome(const WriterSpec& w, Task& t) {
  WriterResult r;
  r.spec = w;
  const auto out = ParseTaskOutput(Output(t));
  r.map_output = Last(out, "map_output");
  r.records = Numbers(Last(out, "records"));
  r.bytes = Numbers(Last(out, "bytes"));
  r.error = Last(out, "error");
  r.committed = t.done && WIFEXITED(t.wait_status) && WEXITSTATUS(t.wait_status) == 0 &&
                !r.map_output.empty() && r.records.size() == subpartitions_ &&
                r.bytes.size() == subpartitions_;
  if (!r.committed && r.error.empty()) r.error = Describe(t);
  return r;
}

ExternalJob::Task ExternalJob::StartReader(uint32_t subpartition,
                                           const std::vector<std::string>& map_outputs,
                                           uint64_t pause_after) {
  std::vector<std::string> a = {"read"};
  const auto common = CommonArgs();
  a.insert(a.end(), common.begin(), common.end());
  a.insert(a.end(), {"--subpartition", std::to_string(subpartition), "--timeout-ms",
                     std::to_string(static_cast<uint64_t>(o_.fault_deadline_s * 1000))});
  for (const auto& m : map_outputs) a.insert(a.end(), {"--map-output", m});
  if (pause_after != ~0ull) {
    a.insert(a.end(), {"--pause-after", std::to_string(pause_after), "--go-file",
                       run_.run_dir_ + "/go-readers"});
  }
  // Reader k sits "on" node k + 1 (it reads from every node; on loopback only its name says so).
  const int node = static_cast<int>((subpartition + 1) % static_cast<uint32_t>(o_.nodes));
  return Spawn("reader of subpartition " + std::to_string(subpartition) + " on node " +
                   std::to_string(node),
               a);
}

ExternalJob::ReaderResult ExternalJob::ReaderOutcome(uint32_t subpartition, Task& t) {
  ReaderResult r;
  r.subpartition = subpartition;
  const auto out = ParseTaskOutput(Output(t));
  auto range = out.equal_range("output");
  for (auto it = range.first; it != range.second; ++it) {
    const auto v = Numbers(it->second);
    if (v.size() != 4) continue;
    ReadTally& tally = r.got[{static_cast<uint32_t>(v[0]), static_cast<uint32_t>(v[1])}];
    tally.records = v[2];
    tally.bytes = v[3];
  }
  const auto checks = Numbers(Last(out, "checks"));
  if (checks.size() == 3) r.checks = {checks[0], checks[1], checks[2]};
  r.ended = out.count("end") > 0 && WIFEXITED(t.wait_status) && WEXITSTATUS(t.wait_status) == 0;
  r.error = Last(out, "error");
  if (!r.ended && r.error.empty()) r.error = Describe(t);
  return r;
}

// A map output's descriptor before it committed (pipelined readers open while it writes).
std::string ExternalJob::PlannedOutput(const WriterSpec& w) const {
  client::MapOutput m;
  m.node = run_.cluster_->node(w.node).address();
  m.job = job_;
  m.partition = w.partition;
  m.attempt = w.attempt;
  m.subpartitions = subpartitions_;
  return client::EncodeMapOutput(m);
}

// ---- phases ----

std::vector<ExternalJob::WriterSpec> ExternalJob::PlanWriters() const {
  const uint64_t avg = (uint64_t{o_.record_min} + o_.record_max) / 2;
  const auto writers = static_cast<uint64_t>(o_.writers);
  const uint64_t per_writer = std::max<uint64_t>(1, o_.total_bytes / writers / avg);
  std::vector<WriterSpec> specs;
  for (int i = 0; i < o_.writers; ++i) {
    WriterSpec w;
    w.partition = static_cast<uint32_t>(i);
    w.node = i % o_.nodes;
    w.records = per_writer;
    // At the quota a writer waits for credit: here it fails after 3 s instead of hanging.
    if (o_.fault == Fault::kDiskQuota) w.credit_timeout_ms = 3000;
    specs.push_back(w);
  }
  // --attempts A: map 0 also commits attempts 1 .. A-1; the readers name the last one.
  for (int a = 1; a < o_.attempts; ++a) {
    WriterSpec w = specs[0];
    w.attempt = static_cast<uint32_t>(a);
    specs.push_back(w);
  }
  return specs;
}

std::vector<ExternalJob::WriterResult> ExternalJob::RunWriters(
    const std::vector<WriterSpec>& specs) {
  std::vector<Task> tasks;
  for (const auto& w : specs) tasks.push_back(StartWriter(w));
  WaitAll(tasks, o_.timeout_s);
  std::vector<WriterResult> results;
  for (size_t i = 0; i < specs.size(); ++i) {
    results.push_back(WriterOutcome(specs[i], tasks[i]));
    if (!results.back().committed) {
      run_.report_.errors.push_back(tasks[i].name + " did not commit: " + results.back().error);
    }
  }
  return results;
}

std::vector<ExternalJob::ReaderResult> ExternalJob::RunReaders(
    const std::vector<std::string>& outputs) {
  std::vector<Task> tasks;
  for (uint32_t k = 0; k < subpartitions_; ++k) tasks.push_back(StartReader(k, outputs));
  WaitAll(tasks, o_.timeout_s);
  std::vector<ReaderResult> results;
  for (uint32_t k = 0; k < subpartitions_; ++k) results.push_back(ReaderOutcome(k, tasks[k]));
  return results;
}

void ExternalJob::RunPipelined(const std::vector<WriterSpec>& specs,
                               std::vector<WriterResult>* writers,
                               std::vector<ReaderResult>* readers) {
  std::vector<Task> wt;
  std::vector<std::string> outputs;
  // Each writer opens its map output and waits before its first record: a reader's read set
  // names map outputs the daemon must know, and the records should stream to readers that
  // are there (a writer whose segments are all held has its output spilled at once).
  for (WriterSpec w : specs) {
    w.pause_after = 0;
    wt.push_back(StartWriter(w));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!WaitForLine(wt[i], "paused", o_.fault_deadline_s)) {
      run_.report_.errors.push_back(wt[i].name + " did not open within " +
                                    Fixed(o_.fault_deadline_s, 0) + " s: " + Describe(wt[i]));
    }
  }
  std::map<uint32_t, std::string> last;  // partition -> its highest attempt
  for (const auto& w : specs) last[w.partition] = PlannedOutput(w);
  for (const auto& [p, m] : last) outputs.push_back(m);
  std::vector<Task> rt;
  for (uint32_t k = 0; k < subpartitions_; ++k) rt.push_back(StartReader(k, outputs));
  for (Task& t : rt) {
    if (!WaitForLine(t, "opened", o_.fault_deadline_s)) {
      run_.report_.errors.push_back(t.name + " did not open within " +
                                    Fixed(o_.fault_deadline_s, 0) + " s: " + Describe(t));
    }
  }
  (void)WriteWholeFile(run_.run_dir_ + "/go-writers", "go\n");
  WaitAll(wt, o_.timeout_s);
  WaitAll(rt, o_.timeout_s);
  for (size_t i = 0; i < specs.size(); ++i) {
    writers->push_back(WriterOutcome(specs[i], wt[i]));
    if (!writers->back().committed) {
      run_.report_.errors.push_back(wt[i].name + " did not commit: " + writers->back().error);
    }
  }
  for (uint32_t k = 0; k < subpartitions_; ++k) readers->push_back(ReaderOutcome(k, rt[k]));
}

void ExternalJob::Verify(const std::vector<WriterResult>& named,
                         const std::vector<ReaderResult>& readers, bool count_in_report) {
  Report& r = run_.report_;
  uint64_t expected = 0, received = 0, bytes = 0, lost = 0, dup = 0, reordered = 0, bad = 0;
  for (const ReaderResult& rd : readers) {
    const std::string who = "reader of subpartition " + std::to_string(rd.subpartition);
    if (!rd.ended) r.errors.push_back(who + " failed: " + rd.error);
    std::set<std::pair<uint32_t, uint32_t>> keys;
    for (const WriterResult& w : named) {
      if (!w.committed) continue;
      const std::pair<uint32_t, uint32_t> key{w.spec.partition, w.spec.attempt};
      keys.insert(key);
      const uint64_t want = w.records[rd.subpartition];
      auto it = rd.got.find(key);
      const ReadTally got = it == rd.got.end() ? ReadTally{} : it->second;
      expected += want;
      received += got.records;
      bytes += got.bytes;
      if (got.records < want) lost += want - got.records;
      if (got.records > want) dup += got.records - want;
      if (got.records == want && got.bytes != w.bytes[rd.subpartition]) {
        r.errors.push_back(who + ": partition " + std::to_string(key.first) + " has " +
                           std::to_string(got.bytes) + " bytes, its writer wrote " +
                           std::to_string(w.bytes[rd.subpartition]));
      }
    }
    for (const auto& [key, got] : rd.got) {
      if (keys.count(key) > 0) continue;
      r.errors.push_back(who + " read " + std::to_string(got.records) + " records of partition " +
                         std::to_string(key.first) + " attempt " + std::to_string(key.second) +
                         ", which it did not name");
    }
    dup += rd.checks.duplicated;
    reordered += rd.checks.reordered;
    bad += rd.checks.corrupted;
  }
  if (lost > 0) r.errors.push_back(std::to_string(lost) + " records lost");
  if (dup || reordered || bad) {
    r.errors.push_back("records duplicated (" + std::to_string(dup) + "), reordered (" +
                       std::to_string(reordered) + ") or corrupted (" + std::to_string(bad) +
                       "): never acceptable");
  }
  if (!count_in_report) return;
  r.records_expected = expected;
  r.records_received = received;
  r.bytes_received = bytes;
  r.lost = lost;
  r.duplicated = dup;
  r.reordered = reordered;
  r.corrupted = bad;
}

}  // namespace sluice::harness
