#include "tools/harness/harness_options.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tools/common/cli.h"
#include "tools/harness/ext_task.h"
#include "tools/harness/fault_plan.h"

namespace sluice::harness {
namespace {

constexpr const char* kUsage = R"(usage: sluice-harness [options]

Starts N sluiced daemons as separate processes, runs a shuffle job between them, verifies that
every record arrived exactly once and in order per channel, checks that every daemon returned
every segment, optionally injects a fault, and stops the daemons (each must exit 0).

Daemons:
  --nodes N                 daemons to start (default 3)
  --sluiced PATH            the daemon binary (default: sluiced next to this binary, then
                            ../daemon/sluiced, then PATH)
  --network-memory SIZE     per daemon, e.g. 64m (default: the daemon's)
  --segment-size SIZE       per daemon, e.g. 32k (default: the daemon's, 32k)
  --io-threads N            per daemon
  --log-level LEVEL         per daemon
  --daemon-arg ARG          extra argument for every sluiced (repeatable)
  --auth [on]               authentication, always on (the flag stays for older command lines):
                            the daemons and the harness share a secret, random in
                            <run dir>/secret (0600) unless given below; every job gets a random
                            token (<run dir>/<job>.token)
  --auth-secret-file F      use this secret file (mode 0600) instead of a random one
  --state-dir D             use D/auth_secret, a daemon state directory's secret
  --keep-logs               keep the run directory (daemon logs, port files) after success
  --netns                   (root) every daemon in its own network namespace, 10.77.K.(i+2)/24,
                            veth pairs joined by a bridge in the root namespace
  --rate MBIT               with --netns: tc tbf rate limit on every veth
  --drop PERCENT            with --netns: nftables random drop of incoming TCP in every daemon
                            namespace (from other daemons; the harness's control traffic passes)
  --delay-ms N              every daemon's seeded fault shim holds each write N ms (no netem
                            here; works with and without --netns)
  --corrupt-ppm N           every daemon's fault shim flips a byte in N per million sent
                            buffers (seeded by --seed); use with --checksums to see them caught

Job:
  --job generated|file-partition   (default generated)
  --producers M --consumers K      (default one of each per node)
  --records-per-producer N | --total-bytes SIZE   (default --total-bytes 1g)
  --record-size MIN[-MAX]          bytes per record (k/m/g), header included (default 100-1000)
  --keys uniform|zipf[:S]          key distribution (default uniform; zipf default s=1.1)
  --partitioner hash|rr            (default hash)
  --pattern all-to-all|pointwise   (default all-to-all)
  --seed N                         (default 1)
  --input FILE...                  file-partition: one input file per producer
  --delimiter C --key-field N      file-partition: key column (default ',' and 0)
  --output-dir DIR                 file-partition: where consumers write their part files
  --checksums                      CRC32C on every buffer in transit
  --timeout SECONDS                the whole job (default 600)

External shuffle service (--external; tools/harness/README.md):
  --external                writer processes (map tasks, sluice::client::Writer through their
                            host's daemon) then reader processes (sluice::client::Reader, one
                            subpartition each, from every daemon), verified exactly once and
                            in order per writer per subpartition; then release, no spill file
                            left, every segment back. Sizes: --total-bytes (default 32m),
                            --record-size (default 100-1000, at least 32)
  --mode blocking|pipelined (default blocking)
  --writers N               map tasks, writer i on node i mod nodes (default 2 per node)
  --readers K               reduce tasks = subpartitions (default one per node)
  --attempts A              map 0 commits A attempts; the readers name the last (default 1)
  --fault kill-writer       SIGKILL map 0's writer at --fault-at of its records, then re-run it
  --fault kill-daemon       blocking: SIGKILL the last daemon while the readers read from it
  --fault disk-quota        blocking: --spill-max-bytes (default 2m unless given with
                            --daemon-arg; --store-memory 256k unless given) is reached; a
                            writer waits and fails, committed data stays readable

Faults (--fault NAME; the harness checks the stated expected outcome, ok = it happened):
  kill-consumer    SIGKILL a consumer-only node at --fault-at of the records
  kill-producer    SIGKILL a producer-only node at --fault-at of the records
  stall-consumer   SIGSTOP a consumer-only node for --stall-seconds (default 5), then SIGCONT
  cut-connection   node 0 closes all its data connections at --fault-at of the records
  drop             --netns only: 2% (or --drop) random packet loss
  slow-consumer    pointwise, 2 producers/consumers per node, consumer 0 throttled to a tenth
                   of the rate a calibration run measured
  garbage          a hostile client sends garbage frames to node 0 before the job
  sigterm          SIGTERM a node at --fault-at of the records
  wrong-secret     a wrong and a missing secret are refused
  --fault-at F              fraction of the records moved before the fault (default 0.3)
  --fault-deadline SECONDS  affected channels fail / survivors end within this (default 20)
  --shutdown-deadline SECONDS  each daemon exits 0 within this after SIGTERM (default 20)
  --rss-slack SIZE          stall-consumer: peak RSS <= network memory + this (default 128m)

Output:
  --json        one JSON object on stdout (progress and the table still go to stderr)
  --quiet       no progress line
  --help, --version
Flags take --flag value or --flag=value; sizes take k/m/g (64m, 32k). Exit status 0 when ok,
1 when an expected outcome did not happen, 2 for a usage error (also when a daemon refuses
the options it was given).
)";

}  // namespace

std::string UsageText() { return kUsage; }


namespace {

// What CLI11 fills before the harness gives it meaning (enums, ranges, cross-checks).
// A number >= 0 (CLI::NonNegativeNumber prints the largest double as its bound).
const CLI::Validator kNonNegative(
    [](std::string& v) -> std::string {
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(d >= 0)) return "wants a number >= 0, got '" + v + "'";
      return {};
    },
    "NUMBER >= 0");

struct RawFlags {
  std::string auth;
  std::string job = "generated";
  std::string record_size;
  std::string keys = "uniform";
  std::string partitioner = "hash";
  std::string pattern;
  std::string delimiter;
  std::string fault = "none";
  std::string mode;
};

void AddDaemonFlags(CLI::App& app, Options& o, RawFlags& raw) {
  app.add_option("--nodes", o.nodes)->check(CLI::Range(1, 64));
  app.add_option("--sluiced", o.sluiced);
  app.add_flag("--keep-logs", o.keep_logs);
  app.add_option("--network-memory", o.network_memory)->check(tools::SizeValue());
  app.add_option("--segment-size", o.segment_size)->check(tools::SizeValue());
  app.add_option("--io-threads", o.io_threads)->check(kNonNegative);
  app.add_option("--log-level", o.log_level);
  // Values start with "--": JoinDaemonArgs makes each "--daemon-arg=VALUE" first.
  app.add_option("--daemon-arg", o.daemon_args)->allow_extra_args(false);
  // A bare --auth (older command lines) means on.
  app.add_option("--auth", raw.auth)->expected(0, 1);
  app.add_option("--auth-secret-file", o.auth_secret_file);
  app.add_option("--state-dir", o.state_dir);
  app.add_flag("--netns", o.netns);
  app.add_option("--rate", o.rate_mbit)->check(kNonNegative);
  app.add_option("--drop", o.drop_percent)->check(CLI::Range(0.0, 100.0));
  app.add_option("--delay-ms", o.delay_ms)->check(CLI::Range(0.0, 60000.0));
  app.add_option("--corrupt-ppm", o.corrupt_ppm)->check(CLI::Range(0.0, 1e6));
}

void AddJobFlags(CLI::App& app, Options& o, RawFlags& raw) {
  app.add_option("--job", raw.job)->check(CLI::IsMember({"generated", "file-partition"}));
  app.add_option("--producers", o.producers)->check(CLI::Range(1, 4096));
  app.add_option("--consumers", o.consumers)->check(CLI::Range(1, 4096));
  app.add_option("--records-per-producer", o.records_per_producer);
  app.add_option("--total-bytes", o.total_bytes)->transform(tools::SizeValue());
  app.add_option("--record-size", raw.record_size);
  app.add_option("--keys", raw.keys);
  app.add_option("--partitioner", raw.partitioner)->check(CLI::IsMember({"hash", "rr"}));
  app.add_option("--pattern", raw.pattern)->check(CLI::IsMember({"all-to-all", "pointwise"}));
  app.add_option("--seed", o.seed);
  app.add_option("--input", o.inputs);
  app.add_option("--delimiter", raw.delimiter);
  app.add_option("--key-field", o.key_field);
  app.add_option("--output-dir", o.output_dir);
  app.add_flag("--checksums", o.checksums);
  app.add_option("--timeout", o.timeout_s)->check(CLI::Range(1.0, 1e9));
}

void AddExternalFlags(CLI::App& app, Options& o, RawFlags& raw) {
  app.add_flag("--external", o.external);
  app.add_option("--mode", raw.mode)->check(CLI::IsMember({"blocking", "pipelined"}));
  app.add_option("--writers", o.writers)->check(CLI::Range(1, 4096));
  app.add_option("--readers", o.readers)->check(CLI::Range(1, 4096));
  app.add_option("--attempts", o.attempts)->check(CLI::Range(1, 16));
}

void AddFaultAndOutputFlags(CLI::App& app, Options& o, RawFlags& raw) {
  app.add_option("--fault", raw.fault);
  app.add_option("--fault-at", o.fault_at)->check(CLI::Range(0.0, 0.999999));
  app.add_option("--stall-seconds", o.stall_seconds)->check(kNonNegative);
  app.add_option("--fault-deadline", o.fault_deadline_s)->check(kNonNegative);
  app.add_option("--shutdown-deadline", o.shutdown_deadline_s)->check(kNonNegative);
  app.add_option("--rss-slack", o.rss_slack)->transform(tools::SizeValue());
  app.add_flag("--json", o.json);
  app.add_flag("--quiet", o.quiet);
}

// "--record-size MIN[-MAX]": sizes with k/m/g, header included.
Status ApplyRecordSize(const std::string& v, Options* o) {
  const size_t dash = v.find('-');
  auto lo = tools::ParseSize(v.substr(0, dash), "--record-size");
  if (!lo.ok()) return lo.status();
  auto hi = dash == std::string::npos ? lo : tools::ParseSize(v.substr(dash + 1), "--record-size");
  if (!hi.ok()) return hi.status();
  if (*lo < control::kMinGeneratedRecordSize || *hi < *lo || *hi > (64u << 20)) {
    return InvalidArgument("--record-size: need " +
                           std::to_string(control::kMinGeneratedRecordSize) +
                           " <= MIN <= MAX <= 64m, got '" + v + "'");
  }
  o->record_min = static_cast<uint32_t>(*lo);
  o->record_max = static_cast<uint32_t>(*hi);
  return Status::Ok();
}

Status ApplyKeys(const std::string& v, Options* o) {
  if (v == "uniform") {
    o->keys = control::KeyDistribution::kUniform;
    return Status::Ok();
  }
  if (v.rfind("zipf", 0) != 0 || (v.size() > 4 && v[4] != ':')) {
    return InvalidArgument("--keys must be uniform or zipf[:S], got '" + v + "'");
  }
  o->keys = control::KeyDistribution::kZipf;
  if (v.size() > 4) {
    char* end = nullptr;
    const double s = std::strtod(v.c_str() + 5, &end);
    if (v.size() == 5 || *end != '\0' || !(s >= 0)) {
      return InvalidArgument("--keys: zipf:S needs a non-negative number S, got '" + v + "'");
    }
    o->zipf_s = s;
  }
  return Status::Ok();
}

// Gives the string flags their meaning.
Status ApplyRawFlags(const CLI::App& app, const RawFlags& raw, Options* o) {
  if (app.count("--auth") > 0) {
    const std::string v = raw.auth.empty() ? "on" : raw.auth;
    if (v == "off") {
      return InvalidArgument("--auth off is not supported: sluiced always authenticates (the "
                             "harness makes a random secret per run); drop --auth off");
    }
    if (v != "on") return InvalidArgument("--auth is on (its only value), got '" + v + "'");
  }
  if (!o->segment_size.empty()) {
    auto bytes = tools::ParseSize(o->segment_size, "--segment-size");
    if (!bytes.ok()) return bytes.status();
    o->segment_size_bytes = static_cast<uint32_t>(*bytes);
  }
  o->kind = raw.job == "file-partition" ? control::JobKind::kFilePartition
                                        : control::JobKind::kGenerated;
  if (!raw.record_size.empty()) {
    if (Status s = ApplyRecordSize(raw.record_size, o); !s.ok()) return s;
  }
  if (Status s = ApplyKeys(raw.keys, o); !s.ok()) return s;
  o->partitioner = raw.partitioner == "rr" ? control::Partitioner::kRoundRobin
                                           : control::Partitioner::kKeyHash;
  o->pattern_set = !raw.pattern.empty();
  if (raw.pattern == "pointwise") o->pattern = control::Pattern::kPointwise;
  if (raw.delimiter == "\\t" || raw.delimiter == "tab") {
    o->delimiter = '\t';
  } else if (raw.delimiter.size() == 1) {
    o->delimiter = raw.delimiter[0];
  } else if (app.count("--delimiter") > 0) {
    return InvalidArgument("--delimiter must be one character (or \\t), got '" + raw.delimiter +
                           "'");
  }
  auto f = FaultByName(raw.fault);
  if (!f.ok()) return f.status();
  o->fault = *f;
  return Status::Ok();
}

Status CheckAuth(const Options& o) {
  if (!o.auth_secret_file.empty() && !o.state_dir.empty()) {
    return InvalidArgument("give --auth-secret-file or --state-dir, not both");
  }
  return Status::Ok();
}

Status CheckNetworkAndFiles(Options* o, bool total_set) {
  if (o->fault == Fault::kDrop) {
    if (!o->netns) {
      return InvalidArgument(
          "--fault drop needs --netns: packet loss is injected with nftables inside each "
          "daemon's network namespace, which loopback daemons do not have");
    }
    if (o->drop_percent < 0) o->drop_percent = 2;
  }
  if ((o->rate_mbit > 0 || o->drop_percent >= 0) && !o->netns) {
    return InvalidArgument("--rate and --drop need --netns (they shape each daemon's veth)");
  }
  if (o->records_per_producer > 0 && total_set) {
    return InvalidArgument("give --records-per-producer or --total-bytes, not both");
  }
  if (o->kind != control::JobKind::kFilePartition) {
    if (!o->inputs.empty()) return InvalidArgument("--input is for --job file-partition");
    return Status::Ok();
  }
  if (o->inputs.empty()) return InvalidArgument("--job file-partition needs --input FILE...");
  if (o->output_dir.empty()) return InvalidArgument("--job file-partition needs --output-dir DIR");
  if (o->producers != 0 && o->producers != static_cast<int>(o->inputs.size())) {
    return InvalidArgument("--job file-partition runs one producer per --input file");
  }
  o->producers = static_cast<int>(o->inputs.size());
  if (PlanOf(o->fault).generated_only) {
    return InvalidArgument(std::string("--fault ") + FaultName(o->fault) +
                           " needs the generated job (it triggers on the record count)");
  }
  return Status::Ok();
}

// The fault's placement needs, and the counts derived from them.
Status CheckPlacement(Options* o) {
  const Fault f = o->fault;
  // Every placement but none needs a second node (a victim, or a shifted consumer).
  if (PlanOf(f).placement != VictimPlacement::kNone && o->nodes < 2) {
    return InvalidArgument(std::string("--fault ") + FaultName(f) + " needs --nodes >= 2");
  }
  if (f == Fault::kSlowConsumer) {
    if (o->pattern_set && o->pattern != control::Pattern::kPointwise) {
      return InvalidArgument("--fault slow-consumer runs the pointwise pattern");
    }
    o->pattern = control::Pattern::kPointwise;
    if (o->producers == 0) o->producers = 2 * o->nodes;
    if (o->consumers == 0) o->consumers = o->producers;
  }
  if (o->producers == 0) o->producers = o->nodes;
  if (o->consumers == 0) o->consumers = o->nodes;
  if (o->pattern == control::Pattern::kPointwise && o->producers != o->consumers) {
    return InvalidArgument("--pattern pointwise needs as many consumers as producers");
  }
  const VictimPlacement placement = PlanOf(f).placement;
  if (placement == VictimPlacement::kConsumerOnlyLast && o->consumers < o->nodes) {
    return InvalidArgument(std::string("--fault ") + FaultName(f) +
                           " places a consumer on every node: needs --consumers >= --nodes");
  }
  if (placement == VictimPlacement::kProducerOnlyLast && o->producers < o->nodes) {
    return InvalidArgument(std::string("--fault ") + FaultName(f) +
                           " places a producer on every node: needs --producers >= --nodes");
  }
  if (o->kind == control::JobKind::kGenerated && o->records_per_producer == 0) {
    const uint64_t avg = (uint64_t{o->record_min} + o->record_max) / 2;
    const uint64_t per_producer = (o->total_bytes + o->producers - 1) / o->producers;
    o->records_per_producer = std::max<uint64_t>(1, (per_producer + avg - 1) / avg);
  }
  return Status::Ok();
}

// The daemons' spill_max_bytes from --daemon-arg (0: not given).
Result<uint64_t> QuotaFromDaemonArgs(const std::vector<std::string>& args) {
  uint64_t quota = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string v;
    if (args[i] == "--spill-max-bytes" && i + 1 < args.size()) {
      v = args[i + 1];
    } else if (args[i].rfind("--spill-max-bytes=", 0) == 0) {
      v = args[i].substr(18);
    } else {
      continue;
    }
    auto bytes = tools::ParseSize(v, "--spill-max-bytes");
    if (!bytes.ok()) return bytes.status();
    quota = *bytes;
  }
  return quota;
}

// --external and its flags and faults; the defaults that follow from them.
Status CheckExternal(const CLI::App& app, const RawFlags& raw, Options* o) {
  const bool ext_flags = !raw.mode.empty() || app.count("--writers") > 0 ||
                         app.count("--readers") > 0 || app.count("--attempts") > 0;
  if (!o->external) {
    if (ext_flags) return InvalidArgument("--mode, --writers, --readers and --attempts need --external");
    if (ExternalFault(o->fault)) {
      return InvalidArgument(std::string("--fault ") + FaultName(o->fault) + " needs --external");
    }
    return Status::Ok();
  }
  if (o->fault != Fault::kNone && !ExternalFault(o->fault)) {
    return InvalidArgument(std::string("--fault ") + FaultName(o->fault) +
                           " is not a fault of --external (kill-writer, kill-daemon, disk-quota)");
  }
  if (o->kind != control::JobKind::kGenerated || o->netns || app.count("--producers") > 0 ||
      app.count("--consumers") > 0 || app.count("--records-per-producer") > 0) {
    return InvalidArgument("--external runs writer and reader processes on loopback: it takes "
                           "--writers and --readers, not --job, --netns, --producers, "
                           "--consumers or --records-per-producer");
  }
  o->ext_pipelined = raw.mode == "pipelined";
  if (o->ext_pipelined && (o->fault == Fault::kKillDaemon || o->fault == Fault::kDiskQuota)) {
    return InvalidArgument(std::string("--fault ") + FaultName(o->fault) +
                           " needs --mode blocking (data retained after the writers exit)");
  }
  if (o->fault == Fault::kKillDaemon && o->nodes < 2) {
    return InvalidArgument("--fault kill-daemon needs --nodes >= 2");
  }
  if (o->record_min < kRecordHeader) {
    return InvalidArgument("--record-size: --external records are at least " +
                           std::to_string(kRecordHeader) + " bytes (their header)");
  }
  if (app.count("--total-bytes") == 0) o->total_bytes = 32ull << 20;
  if (o->writers == 0) o->writers = 2 * o->nodes;
  if (o->readers == 0) o->readers = o->nodes;
  auto quota = QuotaFromDaemonArgs(o->daemon_args);
  if (!quota.ok()) return quota.status();
  o->spill_quota = *quota;
  if (o->fault == Fault::kDiskQuota && o->spill_quota == 0) {
    o->spill_quota = 2ull << 20;
    o->daemon_args.insert(o->daemon_args.begin(), {"--spill-max-bytes", "2m"});
  }
  // The fault needs spilling whatever the store's spill policy: a small memory budget.
  const bool store_memory_given = std::any_of(
      o->daemon_args.begin(), o->daemon_args.end(),
      [](const std::string& a) { return a.rfind("--store-memory", 0) == 0; });
  if (o->fault == Fault::kDiskQuota && !store_memory_given) {
    o->daemon_args.insert(o->daemon_args.begin(), {"--store-memory", "256k"});
  }
  return Status::Ok();
}

// "--daemon-arg VALUE" -> "--daemon-arg=VALUE": the value is a daemon flag ("--checksums"),
// which CLI11 would otherwise take for a flag of the harness.
std::vector<std::string> JoinDaemonArgs(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--daemon-arg" && i + 1 < argc) {
      args.push_back(std::string("--daemon-arg=") + argv[++i]);
    } else {
      args.emplace_back(argv[i]);
    }
  }
  return args;
}

}  // namespace

