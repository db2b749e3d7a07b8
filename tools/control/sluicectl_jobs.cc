// sluicectl's read-and-cancel commands: stats, dump, status, watch, cancel, jobs.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "tools/control/sluicectl_common.h"

namespace sluice::control::ctl {
namespace {

// Connects to the daemon of --host/--port; an exit code in *rc when it cannot.
std::unique_ptr<ControlClient> Connect(const Globals& g, int* rc) {
  auto options = ClientOptions(g);
  if (!options.ok()) {
    *rc = Refuse(options.status());
    return nullptr;
  }
  auto client = ControlClient::Connect(g.host, g.port, *options);
  if (!client.ok()) {
    *rc = Fail(client.status());
    return nullptr;
  }
  return std::move(*client);
}

void PrintStats(const NodeStats& s, bool json) {
  if (json) {
    std::printf(
        "{\"node\":%s,\"segment_size\":%u,\"total_segments\":%llu,\"available_segments\":%llu,"
        "\"buffers_per_channel\":%u,\"floating_per_gate\":%u,\"running_jobs\":%u,"
        "\"connections\":%llu,\"rss_bytes\":%llu,\"peak_rss_bytes\":%llu,"
        "\"protocol_errors\":%llu}\n",
        JsonString(s.node_name).c_str(), s.segment_size, ULL(s.total_segments),
        ULL(s.available_segments), s.buffers_per_channel, s.floating_per_gate, s.running_jobs,
        ULL(s.connections), ULL(s.rss_bytes), ULL(s.peak_rss_bytes), ULL(s.protocol_errors));
    return;
  }
  std::printf(
      "# node %s: %llu/%llu segments of %u bytes free, %u jobs running, %llu connections, "
      "RSS %llu MiB (peak %llu MiB), %llu protocol errors\n",
      s.node_name.c_str(), ULL(s.available_segments), ULL(s.total_segments), s.segment_size,
      s.running_jobs, ULL(s.connections), ULL(s.rss_bytes >> 20), ULL(s.peak_rss_bytes >> 20),
      ULL(s.protocol_errors));
  std::fputs(s.prometheus.c_str(), stdout);
}

Command StatsCommand(CLI::App& app, Globals& g, bool dump) {
  CLI::App* sub = dump ? app.add_subcommand("dump", "the live credit state: server readers "
                                                    "(credit, backlog) and client channels "
                                                    "(exclusive, floating, unannounced credit, "
                                                    "backlog, queued)")
                       : app.add_subcommand("stats", "pool, connections, RSS and every metric");
  if (!dump) sub->add_flag("--json", g.json, "one JSON object instead of text");
  return {sub, [&g, dump] {
            int rc = 0;
            auto client = Connect(g, &rc);
            if (!client) return rc;
            auto s = client->GetStats();
            if (!s.ok()) return Fail(s.status());
            if (dump) {
              std::fputs(s->credit_dump.empty() ? "(no channels)\n" : s->credit_dump.c_str(),
                         stdout);
            } else {
              PrintStats(*s, g.json);
            }
            return tools::kExitOk;
          }};
}

}  // namespace

void PrintJobStatus(const JobStatus& st, const std::string& node) {
  std::printf("job '%s': %s after %.2f s%s%s%s%s\n", st.job_id.c_str(), JobStateName(st.state),
              st.seconds, node.empty() ? "" : " on ", node.c_str(), st.error.empty() ? "" : ": ",
              st.error.c_str());
  const JobTotals& t = st.totals;
  std::printf("  producers %u/%u done: %llu records, %llu bytes; consumers %u/%u done: %llu "
              "records, %llu bytes\n",
              t.producers_done, t.producers, ULL(t.records_produced), ULL(t.bytes_produced),
              t.consumers_done, t.consumers, ULL(t.records_consumed), ULL(t.bytes_consumed));
  for (const auto& p : st.producers) {
    std::printf("  producer %u: %s, %llu records, %llu bytes%s%s\n", p.index,
                p.done ? "done" : "running", ULL(p.records), ULL(p.bytes),
                p.error.empty() ? "" : ", error: ", p.error.c_str());
  }
  for (const auto& c : st.consumers) {
    std::printf("  consumer %u: %s, %llu records, %llu bytes, %llu duplicated, %llu reordered, "
                "%llu corrupted%s%s%s%s\n",
                c.index, c.done ? "done" : "running", ULL(c.records), ULL(c.bytes),
                ULL(c.duplicated), ULL(c.reordered), ULL(c.corrupted),
                c.output_file.empty() ? "" : ", output ", c.output_file.c_str(),
                c.error.empty() ? "" : ", error: ", c.error.c_str());
  }
  if (!st.note.empty()) std::printf("  (%s)\n", st.note.c_str());
}

std::string JobStatusJson(const JobStatus& st) {
  const JobTotals& t = st.totals;
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                ",\"state\":\"%s\",\"seconds\":%.3f,\"producers\":%u,\"producers_done\":%u,"
                "\"consumers\":%u,\"consumers_done\":%u,\"records_produced\":%llu,"
                "\"bytes_produced\":%llu,\"records_consumed\":%llu,\"bytes_consumed\":%llu,"
                "\"bad_lines\":%llu,\"duplicated\":%llu,\"reordered\":%llu,\"corrupted\":%llu",
                JobStateName(st.state), st.seconds, t.producers, t.producers_done, t.consumers,
                t.consumers_done, ULL(t.records_produced), ULL(t.bytes_produced),
                ULL(t.records_consumed), ULL(t.bytes_consumed), ULL(t.bad_lines),
                ULL(t.duplicated), ULL(t.reordered), ULL(t.corrupted));
  return "{\"job_id\":" + JsonString(st.job_id) + buf + ",\"error\":" + JsonString(st.error) +
         "}";
}

