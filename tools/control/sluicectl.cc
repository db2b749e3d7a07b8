// sluicectl: an operator's command line for a running sluiced, over its control messages.
//
//   sluicectl [--host H] [--port N] [--state-dir D | --auth-secret-file F | --auth off]
//             [--timeout-ms N] COMMAND [ARG...]
//     stats          pool, connections, RSS and every metric (Prometheus text)
//     dump           the live credit state: one line per server reader and client channel
//     status JOB --token T | --token-file F
//                    the job's state and its producers' and consumers' counts on this daemon
//     cancel JOB --token T | --token-file F [REASON]
//
// Without a token the request goes out without one, and the daemon refuses it for any job
// that has a token (all jobs, with the default tools).
// The secret is found the way sluiced finds it: --auth-secret-file, else
// <--state-dir>/auth_secret (default /var/lib/sluice). A job's token comes from whoever
// submitted it (sluice-harness writes <run dir>/<job>.token).
//
// Exit status: 0 success, 1 the daemon refused or could not be reached, 2 bad usage or no
// usable secret or token.
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "shuffle/auth.h"
#include "tools/control/control_client.h"

namespace {

using sluice::control::ControlClient;
using sluice::control::ControlClientOptions;

const char kUsage[] =
    "usage: sluicectl [--host H] [--port N] [--state-dir D | --auth-secret-file F | --auth off]\n"
    "                 [--timeout-ms N] [--segment-size BYTES] COMMAND\n"
    "  stats                      pool, connections, RSS and every metric (Prometheus text)\n"
    "  dump                       live credit state: server readers and client channels\n"
    "  status JOB --token T       the job's state and counts on this daemon\n"
    "  cancel JOB --token T [REASON]\n"
    "                             cancel the job's tasks on this daemon\n"
    "  --token-file F             instead of --token: a file (mode 0600) holding the job's token\n"
    "The daemon's secret: --auth-secret-file F, else DIR/auth_secret of --state-dir DIR (the\n"
    "daemon's state directory, default /var/lib/sluice). --auth off: for a daemon started with\n"
    "--auth off (loopback only).\n"
    "defaults: --host 127.0.0.1 --port 7070 --segment-size 32768\n";

int Usage(const std::string& why) {
  std::fprintf(stderr, "sluicectl: %s\n%s", why.c_str(), kUsage);
  return 2;
}

int Fail(const sluice::Status& st) {
  std::fprintf(stderr, "sluicectl: %s\n", st.ToString().c_str());
  return 1;
}

// A secret or token that cannot be used is the caller's to fix: exit 2.
int Refuse(const sluice::Status& st) {
  std::fprintf(stderr, "sluicectl: %s\n", st.ToString().c_str());
  return 2;
}

struct Args {
  std::string host = "127.0.0.1";
  uint16_t port = 7070;
  ControlClientOptions options;
  sluice::control::SecretSource secret;
  bool auth = true;
  std::optional<std::string> token;
  std::string token_file;
  std::vector<std::string> rest;
};

// Parses argv into `a`; returns an exit status when the program should end now (-1: go on).
int ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg.rfind("--", 0) != 0) {
      a->rest.push_back(arg);
      continue;
    }
    static const char* const kValued[] = {
        "--host",      "--port", "--timeout-ms", "--segment-size", "--auth-secret-file",
        "--state-dir", "--auth", "--token",      "--token-file"};
    bool known = false;
    for (const char* k : kValued) known = known || arg == k;
    if (!known) return Usage("unknown option " + arg);
    const char* v = value();
    if (v == nullptr) return Usage(arg + " needs a value");
    const std::string val = v;
    if (arg == "--host") {
      a->host = val;
    } else if (arg == "--port") {
      const long p = std::strtol(v, nullptr, 10);
      if (p <= 0 || p > 65535) return Usage("--port " + val + " is not a port");
      a->port = static_cast<uint16_t>(p);
    } else if (arg == "--timeout-ms") {
      const long ms = std::strtol(v, nullptr, 10);
      if (ms <= 0) return Usage("--timeout-ms " + val + " is not a positive number of ms");
      a->options.timeout = std::chrono::milliseconds(ms);
    } else if (arg == "--segment-size") {
      a->options.segment_size = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else if (arg == "--auth-secret-file") {
      a->secret.auth_secret_file = val;
    } else if (arg == "--state-dir") {
      a->secret.state_dir = val;
    } else if (arg == "--auth") {
      if (val != "on" && val != "off") return Usage("--auth is on or off, got " + val);
      a->auth = val == "on";
    } else if (arg == "--token") {
      a->token = val;
    } else {
      a->token_file = val;
    }
  }
  return -1;
}

