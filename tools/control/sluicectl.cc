// sluicectl: the operator's command line for running sluiced daemons, over their control
// messages (schema/control.fbs).
//
//   sluicectl [--host H] [--port N] [--timeout-ms N]
//             [--auth-secret-file F] [--state-dir D] COMMAND ...
//     submit JOB.toml [--wait] [--token-file F]  send a job to every node it names
//     jobs [--json]                              this daemon's jobs, with state and counts
//     status JOB [--json]                        a job's state and counts on this daemon
//     watch JOB                                  status, refreshed until the job ends
//     cancel JOB [REASON]                        cancel the job's tasks on this daemon
//     stats [--json]                             pool, connections, RSS and every metric
//     dump                                       the live credit state (both halves)
//     plan JOB.toml                              network memory each node needs for a job
//     release JOB                                free a job's external partitions here
//
// The daemon's segment size and credit options come from its handshake and stats, never from a
// flag. The secret is found the way sluiced finds it: --auth-secret-file, else
// <--state-dir>/auth_secret (default /var/lib/sluice). A job's token is written by `submit`
// to <state_dir>/jobs/<job>.token (or --token-file) and found there by the other commands.
//
// Exit status: 0 success, 1 the daemon refused, could not be reached or a job failed, 2 bad
// usage or no usable secret or token.
#include <sys/stat.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "shuffle/auth.h"
#include "tools/control/sluicectl_common.h"

namespace sluice::control::ctl {

int Fail(const Status& st) {
  std::fprintf(stderr, "sluicectl: %s\n", st.ToString().c_str());
  return tools::kExitFailed;
}

int Refuse(const Status& st) {
  std::fprintf(stderr, "sluicectl: %s\n", st.ToString().c_str());
  return tools::kExitUsage;
}

Result<ControlClientOptions> ClientOptions(const Globals& g) {
  ControlClientOptions o;
  o.client_name = "sluicectl";
  o.timeout = std::chrono::milliseconds(g.timeout_ms);
  auto secret = FindSecret(SecretSource{g.auth_secret_file, g.state_dir});
  if (!secret.ok()) return secret.status();
  o.secret = *secret;
  return o;
}

Result<std::unique_ptr<ControlClient>> ConnectTo(const std::string& host_port,
                                                 const ControlClientOptions& options) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) {
    return InvalidArgument("node '" + host_port + "' is not host:port");
  }
  const std::string port_text = host_port.substr(colon + 1);
  char* end = nullptr;
  const unsigned long port = std::strtoul(port_text.c_str(), &end, 10);
  if (*end != '\0' || port == 0 || port > 65535) {
    return InvalidArgument("node '" + host_port + "': '" + port_text + "' is not a port");
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return ControlClient::Connect(host, static_cast<uint16_t>(port), options);
}

std::string StateDir(const Globals& g) {
  return shuffle::auth::StateDirOrDefault(g.state_dir);
}

Result<std::string> FindToken(const Globals& g, const std::string& job_id) {
  return shuffle::auth::FindJobToken(g.token, g.token_file, StateDir(g), job_id);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

namespace {

void AddGlobals(CLI::App& app, Globals& g) {
  app.add_option("--host", g.host, "the daemon's address (default 127.0.0.1)");
  app.add_option("--port", g.port, "the daemon's port (default 7070)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--timeout-ms", g.timeout_ms, "connect and request timeout (default 10000)")
      ->check(CLI::Range(1u, 3600000u));
  app.add_option("--auth-secret-file", g.auth_secret_file,
                 "the cluster's shared secret (mode 0600); else <state-dir>/auth_secret");
  app.add_option("--state-dir", g.state_dir,
                 "the state directory: auth_secret and jobs/<job>.token (default "
                 "/var/lib/sluice)");
  app.add_option("--token", g.token, "a job's token (else the job's token file)");
  app.add_option("--token-file", g.token_file,
                 "a job's token file (default <state-dir>/jobs/<job>.token)");
}

}  // namespace
}  // namespace sluice::control::ctl

int main(int argc, char** argv) {
  using namespace sluice::control::ctl;
  CLI::App app("sluicectl: run jobs on sluiced daemons and look inside them", "sluicectl");
  sluice::tools::AddVersionFlag(app, "sluicectl");
  app.require_subcommand(0, 1);  // none: said below, naming the commands
  app.fallthrough();
  Globals g;
  AddGlobals(app, g);
  std::vector<Command> commands;
  for (auto add : {AddSubmit, AddJobs, AddStatus, AddWatch, AddCancel, AddStats, AddDump,
                   AddPlan, AddRelease}) {
    commands.push_back(add(app, g));
  }
  if (int rc = sluice::tools::ParseOrExit(app, argc, argv); rc >= 0) return rc;
  if (!g.token.empty() && !g.token_file.empty()) {
    return Refuse(sluice::InvalidArgument("give --token or --token-file, not both"));
  }
  for (const Command& c : commands) {
    if (!c.sub->parsed()) continue;
    const std::string name = c.sub->get_name();
    const bool jobbed =
        name == "status" || name == "watch" || name == "cancel" || name == "release";
    if (!jobbed && !g.token.empty()) {
      return Refuse(sluice::InvalidArgument("--token: " + name + " takes no job token"));
    }
    return c.run();
  }
  return Refuse(sluice::InvalidArgument(
      "no command; give one of submit, jobs, status, watch, cancel, stats, dump, plan, release "
      "(see --help)"));
}