int ParseOptions(int argc, char** argv, Options* out) {
  Options o;
  RawFlags raw;
  CLI::App app(kUsage, "sluice-harness");
  app.set_help_flag("");  // kUsage, hand-written, is the help
  app.add_flag("-h,--help");
  tools::AddVersionFlag(app, "sluice-harness");
  AddDaemonFlags(app, o, raw);
  AddJobFlags(app, o, raw);
  AddFaultAndOutputFlags(app, o, raw);
  AddExternalFlags(app, o, raw);
  const std::vector<std::string> args = JoinDaemonArgs(argc, argv);
  std::vector<const char*> joined;
  for (const std::string& a : args) joined.push_back(a.c_str());
  const int exit_code =
      tools::ParseOrExit(app, static_cast<int>(joined.size()), joined.data());
  if (exit_code >= 0) return exit_code;
  if (app.count("--help") > 0) {
    std::fputs(kUsage, stdout);
    return tools::kExitOk;
  }
  Status s = ApplyRawFlags(app, raw, &o);
  if (s.ok()) s = CheckAuth(o);
  if (s.ok()) s = CheckExternal(app, raw, &o);
  if (s.ok() && !o.external) s = CheckNetworkAndFiles(&o, app.count("--total-bytes") > 0);
  if (s.ok() && !o.external) s = CheckPlacement(&o);
  if (!s.ok()) {
    std::fprintf(stderr, "sluice-harness: %s\n", s.message().c_str());
    return tools::kExitUsage;
  }
  *out = std::move(o);
  return -1;
}

}  // namespace sluice::harness