// Checks the command and its arguments; returns an exit status on a usage error, -1 when fine.
int CheckCommand(const Args& a) {
  if (a.rest.empty()) return Usage("no command");
  const std::string& cmd = a.rest[0];
  if (cmd != "status" && cmd != "cancel" && cmd != "stats" && cmd != "dump") {
    return Usage("unknown command " + cmd);
  }
  if ((cmd == "status" && a.rest.size() != 2) ||
      (cmd == "cancel" && (a.rest.size() < 2 || a.rest.size() > 3)) ||
      ((cmd == "stats" || cmd == "dump") && a.rest.size() != 1)) {
    return Usage("wrong arguments for " + cmd);
  }
  const bool jobbed = cmd == "status" || cmd == "cancel";
  if (a.token && !a.token_file.empty()) return Usage("give --token or --token-file, not both");
  if (!jobbed && (a.token || !a.token_file.empty())) return Usage(cmd + " takes no job token");
  if (!a.auth && (!a.secret.auth_secret_file.empty() || !a.secret.state_dir.empty())) {
    return Usage("--auth off takes no --auth-secret-file or --state-dir");
  }
  return -1;
}

int PrintStats(const sluice::control::NodeStats& s, bool dump) {
  if (dump) {
    std::fputs(s.credit_dump.empty() ? "(no channels)\n" : s.credit_dump.c_str(), stdout);
    return 0;
  }
  std::printf(
      "# node %s: %llu/%llu segments of %u bytes free, %u jobs running, %llu "
      "connections, RSS %llu MiB (peak %llu MiB), %llu protocol errors\n",
      s.node_name.c_str(), static_cast<unsigned long long>(s.available_segments),
      static_cast<unsigned long long>(s.total_segments), s.segment_size, s.running_jobs,
      static_cast<unsigned long long>(s.connections),
      static_cast<unsigned long long>(s.rss_bytes >> 20),
      static_cast<unsigned long long>(s.peak_rss_bytes >> 20),
      static_cast<unsigned long long>(s.protocol_errors));
  std::fputs(s.prometheus.c_str(), stdout);
  return 0;
}

int PrintJobStatus(const sluice::control::JobStatus& st) {
  std::printf("job '%s': %s after %.2f s%s%s\n", st.job_id.c_str(),
              sluice::control::JobStateName(st.state), st.seconds, st.error.empty() ? "" : ": ",
              st.error.c_str());
  for (const auto& p : st.producers) {
    std::printf("  producer %u: %s, %llu records, %llu bytes%s%s\n", p.index,
                p.done ? "done" : "running", static_cast<unsigned long long>(p.records),
                static_cast<unsigned long long>(p.bytes),
                p.error.empty() ? "" : ", error: ", p.error.c_str());
  }
  for (const auto& c : st.consumers) {
    std::printf(
        "  consumer %u: %s, %llu records, %llu bytes, %llu duplicated, %llu reordered, "
        "%llu corrupted%s%s\n",
        c.index, c.done ? "done" : "running", static_cast<unsigned long long>(c.records),
        static_cast<unsigned long long>(c.bytes), static_cast<unsigned long long>(c.duplicated),
        static_cast<unsigned long long>(c.reordered), static_cast<unsigned long long>(c.corrupted),
        c.error.empty() ? "" : ", error: ", c.error.c_str());
  }
  return st.state == sluice::control::JobState::kUnknown ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  a.options.client_name = "sluicectl";
  if (int rc = ParseArgs(argc, argv, &a); rc >= 0) return rc;
  if (int rc = CheckCommand(a); rc >= 0) return rc;
  if (a.auth) {
    auto secret = sluice::control::FindSecret(a.secret);
    if (!secret.ok()) return Refuse(secret.status());
    a.options.secret = *secret;
  }
  std::string token = a.token.value_or("");
  if (!a.token_file.empty()) {
    // A token is a secret too: the same checks as a secret file (mode 0600, not empty).
    auto t = sluice::shuffle::auth::ReadSecretFile(a.token_file);
    if (!t.ok()) return Refuse(t.status());
    token = *t;
  }
  const std::string& cmd = a.rest[0];
  auto client = ControlClient::Connect(a.host, a.port, a.options);
  if (!client.ok()) return Fail(client.status());
  if (cmd == "stats" || cmd == "dump") {
    auto s = (*client)->GetStats();
    if (!s.ok()) return Fail(s.status());
    return PrintStats(*s, cmd == "dump");
  }
  if (cmd == "cancel") {
    const std::string reason = a.rest.size() == 3 ? a.rest[2] : "sluicectl cancel";
    sluice::Status st = (*client)->CancelJob(a.rest[1], token, reason);
    if (!st.ok()) return Fail(st);
    std::printf("job '%s' cancelled\n", a.rest[1].c_str());
    return 0;
  }
  auto st = (*client)->GetJobStatus(a.rest[1], token);
  if (!st.ok()) return Fail(st.status());
  return PrintJobStatus(*st);
}