Command AddStats(CLI::App& app, Globals& g) { return StatsCommand(app, g, false); }
Command AddDump(CLI::App& app, Globals& g) { return StatsCommand(app, g, true); }

Command AddStatus(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand("status", "a job's state and counts on this daemon");
  auto job = std::make_shared<std::string>();
  sub->add_option("job", *job, "the job id")->required();
  sub->add_flag("--json", g.json, "one JSON object instead of text");
  return {sub, [&g, job] {
            auto token = FindToken(g, *job);
            if (!token.ok()) return Refuse(token.status());
            int rc = 0;
            auto client = Connect(g, &rc);
            if (!client) return rc;
            auto st = client->GetJobStatus(*job, *token);
            if (!st.ok()) return Fail(st.status());
            if (g.json) {
              std::printf("%s\n", JobStatusJson(*st).c_str());
            } else {
              PrintJobStatus(*st, client->address());
            }
            return st->state == JobState::kUnknown ? tools::kExitFailed : tools::kExitOk;
          }};
}

Command AddWatch(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand("watch", "a job's status, refreshed until it ends");
  auto job = std::make_shared<std::string>();
  auto interval = std::make_shared<uint32_t>(1000);
  sub->add_option("job", *job, "the job id")->required();
  sub->add_option("--interval-ms", *interval, "refresh period (default 1000)")
      ->check(CLI::Range(10u, 3600000u));
  return {sub, [&g, job, interval] {
            auto token = FindToken(g, *job);
            if (!token.ok()) return Refuse(token.status());
            int rc = 0;
            auto client = Connect(g, &rc);
            if (!client) return rc;
            const bool tty = ::isatty(STDOUT_FILENO) != 0;
            while (true) {
              auto st = client->GetJobStatus(*job, *token);
              if (!st.ok()) return Fail(st.status());
              if (tty) std::fputs("\033[H\033[2J", stdout);
              PrintJobStatus(*st, client->address());
              std::fflush(stdout);
              if (st->state != JobState::kRunning) {
                return st->state == JobState::kSucceeded ? tools::kExitOk : tools::kExitFailed;
              }
              std::this_thread::sleep_for(std::chrono::milliseconds(*interval));
            }
          }};
}

Command AddCancel(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand("cancel", "cancel a job's tasks on this daemon");
  auto job = std::make_shared<std::string>();
  auto reason = std::make_shared<std::string>("sluicectl cancel");
  sub->add_option("job", *job, "the job id")->required();
  sub->add_option("reason", *reason, "why, for the job's error (default 'sluicectl cancel')");
  return {sub, [&g, job, reason] {
            auto token = FindToken(g, *job);
            if (!token.ok()) return Refuse(token.status());
            int rc = 0;
            auto client = Connect(g, &rc);
            if (!client) return rc;
            if (Status st = client->CancelJob(*job, *token, *reason); !st.ok()) return Fail(st);
            std::printf("job '%s' cancelled on %s\n", job->c_str(), client->address().c_str());
            return tools::kExitOk;
          }};
}

}  // namespace sluice::control::ctl

namespace sluice::control::ctl {

Command AddJobs(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand("jobs", "this daemon's jobs with state and counts");
  sub->add_flag("--json", g.json, "one JSON array instead of text");
  return {sub, [&g] {
            int rc = 0;
            auto client = Connect(g, &rc);
            if (!client) return rc;
            auto list = client->ListJobs();
            if (!list.ok()) return Fail(list.status());
            if (g.json) {
              std::string out = "[";
              for (size_t i = 0; i < list->jobs.size(); ++i) {
                JobStatus st;
                st.job_id = list->jobs[i].job_id;
                st.state = list->jobs[i].state;
                st.seconds = list->jobs[i].seconds;
                st.error = list->jobs[i].error;
                st.totals = list->jobs[i].totals;
                out += (i ? "," : "") + JobStatusJson(st);
              }
              std::printf("%s]\n", out.c_str());
              return tools::kExitOk;
            }
            std::printf("%-40s %-10s %10s %14s %14s %9s\n", "JOB", "STATE", "SECONDS",
                        "RECORDS OUT", "RECORDS IN", "TASKS");
            for (const JobSummary& j : list->jobs) {
              const JobTotals& t = j.totals;
              std::printf("%-40s %-10s %10.1f %14llu %14llu %4u/%-4u%s%s\n", j.job_id.c_str(),
                          JobStateName(j.state), j.seconds, ULL(t.records_produced),
                          ULL(t.records_consumed), t.producers_done + t.consumers_done,
                          t.producers + t.consumers, j.error.empty() ? "" : "  ",
                          j.error.c_str());
            }
            std::printf("%u jobs on %s%s%s\n", list->total, client->address().c_str(),
                        list->note.empty() ? "" : "; ", list->note.c_str());
            PrintExternal(*client);
            return tools::kExitOk;
          }};
}

}  // namespace sluice::control::ctl
