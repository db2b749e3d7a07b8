// sluicectl's internals, shared by its subcommand files (sluicectl_*.cc). Not installed.
// Thread-compatible: sluicectl is single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "buffer/status.h"
#include "tools/common/cli.h"
#include "tools/control/control_client.h"

namespace sluice::control::ctl {

// The options every subcommand shares.
struct Globals {
  std::string host = "127.0.0.1";
  uint16_t port = 7070;
  uint32_t timeout_ms = 10000;
  std::string auth_secret_file;   // the cluster's secret; else <state_dir>/auth_secret
  std::string state_dir;          // empty: /var/lib/sluice
  std::string token;              // a job's token, given on the command line
  std::string token_file;         // a job's token file; else <state_dir>/jobs/<job>.token
  bool json = false;              // status, stats, jobs: JSON instead of text
};

// printf's %llu takes unsigned long long, which uint64_t is not on every platform.
using ULL = unsigned long long;

// What went wrong, as the exit code and the line printed on stderr.
int Fail(const Status& st);    // prints, returns kExitFailed
int Refuse(const Status& st);  // prints, returns kExitUsage

// The client options (the secret found the way sluiced finds it) or the usage error to print.
Result<ControlClientOptions> ClientOptions(const Globals& g);
// Connects to "host:port" (a job's node address) with `options`.
Result<std::unique_ptr<ControlClient>> ConnectTo(const std::string& host_port,
                                                 const ControlClientOptions& options);
// --state-dir, else /var/lib/sluice.
std::string StateDir(const Globals& g);
// The token for `job_id`: --token, else the token file (which must be mode 0600). With neither
// given and no default file, "" (the daemon then refuses a job that has a token).
Result<std::string> FindToken(const Globals& g, const std::string& job_id);
// Quotes and escapes `s` as a JSON string.
std::string JsonString(const std::string& s);

// Subcommands. Each adds itself to `app` and returns itself with the function to run when it
// was chosen.
using Runner = std::function<int()>;
struct Command {
  CLI::App* sub = nullptr;
  Runner run;
};
Command AddStats(CLI::App& app, Globals& g);
Command AddDump(CLI::App& app, Globals& g);
Command AddStatus(CLI::App& app, Globals& g);
Command AddWatch(CLI::App& app, Globals& g);
Command AddCancel(CLI::App& app, Globals& g);
Command AddJobs(CLI::App& app, Globals& g);
Command AddSubmit(CLI::App& app, Globals& g);
Command AddPlan(CLI::App& app, Globals& g);
// The external store (issue 13, sluicectl_ext.cc): release JOB; the external section of jobs.
Command AddRelease(CLI::App& app, Globals& g);
void PrintExternal(ControlClient& client);

// Shared by status, watch and submit --wait.
void PrintJobStatus(const JobStatus& st, const std::string& node);
std::string JobStatusJson(const JobStatus& st);

}  // namespace sluice::control::ctl
