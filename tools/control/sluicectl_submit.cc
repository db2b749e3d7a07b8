// sluicectl submit: a job file to every node it names, its token to a 0600 file, and --wait.
#include <unistd.h>

#include <chrono>
#include <map>
#include <thread>

#include "shuffle/auth.h"
#include "tools/control/job_file.h"
#include "tools/control/sluicectl_common.h"
#include "tools/daemon/job_runner.h"

namespace sluice::control::ctl {
namespace {

using ULL = unsigned long long;

// Writes `token` to a new 0600 file: --token-file when given, else the job's file in the state
// directory (auth::CreateJobTokenFile). Returns its path. An existing file is not overwritten:
// a job id is used once.
Result<std::string> WriteTokenFile(const Globals& g, const std::string& job_id,
                                   const std::string& token) {
  if (g.token_file.empty()) return shuffle::auth::CreateJobTokenFile(StateDir(g), job_id, token);
  if (Status st = shuffle::auth::CreateTokenFile(g.token_file, token); !st.ok()) return st;
  return g.token_file;
}

// Sends the job to every node; on any refusal, cancels it on the nodes that took it. Prints
// each refusal. Returns whether every node accepted.
bool SubmitAll(const JobSpec& spec, const ControlClientOptions& options) {
  std::vector<uint32_t> accepted;
  bool ok = true;
  for (uint32_t i = 0; i < spec.nodes.size(); ++i) {
    auto client = ConnectTo(spec.nodes[i], options);
    Status st = client.ok() ? (*client)->SubmitJob(spec, i) : client.status();
    if (st.ok()) {
      accepted.push_back(i);
      continue;
    }
    ok = false;
    std::fprintf(stderr, "sluicectl: node %u (%s) refused job '%s': %s\n", i,
                 spec.nodes[i].c_str(), spec.job_id.c_str(), st.ToString().c_str());
    break;  // the remaining nodes are never asked
  }
  if (ok) return true;
  for (uint32_t i : accepted) {
    auto client = ConnectTo(spec.nodes[i], options);
    Status st = client.ok() ? (*client)->CancelJob(spec.job_id, spec.token,
                                                   "another node refused the job")
                            : client.status();
    std::fprintf(stderr, "sluicectl: cancelled on node %u (%s)%s%s\n", i, spec.nodes[i].c_str(),
                 st.ok() ? "" : ": ", st.ok() ? "" : st.ToString().c_str());
  }
  return false;
}

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// One progress report: a bar redrawn in place on a terminal, a line otherwise.
void ShowProgress(const JobTotals& t, uint64_t expected_records, double seconds, bool tty) {
  const double rate = seconds > 0 ? static_cast<double>(t.bytes_consumed) / seconds : 0;
  const uint32_t tasks = t.producers + t.consumers;
  const double done =
      expected_records > 0
          ? static_cast<double>(t.records_consumed) / static_cast<double>(expected_records)
          : (tasks ? static_cast<double>(t.producers_done + t.consumers_done) / tasks : 0);
  char line[256];
  std::snprintf(line, sizeof(line), "%llu records, %s moved, %s/s, %.1f s elapsed, %u/%u tasks done",
                ULL(t.records_consumed), Mib(t.bytes_consumed).c_str(), Mib(uint64_t(rate)).c_str(),
                seconds, t.producers_done + t.consumers_done, tasks);
  if (!tty) {
    std::printf("%s\n", line);
  } else {
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(std::min(1.0, done) * kWidth);
    std::printf("\r[%s%s] %3d%% %s\033[K", std::string(fill, '#').c_str(),
                std::string(kWidth - fill, '.').c_str(), static_cast<int>(done * 100), line);
  }
  std::fflush(stdout);
}

JobTotals Add(JobTotals a, const JobTotals& b) {
  a.producers += b.producers;
  a.consumers += b.consumers;
  a.producers_done += b.producers_done;
  a.consumers_done += b.consumers_done;
  a.records_produced += b.records_produced;
  a.bytes_produced += b.bytes_produced;
  a.records_consumed += b.records_consumed;
  a.bytes_consumed += b.bytes_consumed;
  a.bad_lines += b.bad_lines;
  return a;
}

// Polls every node until none runs the job; prints progress and each failure. Exit code.
int Wait(const JobSpec& spec, const ControlClientOptions& options, uint32_t interval_ms) {
  std::map<std::string, std::unique_ptr<ControlClient>> clients;  // one per address
  for (const std::string& node : spec.nodes) {
    if (clients.count(node)) continue;
    auto c = ConnectTo(node, options);
    if (!c.ok()) return Fail(c.status());
    clients[node] = std::move(*c);
  }
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  const uint64_t expected = spec.kind == JobKind::kGenerated
                                ? spec.records_per_producer * spec.producer_nodes.size()
                                : 0;
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    JobTotals sum;
    std::vector<std::pair<std::string, JobStatus>> ended;
    bool running = false;
    for (auto& [node, client] : clients) {
      auto st = client->GetJobStatus(spec.job_id, spec.token);
      if (!st.ok()) return Fail(st.status());
      sum = Add(sum, st->totals);
      running = running || st->state == JobState::kRunning;
      ended.emplace_back(node, std::move(*st));
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ShowProgress(sum, expected, secs, tty);
    if (!running) {
      if (tty) std::printf("\n");
      int rc = tools::kExitOk;
      for (const auto& [node, st] : ended) {
        if (st.state == JobState::kSucceeded) continue;
        rc = tools::kExitFailed;
        std::fprintf(stderr, "sluicectl: job '%s' on %s: %s%s%s\n", spec.job_id.c_str(),
                     node.c_str(), JobStateName(st.state), st.error.empty() ? "" : ": ",
                     st.error.c_str());
      }
      std::printf("job '%s' %s on %zu nodes: %llu records, %s in %.1f s\n", spec.job_id.c_str(),
                  rc == 0 ? "succeeded" : "failed", clients.size(), ULL(sum.records_consumed),
                  Mib(sum.bytes_consumed).c_str(), secs);
      return rc;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
}

struct SubmitArgs {
  std::string file;
  bool wait = false;
  uint32_t interval_ms = 1000;
};

int RunSubmit(const Globals& g, const SubmitArgs& a) {
  auto spec = LoadJobFile(a.file);
  if (!spec.ok()) return Refuse(spec.status());
  if (spec->nodes.empty()) {
    return Refuse(InvalidArgument("job file " + a.file + ": nodes is empty; list every node's "
                                  "sluiced as \"host:port\""));
  }
  if (spec->job_id.empty()) spec->job_id = MakeJobId();
  // Refused here, before a token file is written, as every node would refuse it.
  if (Status st = daemon::ValidateJobSpec(*spec); !st.ok()) return Refuse(st);
  spec->token = shuffle::auth::MakeJobToken();
  auto options = ClientOptions(g);
  if (!options.ok()) return Refuse(options.status());
  auto written = WriteTokenFile(g, spec->job_id, spec->token);
  if (!written.ok()) return Refuse(written.status());
  const std::string& token_path = *written;
  if (!SubmitAll(*spec, *options)) {
    ::unlink(token_path.c_str());
    return tools::kExitFailed;
  }
  std::printf("%s\n", spec->job_id.c_str());
  std::fprintf(stderr, "job '%s' submitted to %zu nodes; its token is in %s\n",
               spec->job_id.c_str(), spec->nodes.size(), token_path.c_str());
  std::fflush(stdout);
  if (!a.wait) return tools::kExitOk;
  return Wait(*spec, *options, a.interval_ms);
}

}  // namespace

Command AddSubmit(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand("submit", "send a job file to every node it names");
  auto a = std::make_shared<SubmitArgs>();
  sub->add_option("job_file", a->file, "the job (TOML; keys are JobSpec's fields)")
      ->required();
  sub->add_flag("--wait", a->wait, "show progress until the job ends; exit 1 if it failed");
  sub->add_option("--interval-ms", a->interval_ms, "progress period (default 1000)")
      ->check(CLI::Range(10u, 3600000u));
  return {sub, [&g, a] { return RunSubmit(g, *a); }};
}

}  // namespace sluice::control::ctl
