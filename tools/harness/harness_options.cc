#include "tools/harness/harness_options.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

namespace sluice::harness {
namespace {

constexpr const char* kUsage = R"(usage: sluice-harness [options]

Starts N sluiced daemons as separate processes, runs a shuffle job between them, verifies that
every record arrived exactly once and in order per channel, checks that every daemon returned
every segment, optionally injects a fault, and stops the daemons (each must exit 0).

Daemons:
  --nodes N                 daemons to start (default 3)
  --sluiced PATH            the daemon binary (default: ../daemon/sluiced next to this binary)
  --network-memory SIZE     per daemon, e.g. 64m (default: the daemon's)
  --segment-size SIZE       per daemon, e.g. 32k (default: the daemon's, 32k)
  --io-threads N            per daemon
  --log-level LEVEL         per daemon
  --daemon-arg ARG          extra argument for every sluiced (repeatable)
  --auth [on|off]           authentication (default on): the daemons and the harness share a
                            secret, random in <run dir>/secret (0600) unless given below; every
                            job gets a random token (<run dir>/<job>.token). off: loopback only
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
  --record-size MIN[-MAX]          bytes per record, header included (default 100-1000)
  --keys uniform|zipf[:S]          key distribution (default uniform; zipf default s=1.1)
  --partitioner hash|rr            (default hash)
  --pattern all-to-all|pointwise   (default all-to-all)
  --seed N                         (default 1)
  --input FILE...                  file-partition: one input file per producer
  --delimiter C --key-field N      file-partition: key column (default ',' and 0)
  --output-dir DIR                 file-partition: where consumers write their part files
  --checksums                      CRC32C on every buffer in transit
  --timeout SECONDS                the whole job (default 600)

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
  wrong-secret     a wrong and a missing secret are refused (not with --auth off)
  --fault-at F              fraction of the records moved before the fault (default 0.3)
  --fault-deadline SECONDS  affected channels fail / survivors end within this (default 20)
  --shutdown-deadline SECONDS  each daemon exits 0 within this after SIGTERM (default 20)
  --rss-slack SIZE          stall-consumer: peak RSS <= network memory + this (default 128m)

Output:
  --json        one JSON object on stdout (progress and the table still go to stderr)
  --quiet       no progress line
  --help, --version
Exit status 0 only when ok.
)";

Result<uint64_t> ParseUint(const std::string& flag, const std::string& text) {
  if (text.empty() || text[0] == '-') return InvalidArgument(flag + ": expected a number, got '" + text + "'");
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') {
    return InvalidArgument(flag + ": expected a number, got '" + text + "'");
  }
  return static_cast<uint64_t>(v);
}

Result<double> ParseDouble(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || errno != 0 || *end != '\0' || v < 0) {
    return InvalidArgument(flag + ": expected a non-negative number, got '" + text + "'");
  }
  return v;
}

Result<Fault> ParseFault(const std::string& name) {
  static const std::map<std::string, Fault> kFaults = {
      {"none", Fault::kNone},
      {"kill-consumer", Fault::kKillConsumer},
      {"kill-producer", Fault::kKillProducer},
      {"stall-consumer", Fault::kStallConsumer},
      {"cut-connection", Fault::kCutConnection},
      {"drop", Fault::kDrop},
      {"slow-consumer", Fault::kSlowConsumer},
      {"garbage", Fault::kGarbage},
      {"sigterm", Fault::kSigterm},
      {"wrong-secret", Fault::kWrongSecret},
  };
  auto it = kFaults.find(name);
  if (it == kFaults.end()) {
    return InvalidArgument("--fault: unknown fault '" + name +
                           "' (see --help for the list)");
  }
  return it->second;
}

}  // namespace

const char* FaultName(Fault f) {
  switch (f) {
    case Fault::kNone: return "none";
    case Fault::kKillConsumer: return "kill-consumer";
    case Fault::kKillProducer: return "kill-producer";
    case Fault::kStallConsumer: return "stall-consumer";
    case Fault::kCutConnection: return "cut-connection";
    case Fault::kDrop: return "drop";
    case Fault::kSlowConsumer: return "slow-consumer";
    case Fault::kGarbage: return "garbage";
    case Fault::kSigterm: return "sigterm";
    case Fault::kWrongSecret: return "wrong-secret";
  }
  return "unknown";
}

std::string UsageText() { return kUsage; }

