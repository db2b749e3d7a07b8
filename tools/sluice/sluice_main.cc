// sluice: the external shuffle service from the shell (issue 13).
//
//   sluice [--state-dir D] [--auth-secret-file F]
//          [--token T | --token-file F] COMMAND ...
//     put ...   lines from stdin into one map output through the local sluiced (put.h)
//     get ...   one subpartition of a job from one daemon, as lines on stdout (get.h)
//
// Exit status: 0 success, 1 the run failed (nothing committed), 2 bad usage or configuration.
#include <vector>

#include "tools/common/cli.h"
#include "tools/sluice/command.h"
#include "tools/sluice/put.h"
#include "tools/sluice/get.h"

int main(int argc, char** argv) {
  using namespace sluice::tools;
  using namespace sluice::tools::sluice_cli;
  CLI::App app{"sluice: write and read external shuffle data through sluiced"};
  AddVersionFlag(app, "sluice");
  app.require_subcommand(1);
  app.fallthrough();  // the shared flags may follow the subcommand too
  CommonFlags common;
  app.add_option("--state-dir", common.state_dir,
                 "the daemon's state directory: its socket, secret and job tokens (default "
                 "/var/lib/sluice)");
  app.add_option("--auth-secret-file", common.auth_secret_file,
                 "the cluster's shared secret (default <state-dir>/auth_secret)");
  app.add_option("--token", common.token, "the job's token");
  app.add_option("--token-file", common.token_file,
                 "file holding the job's token (default <state-dir>/jobs/<job>.token)");
  std::vector<Command> commands;
  commands.push_back(AddPut(app, common));
  commands.push_back(AddGet(app, common));
  if (const int code = ParseOrExit(app, argc, argv); code >= 0) return code;
  for (const Command& c : commands) {
    if (c.sub->parsed()) return c.run();
  }
  return kExitUsage;
}
