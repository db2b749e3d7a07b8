// sluicectl's external-store commands (issue 13): `release JOB` and the external section of
// `jobs` (map outputs with bytes in memory and on disk).
#include <cstdio>

#include "client/ext_control.h"
#include "tools/control/sluicectl_common.h"

namespace sluice::control::ctl {

void PrintExternal(ControlClient& client) {
  auto list = client::ListExternal(client, "");
  if (!list.ok()) {
    // An older daemon without the store: say so, the job list above stands.
    std::printf("external partitions: unavailable (%s)\n", list.status().ToString().c_str());
    return;
  }
  if (list->partitions.empty()) return;
  std::printf("\n%-32s %9s %7s %-9s %-9s %6s %12s %12s %12s %12s\n", "EXTERNAL JOB", "PARTITION",
              "ATTEMPT", "MODE", "STATE", "SUBS", "RECORDS", "BYTES", "IN MEMORY", "ON DISK");
  for (const client::ExternalPartition& p : list->partitions) {
    std::printf("%-32s %9u %7u %-9s %-9s %6u %12llu %12llu %12llu %12llu\n", p.job.c_str(),
                p.partition, p.attempt, p.blocking ? "blocking" : "pipelined", p.state.c_str(),
                p.subpartitions, ULL(p.records), ULL(p.bytes), ULL(p.bytes_in_memory),
                ULL(p.bytes_on_disk));
  }
  std::printf("%u external map outputs on %s%s%s\n", list->total, client.address().c_str(),
              list->note.empty() ? "" : "; ", list->note.c_str());
}

Command AddRelease(CLI::App& app, Globals& g) {
  CLI::App* sub = app.add_subcommand(
      "release", "free a job's external partitions on this daemon (memory and spill files)");
  auto job = std::make_shared<std::string>();
  sub->add_option("JOB", *job, "the job")->required();
  return {sub, [&g, job] {
            auto token = FindToken(g, *job);
            if (!token.ok()) return Refuse(token.status());
            auto options = ClientOptions(g);
            if (!options.ok()) return Refuse(options.status());
            auto client = ControlClient::Connect(g.host, g.port, *options);
            if (!client.ok()) return Fail(client.status());
            Status st = client::ReleaseExternalJob(**client, *job, *token);
            if (!st.ok()) return Fail(st);
            std::printf("released job '%s' on %s\n", job->c_str(), (*client)->address().c_str());
            return tools::kExitOk;
          }};
}

}  // namespace sluice::control::ctl