Result<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return InvalidArgument("empty size");
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return InvalidArgument("size '" + text + "' does not start with a number");
  uint64_t v = std::strtoull(text.substr(0, digits).c_str(), nullptr, 10);
  std::string unit = text.substr(digits);
  if (!unit.empty() && (unit.back() == 'b' || unit.back() == 'B') && unit.size() > 1) unit.pop_back();
  uint64_t mult = 1;
  if (unit.empty() || unit == "b" || unit == "B") {
    mult = 1;
  } else if (unit == "k" || unit == "K") {
    mult = 1ull << 10;
  } else if (unit == "m" || unit == "M") {
    mult = 1ull << 20;
  } else if (unit == "g" || unit == "G") {
    mult = 1ull << 30;
  } else {
    return InvalidArgument("size '" + text + "': unknown unit (use k, m or g)");
  }
  return v * mult;
}

Result<Options> ParseOptions(int argc, char** argv) {
  Options o;
  bool total_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_inline = false;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline = true;
    }
    auto next = [&]() -> Result<std::string> {
      if (has_inline) return value;
      if (i + 1 >= argc) return InvalidArgument(arg + " needs a value");
      return std::string(argv[++i]);
    };
#define SLUICE_NEXT(var)                    \
  auto var##_r = next();                    \
  if (!var##_r.ok()) return var##_r.status(); \
  const std::string& var = *var##_r

    // Flags that take a non-negative number; ranges are checked after the loop.
    const std::map<std::string, double*> doubles = {
        {"--rate", &o.rate_mbit},
        {"--drop", &o.drop_percent},
        {"--timeout", &o.timeout_s},
        {"--fault-at", &o.fault_at},
        {"--stall-seconds", &o.stall_seconds},
        {"--fault-deadline", &o.fault_deadline_s},
        {"--shutdown-deadline", &o.shutdown_deadline_s},
        {"--delay-ms", &o.delay_ms},
        {"--corrupt-ppm", &o.corrupt_ppm},
    };
    if (auto d = doubles.find(arg); d != doubles.end()) {
      SLUICE_NEXT(v);
      auto num = ParseDouble(arg, v);
      if (!num.ok()) return num.status();
      *d->second = *num;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return Cancelled("help");
    } else if (arg == "--version") {
      std::puts("sluice-harness 0.1.0");
      return Cancelled("version");
    } else if (arg == "--nodes") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      if (*n < 1 || *n > 64) return InvalidArgument("--nodes must be 1..64, got " + v);
      o.nodes = static_cast<int>(*n);
    } else if (arg == "--sluiced") {
      SLUICE_NEXT(v);
      o.sluiced = v;
    } else if (arg == "--keep-logs") {
      o.keep_logs = true;
    } else if (arg == "--network-memory") {
      SLUICE_NEXT(v);
      auto s = ParseSize(v);
      if (!s.ok()) return InvalidArgument("--network-memory: " + s.status().message());
      o.network_memory = v;
    } else if (arg == "--segment-size") {
      SLUICE_NEXT(v);
      auto s = ParseSize(v);
      if (!s.ok()) return InvalidArgument("--segment-size: " + s.status().message());
      o.segment_size = v;
      o.segment_size_bytes = static_cast<uint32_t>(*s);
    } else if (arg == "--io-threads") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      o.io_threads = static_cast<int>(*n);
    } else if (arg == "--log-level") {
      SLUICE_NEXT(v);
      o.log_level = v;
    } else if (arg == "--daemon-arg") {
      SLUICE_NEXT(v);
      o.daemon_args.push_back(v);
    } else if (arg == "--auth") {
      // A bare --auth (older command lines) means on.
      std::string v = has_inline ? value : "on";
      if (!has_inline && i + 1 < argc &&
          (std::string(argv[i + 1]) == "on" || std::string(argv[i + 1]) == "off")) {
        v = argv[++i];
      }
      if (v != "on" && v != "off") return InvalidArgument("--auth is on or off, got '" + v + "'");
      o.auth = v == "on";
    } else if (arg == "--auth-secret-file") {
      SLUICE_NEXT(v);
      o.auth_secret_file = v;
    } else if (arg == "--state-dir") {
      SLUICE_NEXT(v);
      o.state_dir = v;
    } else if (arg == "--netns") {
      o.netns = true;
    } else if (arg == "--job") {
      SLUICE_NEXT(v);
      if (v == "generated") {
        o.kind = control::JobKind::kGenerated;
      } else if (v == "file-partition") {
        o.kind = control::JobKind::kFilePartition;
      } else {
        return InvalidArgument("--job must be generated or file-partition, got '" + v + "'");
      }
    } else if (arg == "--producers" || arg == "--consumers") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      if (*n < 1 || *n > 4096) return InvalidArgument(arg + " must be 1..4096, got " + v);
      (arg == "--producers" ? o.producers : o.consumers) = static_cast<int>(*n);
    } else if (arg == "--records-per-producer") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      o.records_per_producer = *n;
    } else if (arg == "--total-bytes") {
      SLUICE_NEXT(v);
      auto s = ParseSize(v);
      if (!s.ok()) return InvalidArgument("--total-bytes: " + s.status().message());
      o.total_bytes = *s;
      total_set = true;
    } else if (arg == "--record-size") {
      SLUICE_NEXT(v);
      auto dash = v.find('-');
      auto lo = ParseUint(arg, v.substr(0, dash));
      if (!lo.ok()) return lo.status();
      auto hi = dash == std::string::npos ? lo : ParseUint(arg, v.substr(dash + 1));
      if (!hi.ok()) return hi.status();
      if (*lo < control::kMinGeneratedRecordSize || *hi < *lo || *hi > (64u << 20)) {
        return InvalidArgument("--record-size: need " +
                               std::to_string(control::kMinGeneratedRecordSize) +
                               " <= MIN <= MAX <= 64m, got '" + v + "'");
      }
      o.record_min = static_cast<uint32_t>(*lo);
      o.record_max = static_cast<uint32_t>(*hi);
    } else if (arg == "--keys") {
      SLUICE_NEXT(v);
      if (v == "uniform") {
        o.keys = control::KeyDistribution::kUniform;
      } else if (v.rfind("zipf", 0) == 0) {
        o.keys = control::KeyDistribution::kZipf;
        if (v.size() > 4) {
          if (v[4] != ':') return InvalidArgument("--keys: expected zipf or zipf:S, got '" + v + "'");
          auto s = ParseDouble(arg, v.substr(5));
          if (!s.ok()) return s.status();
          o.zipf_s = *s;
        }
      } else {
        return InvalidArgument("--keys must be uniform or zipf[:S], got '" + v + "'");
      }
    } else if (arg == "--partitioner") {
      SLUICE_NEXT(v);
      if (v == "hash") {
        o.partitioner = control::Partitioner::kKeyHash;
      } else if (v == "rr") {
        o.partitioner = control::Partitioner::kRoundRobin;
      } else {
        return InvalidArgument("--partitioner must be hash or rr, got '" + v + "'");
      }
    } else if (arg == "--pattern") {
      SLUICE_NEXT(v);
      if (v == "all-to-all") {
        o.pattern = control::Pattern::kAllToAll;
      } else if (v == "pointwise") {
        o.pattern = control::Pattern::kPointwise;
      } else {
        return InvalidArgument("--pattern must be all-to-all or pointwise, got '" + v + "'");
      }
      o.pattern_set = true;
    } else if (arg == "--seed") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      o.seed = *n;
    } else if (arg == "--input") {
      SLUICE_NEXT(v);
      o.inputs.push_back(v);
      while (!has_inline && i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        o.inputs.emplace_back(argv[++i]);
      }
    } else if (arg == "--delimiter") {
      SLUICE_NEXT(v);
      if (v == "\\t" || v == "tab") {
        o.delimiter = '\t';
      } else if (v.size() == 1) {
        o.delimiter = v[0];
      } else {
        return InvalidArgument("--delimiter must be one character (or \\t), got '" + v + "'");
      }
    } else if (arg == "--key-field") {
      SLUICE_NEXT(v);
      auto n = ParseUint(arg, v);
      if (!n.ok()) return n.status();
      o.key_field = static_cast<uint32_t>(*n);
    } else if (arg == "--output-dir") {
      SLUICE_NEXT(v);
      o.output_dir = v;
    } else if (arg == "--checksums") {
      o.checksums = true;
    } else if (arg == "--fault") {
      SLUICE_NEXT(v);
      auto f = ParseFault(v);
      if (!f.ok()) return f.status();
      o.fault = *f;
    } else if (arg == "--rss-slack") {
      SLUICE_NEXT(v);
      auto s = ParseSize(v);
      if (!s.ok()) return InvalidArgument("--rss-slack: " + s.status().message());
      o.rss_slack = *s;
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--quiet") {
      o.quiet = true;
    } else {
      return InvalidArgument("unknown option '" + arg + "' (see --help)");
    }
