// sluice-harness: starts several sluiced daemons, runs a verified shuffle between them with an
// optional fault, prints a summary table (stderr) and with --json one JSON object (stdout).
// Exit status 0 only when every expected outcome happened. See tools/harness/README.md.
#include <cstdio>
#include <string_view>

#include "tools/common/conventions.h"
#include "tools/control/control_client.h"
#include "tools/harness/harness_options.h"
#include "tools/harness/ext_task.h"
#include "tools/harness/harness_run.h"
#include "tools/harness/report.h"

int main(int argc, char** argv) {
  using namespace sluice::harness;
  // The external job's writer and reader tasks: this binary, re-executed (ext_task.h).
  if (argc > 1 && std::string_view(argv[1]) == kExtTaskFlag) {
    return ExtTaskMain(argc - 2, argv + 2);
  }
  Options parsed;
  if (const int exit_code = ParseOptions(argc, argv, &parsed); exit_code >= 0) return exit_code;
  Options* options = &parsed;
  if (!options->auth_secret_file.empty() || !options->state_dir.empty()) {
    // As sluicectl and sluiced: a missing or group/other-readable secret is refused, exit 2.
    auto secret = sluice::control::FindSecret({options->auth_secret_file, options->state_dir});
    if (!secret.ok()) {
      std::fprintf(stderr, "sluice-harness: %s\n", secret.status().message().c_str());
      return sluice::tools::kExitUsage;
    }
    options->secret = *secret;
  }
  InstallSignalHandlers();
  const bool json = options->json;
  Report report;
  {
    HarnessRun run(*options);
    report = run.Run();
  }  // daemons stopped, namespaces removed, run directory removed when ok
  std::fputs(SummaryTable(report).c_str(), stderr);
  if (!report.ok) std::fprintf(stderr, "daemon logs: %s\n", report.run_dir.c_str());
  if (json) std::printf("%s\n", ToJson(report).c_str());
  if (report.usage_error) return sluice::tools::kExitUsage;
  return report.ok ? sluice::tools::kExitOk : sluice::tools::kExitFailed;
}
