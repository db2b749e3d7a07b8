// sluicectl: an operator's command line for a running sluiced, over its control messages.
//
//   sluicectl [--host H] [--port N] [--auth-secret-file F] [--timeout-ms N] COMMAND [ARG...]
//     stats          pool, connections, RSS and every metric (Prometheus text)
//     dump           the live credit state: one line per server reader and client channel
//     status JOB     the job's state and its producers' and consumers' counts on this daemon
//     cancel JOB [REASON]
//
// Exit status: 0 success, 1 the daemon refused or could not be reached, 2 bad usage.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shuffle/auth.h"
#include "tools/control/control_client.h"

namespace {

using sluice::control::ControlClient;
using sluice::control::ControlClientOptions;

const char kUsage[] =
    "usage: sluicectl [--host H] [--port N] [--auth-secret-file F] [--timeout-ms N] "
    "[--segment-size BYTES] COMMAND\n"
    "  stats               pool, connections, RSS and every metric (Prometheus text)\n"
    "  dump                live credit state: server readers and client channels\n"
    "  status JOB          the job's state and counts on this daemon\n"
    "  cancel JOB [REASON] cancel the job's tasks on this daemon\n"
    "defaults: --host 127.0.0.1 --port 7070 --segment-size 32768\n";

int Usage(const std::string& why) {
  std::fprintf(stderr, "sluicectl: %s\n%s", why.c_str(), kUsage);
  return 2;
}

int Fail(const sluice::Status& st) {
  std::fprintf(stderr, "sluicectl: %s\n", st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  uint16_t port = 7070;
  ControlClientOptions options;
  options.client_name = "sluicectl";
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--host") {
      const char* v = value();
      if (!v) return Usage("--host needs a value");
      host = v;
    } else if (a == "--port") {
      const char* v = value();
      if (!v) return Usage("--port needs a value");
      const long p = std::strtol(v, nullptr, 10);
      if (p <= 0 || p > 65535) return Usage(std::string("--port ") + v + " is not a port");
      port = static_cast<uint16_t>(p);
    } else if (a == "--timeout-ms") {
      const char* v = value();
      if (!v) return Usage("--timeout-ms needs a value");
      options.timeout = std::chrono::milliseconds(std::strtol(v, nullptr, 10));
    } else if (a == "--segment-size") {
      const char* v = value();
      if (!v) return Usage("--segment-size needs a value");
      options.segment_size = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else if (a == "--auth-secret-file") {
      const char* v = value();
      if (!v) return Usage("--auth-secret-file needs a value");
      auto secret = sluice::shuffle::auth::ReadSecretFile(v);
      if (!secret.ok()) return Fail(secret.status());
      options.secret = *secret;
    } else if (a.rfind("--", 0) == 0) {
      return Usage("unknown option " + a);
    } else {
      rest.push_back(a);
    }
  }
  if (rest.empty()) return Usage("no command");
  const std::string& cmd = rest[0];
  if ((cmd == "status" && rest.size() != 2) || (cmd == "cancel" && (rest.size() < 2 || rest.size() > 3)) ||
      ((cmd == "stats" || cmd == "dump") && rest.size() != 1)) {
    return Usage("wrong arguments for " + cmd);
  }
  if (cmd != "status" && cmd != "cancel" && cmd != "stats" && cmd != "dump") {
    return Usage("unknown command " + cmd);
  }
  auto client = ControlClient::Connect(host, port, options);
  if (!client.ok()) return Fail(client.status());
  if (cmd == "stats" || cmd == "dump") {
    auto s = (*client)->GetStats();
    if (!s.ok()) return Fail(s.status());
    if (cmd == "dump") {
      std::fputs(s->credit_dump.empty() ? "(no channels)\n" : s->credit_dump.c_str(), stdout);
      return 0;
    }
    std::printf("# node %s: %llu/%llu segments of %u bytes free, %u jobs running, %llu "
                "connections, RSS %llu MiB (peak %llu MiB), %llu protocol errors\n",
                s->node_name.c_str(), static_cast<unsigned long long>(s->available_segments),
                static_cast<unsigned long long>(s->total_segments), s->segment_size,
                s->running_jobs, static_cast<unsigned long long>(s->connections),
                static_cast<unsigned long long>(s->rss_bytes >> 20),
                static_cast<unsigned long long>(s->peak_rss_bytes >> 20),
                static_cast<unsigned long long>(s->protocol_errors));
    std::fputs(s->prometheus.c_str(), stdout);
    return 0;
  }
  if (cmd == "cancel") {
    sluice::Status st = (*client)->CancelJob(rest[1], rest.size() == 3 ? rest[2] : "sluicectl cancel");
    if (!st.ok()) return Fail(st);
    std::printf("job '%s' cancelled\n", rest[1].c_str());
    return 0;
  }
  auto st = (*client)->GetJobStatus(rest[1]);
  if (!st.ok()) return Fail(st.status());
  std::printf("job '%s': %s after %.2f s%s%s\n", st->job_id.c_str(),
              sluice::control::JobStateName(st->state), st->seconds, st->error.empty() ? "" : ": ",
              st->error.c_str());
  for (const auto& p : st->producers) {
    std::printf("  producer %u: %s, %llu records, %llu bytes%s%s\n", p.index,
                p.done ? "done" : "running", static_cast<unsigned long long>(p.records),
                static_cast<unsigned long long>(p.bytes), p.error.empty() ? "" : ", error: ",
                p.error.c_str());
  }
  for (const auto& c : st->consumers) {
    std::printf("  consumer %u: %s, %llu records, %llu bytes, %llu duplicated, %llu reordered, "
                "%llu corrupted%s%s\n",
                c.index, c.done ? "done" : "running", static_cast<unsigned long long>(c.records),
                static_cast<unsigned long long>(c.bytes),
                static_cast<unsigned long long>(c.duplicated),
                static_cast<unsigned long long>(c.reordered),
                static_cast<unsigned long long>(c.corrupted), c.error.empty() ? "" : ", error: ",
                c.error.c_str());
  }
  return st->state == sluice::control::JobState::kUnknown ? 1 : 0;
}