#undef SLUICE_NEXT
  }

  // Ranges and cross-checks.
  if (o.drop_percent > 100) return InvalidArgument("--drop is a percentage 0..100");
  if (o.delay_ms > 60000) return InvalidArgument("--delay-ms is at most 60000");
  if (o.corrupt_ppm > 1000000) return InvalidArgument("--corrupt-ppm is parts per million, 0..1000000");
  if (o.timeout_s < 1) return InvalidArgument("--timeout must be at least 1 second");
  if (o.fault_at >= 1) return InvalidArgument("--fault-at is a fraction below 1");
  if (!o.auth) {
    if (o.fault == Fault::kWrongSecret) {
      return InvalidArgument("--fault wrong-secret tests authentication: drop --auth off");
    }
    if (o.netns) {
      return InvalidArgument("--auth off is for loopback only: the daemons refuse it on the "
                             "namespace addresses of --netns");
    }
    if (!o.auth_secret_file.empty() || !o.state_dir.empty()) {
      return InvalidArgument("--auth off takes no --auth-secret-file or --state-dir");
    }
  }
  if (!o.auth_secret_file.empty() && !o.state_dir.empty()) {
    return InvalidArgument("give --auth-secret-file or --state-dir, not both");
  }
  if (o.fault == Fault::kDrop) {
    if (!o.netns) {
      return InvalidArgument(
          "--fault drop needs --netns: packet loss is injected with nftables inside each "
          "daemon's network namespace, which loopback daemons do not have");
    }
    if (o.drop_percent < 0) o.drop_percent = 2;
  }
  if ((o.rate_mbit > 0 || o.drop_percent >= 0) && !o.netns) {
    return InvalidArgument("--rate and --drop need --netns (they shape each daemon's veth)");
  }
  if (o.records_per_producer > 0 && total_set) {
    return InvalidArgument("give --records-per-producer or --total-bytes, not both");
  }
  if (o.kind == control::JobKind::kFilePartition) {
    if (o.inputs.empty()) return InvalidArgument("--job file-partition needs --input FILE...");
    if (o.output_dir.empty()) return InvalidArgument("--job file-partition needs --output-dir DIR");
    if (o.producers != 0 && o.producers != static_cast<int>(o.inputs.size())) {
      return InvalidArgument("--job file-partition runs one producer per --input file");
    }
    o.producers = static_cast<int>(o.inputs.size());
    if (o.fault != Fault::kNone && o.fault != Fault::kGarbage && o.fault != Fault::kWrongSecret &&
        o.fault != Fault::kDrop) {
      return InvalidArgument(std::string("--fault ") + FaultName(o.fault) +
                             " needs the generated job (it triggers on the record count)");
    }
  } else if (!o.inputs.empty()) {
    return InvalidArgument("--input is for --job file-partition");
  }
  const bool needs_victim = o.fault == Fault::kKillConsumer || o.fault == Fault::kKillProducer ||
                            o.fault == Fault::kStallConsumer || o.fault == Fault::kSigterm ||
                            o.fault == Fault::kSlowConsumer || o.fault == Fault::kCutConnection;
  if (needs_victim && o.nodes < 2) {
    return InvalidArgument(std::string("--fault ") + FaultName(o.fault) + " needs --nodes >= 2");
  }
  if (o.fault == Fault::kSlowConsumer) {
    if (o.pattern_set && o.pattern != control::Pattern::kPointwise) {
      return InvalidArgument("--fault slow-consumer runs the pointwise pattern");
    }
    o.pattern = control::Pattern::kPointwise;
    if (o.producers == 0) o.producers = 2 * o.nodes;
    if (o.consumers == 0) o.consumers = o.producers;
  }
  if (o.producers == 0) o.producers = o.nodes;
  if (o.consumers == 0) o.consumers = o.nodes;
  if (o.pattern == control::Pattern::kPointwise && o.producers != o.consumers) {
    return InvalidArgument("--pattern pointwise needs as many consumers as producers");
  }
  if (o.fault == Fault::kKillConsumer || o.fault == Fault::kStallConsumer) {
    if (o.consumers < o.nodes) {
      return InvalidArgument(std::string("--fault ") + FaultName(o.fault) +
                             " places a consumer on every node: needs --consumers >= --nodes");
    }
  }
  if (o.fault == Fault::kKillProducer && o.producers < o.nodes) {
    return InvalidArgument("--fault kill-producer places a producer on every node: needs "
                           "--producers >= --nodes");
  }
  if (o.kind == control::JobKind::kGenerated && o.records_per_producer == 0) {
    const uint64_t avg = (uint64_t{o.record_min} + o.record_max) / 2;
    const uint64_t per_producer = (o.total_bytes + o.producers - 1) / o.producers;
    o.records_per_producer = std::max<uint64_t>(1, (per_producer + avg - 1) / avg);
  }
  return o;
}

}  // namespace sluice::harness
