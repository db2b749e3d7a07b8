// The `sluice` tool's subcommands (put, get): each adds itself to the app and returns the
// function to run when it was chosen. Exit codes as tools/common/cli.h: 0 ok, 1 failed,
// 2 usage or configuration.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <functional>
#include <string>

#include "buffer/status.h"
#include "shuffle/auth.h"
#include "tools/common/conventions.h"

namespace sluice::tools::sluice_cli {

struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;
};

// Flags every subcommand shares: where the secret and the job tokens are.
struct CommonFlags {
  std::string state_dir;         // empty: /var/lib/sluice
  std::string auth_secret_file;  // wins over <state_dir>/auth_secret
  std::string token;             // the job's token
  std::string token_file;        // else <state_dir>/jobs/<job>.token
};

// --state-dir, else /var/lib/sluice.
inline std::string StateDir(const CommonFlags& c) {
  return shuffle::auth::StateDirOrDefault(c.state_dir);
}

// Prints "sluice <command>: <what went wrong>" on stderr and returns `code`.
inline int CommandFailed(const char* command, const Status& s, int code = kExitFailed) {
  std::fprintf(stderr, "sluice %s: %s\n", command, s.ToString().c_str());
  return code;
}

}  // namespace sluice::tools::sluice_cli
