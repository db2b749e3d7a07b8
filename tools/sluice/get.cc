#include "tools/sluice/get.h"

#include <sys/stat.h>

#include <map>
#include <memory>

#include "client/ext_control.h"
#include "client/reader.h"
#include "shuffle/auth.h"
#include "tools/common/cli.h"
#include "tools/control/control_client.h"

namespace sluice::tools::sluice_cli {
namespace {

Result<std::pair<std::string, uint16_t>> HostPort(const std::string& text, const char* flag) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return InvalidArgument(std::string(flag) + " '" + text + "' is not host:port");
  }
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  char* end = nullptr;
  const unsigned long port = std::strtoul(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535) {
    return InvalidArgument(std::string(flag) + " '" + text + "' has no valid port");
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

}  // namespace

Result<std::vector<client::MapOutput>> SelectOutputs(const client::ExternalList& list,
                                                     const std::string& node,
                                                     const std::string& job,
                                                     const std::vector<uint32_t>& partitions) {
  std::map<uint32_t, const client::ExternalPartition*> best;  // partition -> committed attempt
  for (const client::ExternalPartition& p : list.partitions) {
    if (p.job != job || p.state != "committed") continue;
    auto& b = best[p.partition];
    if (b == nullptr || p.attempt > b->attempt) b = &p;
  }
  std::vector<client::MapOutput> out;
  auto add = [&](const client::ExternalPartition& p) {
    out.push_back({node, job, p.partition, p.attempt, p.subpartitions, p.bytes, p.records});
  };
  if (partitions.empty()) {
    for (const auto& [partition, p] : best) add(*p);
    if (out.empty()) {
      return NotFound("job '" + job + "' has no committed map output on " + node +
                      (list.note.empty() ? "" : " (" + list.note + ")"));
    }
    return out;
  }
  for (uint32_t partition : partitions) {
    auto it = best.find(partition);
    if (it == best.end()) {
      return NotFound("job '" + job + "' partition " + std::to_string(partition) +
                      " has no committed attempt on " + node);
    }
    add(*it->second);
  }
  return out;
}

int RunGet(const GetOptions& o, const CommonFlags& common, std::FILE* out) {
  auto from = HostPort(o.from, "--from");
  if (!from.ok()) return CommandFailed("get", from.status(), kExitUsage);
  auto listing = HostPort(o.daemon.empty() ? o.from : o.daemon, "--daemon");
  if (!listing.ok()) return CommandFailed("get", listing.status(), kExitUsage);
  auto token =
      shuffle::auth::FindJobToken(common.token, common.token_file, StateDir(common), o.job);
  if (!token.ok()) return CommandFailed("get", token.status(), kExitUsage);
  control::ControlClientOptions co;
  co.client_name = "sluice-get";
  co.timeout = std::chrono::milliseconds(o.timeout_ms);
  auto secret = control::FindSecret({common.auth_secret_file, common.state_dir});
  if (!secret.ok()) return CommandFailed("get", secret.status(), kExitUsage);
  co.secret = *secret;
  auto daemon = control::ControlClient::Connect(listing->first, listing->second, co);
  if (!daemon.ok()) return CommandFailed("get", daemon.status());
  auto list = client::ListExternal(**daemon, o.job);
  if (!list.ok()) return CommandFailed("get", list.status());
  daemon->reset();
  auto outputs = SelectOutputs(*list, o.from, o.job, o.partitions);
  if (!outputs.ok()) return CommandFailed("get", outputs.status());
  client::ReaderOptions ro;
  ro.job = o.job;
  ro.token = *token;
  ro.subpartition = o.subpartition;
  ro.map_outputs = std::move(*outputs);
  ro.secret = *secret;
  ro.timeout = std::chrono::milliseconds(o.timeout_ms);
  auto reader = client::Reader::OpenSubpartition(ro);
  if (!reader.ok()) return CommandFailed("get", reader.status());
  while (true) {
    auto rec = (*reader)->Next();
    if (!rec.ok()) return CommandFailed("get", rec.status());
    if (!rec->has_value()) break;
    if (std::fwrite((*rec)->data(), 1, (*rec)->size(), out) != (*rec)->size() ||
        std::fputc('\n', out) == EOF) {
      return CommandFailed("get", IoError("cannot write to stdout"));
    }
  }
  if (std::fflush(out) != 0) return CommandFailed("get", IoError("cannot write to stdout"));
  return kExitOk;
}

Command AddGet(CLI::App& app, CommonFlags& common) {
  auto o = std::make_shared<GetOptions>();
  CLI::App* sub = app.add_subcommand(
      "get", "one subpartition of an external job from one daemon, as lines on stdout");
  sub->add_option("--from", o->from, "the daemon holding the data, host:port")->required();
  sub->add_option("--job", o->job, "the job")->required();
  sub->add_option("--subpartition", o->subpartition, "the subpartition to read")->required();
  sub->add_option("--partition", o->partitions,
                  "a writer's partition (repeat; default: every committed writer on --from)");
  sub->add_option("--daemon", o->daemon, "where to list the job's map outputs (default --from)");
  sub->add_option("--timeout-ms", o->timeout_ms, "connect, request and data timeout")
      ->check(CLI::Range(1u, 3600000u));
  return {sub, [o, &common] { return RunGet(*o, common, stdout); }};
}

}  // namespace sluice::tools::sluice_cli
