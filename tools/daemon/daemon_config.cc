#include "tools/daemon/daemon_config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <toml++/toml.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "buffer/memory_estimate.h"
#include "shuffle/auth.h"
#include "tools/common/cli.h"

namespace sluice::daemon {
namespace {

std::string Dashed(std::string key) {
  for (char& c : key) {
    if (c == '_') c = '-';
  }
  return key;
}

// One option: how to set it from text (flag) or from a TOML node (file).
struct Option {
  const char* help;
  std::function<Status(const std::string& value, const std::string& where, DaemonConfig*)> set;
  bool is_flag_without_value = false;
};

Result<int64_t> ParseInt(const std::string& text, const std::string& option, int64_t min,
                         int64_t max) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used, 10);
    if (used != text.size()) throw std::invalid_argument("trailing");
    if (v < min || v > max) {
      return InvalidArgument(option + " = " + text + " is out of range; use " +
                             std::to_string(min) + ".." + std::to_string(max));
    }
    return static_cast<int64_t>(v);
  } catch (const std::exception&) {
    return InvalidArgument(option + " = '" + text + "' is not a whole number");
  }
}

Result<bool> ParseBool(const std::string& text, const std::string& option) {
  if (text == "true" || text == "1" || text == "on" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "off" || text == "no") return false;
  return InvalidArgument(option + " = '" + text + "' is not true or false");
}

template <typename T>
Option IntOption(const char* help, T DaemonConfig::*field, int64_t min, int64_t max) {
  return {help, [field, min, max](const std::string& v, const std::string& where,
                                  DaemonConfig* c) -> Status {
            auto r = ParseInt(v, where, min, max);
            if (!r.ok()) return r.status();
            c->*field = static_cast<T>(*r);
            return Status::Ok();
          }};
}

Option SizeOption(const char* help, uint64_t DaemonConfig::*field) {
  return {help, [field](const std::string& v, const std::string& where, DaemonConfig* c) {
            auto r = ParseSize(v, where);
            if (!r.ok()) return r.status();
            c->*field = *r;
            return Status::Ok();
          }};
}

Option StringOption(const char* help, std::string DaemonConfig::*field) {
  return {help, [field](const std::string& v, const std::string&, DaemonConfig* c) {
            c->*field = v;
            return Status::Ok();
          }};
}

Option BoolOption(const char* help, bool DaemonConfig::*field) {
  Option o{help, [field](const std::string& v, const std::string& where, DaemonConfig* c) {
             auto r = ParseBool(v, where);
             if (!r.ok()) return r.status();
             c->*field = *r;
             return Status::Ok();
           }};
  o.is_flag_without_value = true;
  return o;
}

const std::map<std::string, Option>& Options() {
  static const auto* options = new std::map<std::string, Option>{
      {"listen", StringOption("address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
                              &DaemonConfig::listen)},
      {"port", IntOption("TCP port for shuffle data and control (0 = pick a free one; default "
                         "7070)",
                         &DaemonConfig::port, 0, 65535)},
      {"port_file", StringOption("write the bound port to this file once listening",
                                 &DaemonConfig::port_file)},
      {"network_memory",
       SizeOption("memory for network buffers, e.g. 256m (default 256m)",
                  &DaemonConfig::network_memory)},
      {"segment_size",
       {"size of one buffer: a power of two from 4k to 1m, the same on every node (default 32k)",
        [](const std::string& v, const std::string& where, DaemonConfig* c) -> Status {
          auto r = ParseSize(v, where);
          if (!r.ok()) return r.status();
          if (*r > std::numeric_limits<uint32_t>::max()) {
            return InvalidArgument(where + " = " + v + " is far above the 1m maximum");
          }
          c->segment_size = static_cast<uint32_t>(*r);
          return Status::Ok();
        }}},
      {"io_threads", IntOption("event loop threads: 1, or 2 to receive on a thread of its own",
                               &DaemonConfig::io_threads, 1, 2)},
      {"buffers_per_channel",
       IntOption("exclusive buffers per remote input channel (default 2)",
                 &DaemonConfig::buffers_per_channel, 0, 1024)},
      {"floating_per_gate", IntOption("floating buffers per input gate (default 8)",
                                      &DaemonConfig::floating_per_gate, 0, 65536)},
      {"buffer_timeout_ms",
       IntOption("flush partly filled buffers after this many ms; 0 = every record, -1 = only "
                 "full buffers (default 100)",
                 &DaemonConfig::buffer_timeout_ms, -1, 3600000)},
      {"checksums", BoolOption("CRC32C on every buffer in transit", &DaemonConfig::checksums)},
      {"auth_secret_file",
       StringOption("file holding the shared secret; every node and client needs the same",
                    &DaemonConfig::auth_secret_file)},
      {"state_dir",
       StringOption("directory for the daemon's state: auth_secret and metrics_token are created "
                    "there when no file is given, and the local socket and spill_dir default "
                    "beneath it (default /var/lib/sluice; not empty)",
                    &DaemonConfig::state_dir)},
      {"auth", StringOption("on, the only value: every peer proves the cluster secret (an old "
                            "config's auth = off is refused, naming the fix)",
                            &DaemonConfig::auth)},
      {"enable_fault_injection",
       BoolOption("accept fault-injection control messages (testing only)",
                  &DaemonConfig::enable_fault_injection)},
      {"allowed_peers",
       StringOption("comma-separated CIDRs a job's nodes must be in (default "
                    "127.0.0.0/8,::1/128) [SIGHUP reloads]",
                    &DaemonConfig::allowed_peers)},
      {"input_dir", StringOption("file jobs read their inputs beneath this directory",
                                 &DaemonConfig::input_dir)},
      {"output_dir", StringOption("file jobs write their outputs beneath this directory",
                                  &DaemonConfig::output_dir)},
      {"max_line_bytes", SizeOption("longest input line of a file job (default 1m) [SIGHUP reloads]",
                                    &DaemonConfig::max_line_bytes)},
      {"job_memory",
       SizeOption("heap for jobs' record buffers outside network memory: a job whose "
                  "producers x record_size_max (plus consumers' reassembly) does not fit in "
                  "what is left is refused (default 64m) [SIGHUP reloads]",
                  &DaemonConfig::job_memory)},
      {"metrics_listen",
       StringOption("serve GET /metrics and /healthz over HTTP on host:port (default 127.0.0.1:9470; "
                    "port 0: any; \"\": none)",
                    &DaemonConfig::metrics_listen)},
      {"metrics_token_file",
       StringOption("the bearer token GET /metrics and /healthz need (mode 0600); default "
                    "<state_dir>/metrics_token, created on first start",
                    &DaemonConfig::metrics_token_file)},
      {"metrics_port_file",
       StringOption("written with the bound metrics port once serving (with metrics_listen "
                    "port 0)",
                    &DaemonConfig::metrics_port_file)},
      {"metrics_file", StringOption("rewrite Prometheus metrics into this file periodically",
                                    &DaemonConfig::metrics_file)},
      {"metrics_interval_ms", IntOption("metrics file period (default 5000) [SIGHUP reloads]",
                                        &DaemonConfig::metrics_interval_ms, 100, 3600000)},
      {"log_level", StringOption("trace, debug, info (default), warn or error [SIGHUP reloads]",
                                 &DaemonConfig::log_level)},
      {"log_file", StringOption("log to this file instead of stderr (SIGHUP reopens it)", &DaemonConfig::log_file)},
      {"node_name", StringOption("name in logs and metrics (default sluiced@listen:port)",
                                 &DaemonConfig::node_name)},
      {"max_connections", IntOption("connection limit (default 1024)",
                                    &DaemonConfig::max_connections, 1, 1000000)},
      {"max_connections_per_peer",
       IntOption("connections from one remote IP address (default 64)",
                 &DaemonConfig::max_connections_per_peer, 1, 1000000)},
      {"shutdown_grace_ms",
       IntOption("on SIGTERM, how long running jobs may take to finish before they are "
                 "cancelled (default 10000)",
                 &DaemonConfig::shutdown_grace_ms, 0, 3600000)},
      {"preallocate", BoolOption("touch all network memory at start", &DaemonConfig::preallocate)},
      {"fault_seed", IntOption("seed of the fault shim (testing only)", &DaemonConfig::fault_seed,
                               0, std::numeric_limits<int64_t>::max())},
      {"fault_corrupt_per_million",
       IntOption("testing only: flip a byte in this many of a million sent buffers",
                 &DaemonConfig::fault_corrupt_per_million, 0, 1000000)},
      {"fault_delay_ms", IntOption("testing only: hold every scheduled write this long",
                                   &DaemonConfig::fault_delay_ms, 0, 60000)},
      {"wide_threshold",
       IntOption("a gate of more remote channels than this takes no exclusive buffers and "
                 "shares wide_gate_buffers floating ones (default 1024; 0 = never)",
                 &DaemonConfig::wide_threshold, 0, 1 << 20)},
      {"wide_gate_buffers",
       IntOption("floating buffers a wide gate shares among its channels (default 512)",
                 &DaemonConfig::wide_gate_buffers, 1, 1 << 20)},
      {"redistribution",
       {"how spare floating buffers move between pools: usage (by measured demand, default) "
        "or static (Flink's capacity rule)",
        [](const std::string& v, const std::string& where, DaemonConfig* c) -> Status {
          buffer::RedistributionPolicy policy;
          if (!buffer::ParseRedistributionPolicy(v, &policy)) {
            return InvalidArgument(where + " = '" + v + "': use usage or static");
          }
          c->redistribution = v;
          return Status::Ok();
        }}},
      {"debloat", BoolOption("on: input gates ask senders for buffers sized by the consumer's "
                             "throughput x debloat_target_ms, so less data waits in flight "
                             "(default off)",
                             &DaemonConfig::debloat)},
      {"debloat_target_ms",
       IntOption("buffer debloating: how long the data in flight on a channel should last "
                 "(default 1000, as Flink's buffer-debloat.target)",
                 &DaemonConfig::debloat_target_ms, 1, 600000)},
      // The external shuffle store (issue 13).
      {"spill_dir", StringOption("where the external store spills partitions (default "
                                 "<state_dir>/spill; leftovers are removed at start)",
                                 &DaemonConfig::spill_dir)},
      {"spill_max_bytes",
       SizeOption("disk quota for spill files, e.g. 100g; at the quota writers wait (default 0: "
                  "no quota)",
                  &DaemonConfig::spill_max_bytes)},
      {"store_memory",
       SizeOption("network memory the external store keeps partitions in before it spills "
                  "(default 0: half of network_memory)",
                  &DaemonConfig::store_memory)},
      {"store_max_subpartitions",
       IntOption("subpartitions of external map outputs the store holds at once, about 100 "
                 "bytes of bookkeeping each; a writer past it is refused (default 1048576)",
                 &DaemonConfig::store_max_subpartitions, 1, 1 << 24)},
      {"store_max_read_set_entries",
       IntOption("map outputs named by all registered read sets together, about 32 bytes "
                 "each; a read set past it is refused (default 2097152)",
                 &DaemonConfig::store_max_read_set_entries, 1, 1 << 26)},
      {"retention", IntOption("seconds an external job's data is kept after its last write or "
                              "read, unless released first (default 3600)",
                              &DaemonConfig::retention, 1, 365 * 24 * 3600)},
      // External shuffle: the local write path (issue 13).
      {"local_socket",
       StringOption("Unix socket local writers (sluice put, client::Writer) connect to (default "
                    "<state_dir>/sluiced-<port>.sock; \"off\": none)",
                    &DaemonConfig::local_socket)},
      {"local_socket_any_uid",
       BoolOption("let local writers of other uids connect (they still need the secret)",
                  &DaemonConfig::local_socket_any_uid)},
      {"writer_credit", IntOption("segments of shared memory granted to a local writer "
                                  "(default 16)",
                                  &DaemonConfig::writer_credit, 1, 1024)},
      {"writer_max_credit", IntOption("most segments a local writer may ask for (default 64)",
                                      &DaemonConfig::writer_max_credit, 1, 1024)},
  };
  return *options;
}

std::string KnownKeys() {
  std::string s;
  for (const auto& [k, o] : Options()) s += (s.empty() ? "" : ", ") + k;
  return s;
}

// The text of a TOML value, for the same setters the flags use.
Result<std::string> NodeText(const toml::node& n, const std::string& where) {
  if (auto v = n.value<std::string>(); v && n.is_string()) return *v;
  if (n.is_integer()) return std::to_string(*n.value<int64_t>());
  if (n.is_boolean()) return std::string(*n.value<bool>() ? "true" : "false");
  return InvalidArgument(where + " has an unsupported type (use a string, integer or boolean)");
}

}  // namespace

Result<uint64_t> ParseSize(const std::string& text, const std::string& option) {
  return tools::ParseSize(text, option);
}

Status ApplyToml(const std::string& text, const std::string& origin, DaemonConfig* config) {
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
       << e.description();
    return InvalidArgument("config " + os.str());
  }
  for (const auto& [key, node] : table) {
    const std::string k(key.str());
    const std::string where = origin + ": " + k;
    auto it = Options().find(k);
    if (it == Options().end()) {
      return InvalidArgument("config " + origin + ": unknown key '" + k +
                             "'; known keys: " + KnownKeys());
    }
    auto v = NodeText(node, where);
    if (!v.ok()) return v.status();
    if (Status st = it->second.set(*v, where, config); !st.ok()) return st;
  }
  return Status::Ok();
}

Status Validate(const DaemonConfig& c) {
  const uint32_t seg = c.segment_size;
  if (seg < 4096 || seg > (1u << 20) || !std::has_single_bit(seg)) {
    return InvalidArgument("segment_size = " + std::to_string(seg) +
                           " is not a power of two from 4k (4096) to 1m (1048576); e.g. "
                           "--segment-size 32k");
  }
  // The smallest useful node: one producer and one consumer of one remote channel each.
  buffer::CreditOptions credit;
  credit.segment_size = seg;
  credit.buffers_per_channel = c.buffers_per_channel;
  credit.floating_per_gate = c.floating_per_gate;
  credit.wide_threshold = c.wide_threshold;
  credit.wide_gate_buffers = c.wide_gate_buffers;
  buffer::Topology req;
  req.gates.push_back({"smallest job", 1, 0});
  req.partitions.push_back({"smallest job", 1});
  const buffer::MemoryEstimate est = buffer::EstimateNetworkMemory(req, credit);
  const uint64_t have = c.network_memory / seg;
  if (have < est.min_segments) {
    return InvalidArgument(
        "network_memory = " + std::to_string(c.network_memory) + " bytes holds " +
        std::to_string(have) + " segments of " + std::to_string(seg) +
        " bytes; even the smallest job (one producer, one remote consumer) needs " +
        std::to_string(est.min_segments) + " (" + std::to_string(est.min_bytes) +
        " bytes); set network_memory to at least " + std::to_string(est.recommended_bytes) +
        " (e.g. --network-memory " + std::to_string((est.recommended_bytes + (1 << 20) - 1) >> 20) +
        "m)");
  }
  if (c.network_memory / seg > std::numeric_limits<uint32_t>::max()) {
    return InvalidArgument("network_memory = " + std::to_string(c.network_memory) +
                           " is more segments than a pool can index; use a larger segment_size");
  }
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error"};
  bool level_ok = false;
  for (const char* l : kLevels) level_ok = level_ok || c.log_level == l;
  if (!level_ok) {
    return InvalidArgument("log_level = '" + c.log_level +
                           "' is not one of trace, debug, info, warn, error");
  }
  if (c.listen.empty()) return InvalidArgument("listen is empty; e.g. --listen 127.0.0.1");
  if (c.state_dir.empty()) {
    // Its secret, metrics token, local socket and default spill root would land in / or the cwd.
    return InvalidArgument("state_dir is empty; name the directory sluiced keeps its secret, "
                           "metrics token, local socket and spill files in, e.g. --state-dir " +
                           std::string(shuffle::auth::kDefaultStateDir));
  }
  if (c.auth == "off") {
    // Once allowed on loopback, where any local user could then submit jobs and read data.
    return InvalidArgument(
        "auth = off is not supported: sluiced serves only peers that prove the cluster secret, "
        "on every address. Remove the option: sluiced reads the secret from --auth-secret-file "
        "FILE or creates <state_dir>/auth_secret on first start (--state-dir), and sluicectl "
        "and the clients find it the same way (docs/security.md)");
  }
  if (c.auth != "on") return InvalidArgument("auth = '" + c.auth + "' is not on (its only value)");
  if (c.max_line_bytes == 0) return InvalidArgument("max_line_bytes must be at least 1");
  if (c.writer_credit > c.writer_max_credit) {
    return InvalidArgument("writer_credit = " + std::to_string(c.writer_credit) +
                           " is above writer_max_credit = " + std::to_string(c.writer_max_credit));
  }
  if (auto peers = ParseAllowedPeers(c.allowed_peers); !peers.ok()) return peers.status();
  return Status::Ok();
}

namespace {
std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::string Unbracket(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return host.substr(1, host.size() - 2);
  }
  return host;
}

// A literal address into `out`; false when `text` is not one.
bool ParseAddress(const std::string& text, Cidr* out) {
  if (inet_pton(AF_INET, text.c_str(), out->address) == 1) {
    out->family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, text.c_str(), out->address) == 1) {
    out->family = AF_INET6;
    return true;
  }
  return false;
}

bool PrefixMatches(const Cidr& net, const Cidr& addr) {
  if (net.family != addr.family) return false;
  const uint32_t full = net.prefix_bits / 8;
  const uint32_t rest = net.prefix_bits % 8;
  for (uint32_t i = 0; i < full; ++i) {
    if (net.address[i] != addr.address[i]) return false;
  }
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xFF << (8 - rest));
  return (net.address[full] & mask) == (addr.address[full] & mask);
}
}  // namespace

Result<std::vector<Cidr>> ParseAllowedPeers(const std::string& text) {
  std::vector<Cidr> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const std::string entry =
        Trim(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (entry.empty()) continue;
    const auto bad = [&](const std::string& why) {
      return InvalidArgument("allowed_peers entry '" + entry + "' " + why +
                             "; use CIDRs such as 10.0.0.0/8 or fd00::/8, comma-separated");
    };
    Cidr c;
    const size_t slash = entry.find('/');
    if (!ParseAddress(Unbracket(entry.substr(0, slash)), &c)) {
      return bad("is not an IPv4 or IPv6 address");
    }
    const uint32_t max_bits = c.family == AF_INET ? 32 : 128;
    c.prefix_bits = max_bits;
    if (slash != std::string::npos) {
      const std::string bits = entry.substr(slash + 1);
      if (bits.empty() || bits.size() > 3 ||
          bits.find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(bits) > max_bits) {
        return bad("has a prefix length that is not 0.." + std::to_string(max_bits));
      }
      c.prefix_bits = static_cast<uint32_t>(std::stoul(bits));
    }
    out.push_back(c);
  }
  return out;
}

Result<bool> AddressAllowed(const std::vector<Cidr>& cidrs, const std::string& host) {
  Cidr addr;
  if (!ParseAddress(Unbracket(host), &addr)) {
    return InvalidArgument("'" + host + "' is not a literal IPv4 or IPv6 address: host names are "
                           "not resolved for allowed_peers; name the node by its address");
  }
  for (const Cidr& net : cidrs) {
    if (PrefixMatches(net, addr)) return true;
  }
  return false;
}

bool DiffersOnlyInReloadable(const DaemonConfig& a, const DaemonConfig& b) {
  DaemonConfig x = b;
  x.log_level = a.log_level;
  x.metrics_interval_ms = a.metrics_interval_ms;
  x.allowed_peers = a.allowed_peers;
  x.job_memory = a.job_memory;
  x.max_line_bytes = a.max_line_bytes;
  return x == a;
}

namespace {

// Reads --config FILE into `config` (toml++), naming the file in every error.
Status ApplyConfigFile(const std::string& path, DaemonConfig* config) {
  std::ifstream in(path);
  if (!in) return InvalidArgument("--config " + path + ": cannot read the file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ApplyToml(ss.str(), path, config);
}

// The flags as a CLI::App over Options(): one option per entry whose callback calls the entry's
// setter (the same one the TOML file uses). CLI11 runs the callbacks in the order the options
// were added, so --config (added first) is applied before every flag wherever it appears. The
// first failing setter's Status lands in `*error`; later callbacks then do nothing.
void AddOptions(CLI::App& app, DaemonConfig* config, Status* error) {
  app.add_option_function<std::vector<std::string>>(
         "--config",
         [config, error](const std::vector<std::string>& paths) {
           for (const std::string& path : paths) {
             if (!error->ok()) return;
             *error = ApplyConfigFile(path, config);
           }
         },
         "TOML file with the options below; flags override it")
      ->type_name("FILE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  for (const auto& [key, option] : Options()) {
    const std::string flag = "--" + Dashed(key);
    const Option* o = &option;
    CLI::Option* opt = app.add_option(
        flag,
        [o, flag, config, error](const CLI::results_t& values) {
          for (const std::string& v : values) {
            if (!error->ok()) break;
            *error = o->set(v, flag, config);
          }
          return true;
        },
        option.help);
    // A repeated flag: the last one wins, as each is applied in turn.
    opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    if (option.is_flag_without_value) opt->expected(0, 1)->default_str("true");
  }
}

// A CLI11 usage error as the message sluiced has always given, naming the flag.
Status UsageError(const CLI::ParseError& e) {
  std::string what = e.what();
  // ArgumentMismatch: "--port: 1 required TEXT missing".
  if (const size_t colon = what.find(": "); dynamic_cast<const CLI::ArgumentMismatch*>(&e) &&
                                           colon != std::string::npos &&
                                           what.find("missing") != std::string::npos) {
    return InvalidArgument(what.substr(0, colon) + " needs a value");
  }
  return InvalidArgument(what + " (see --help)");
}

// Arguments CLI11 did not take: the first one, as an unknown flag or a stray argument.
Status ExtraArgument(const std::vector<std::string>& extras) {
  const std::string& a = extras.front();
  if (a.rfind("--", 0) == 0) {
    return InvalidArgument("unknown option " + a.substr(0, a.find('=')) + " (see --help)");
  }
  return InvalidArgument("unexpected argument '" + a + "' (see --help)");
}

}  // namespace

Result<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine cl;
  // Not given in the file or the flags: the command line's default (in-process daemons have
  // none), which may be taken by another daemon on the host (see metrics_listen_optional).
  static const std::string kUnset = "\x01unset";
  cl.config.metrics_listen = kUnset;
  Status error = Status::Ok();
  CLI::App app("sluiced: Sluice shuffle daemon", "sluiced");
  app.allow_extras();
  tools::AddVersionFlag(app, "sluiced");
  AddOptions(app, &cl.config, &error);
  // CLI11 takes its arguments in reverse order.
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    cl.action = CommandLine::Action::kHelp;
    return cl;
  } catch (const CLI::CallForVersion&) {
    cl.action = CommandLine::Action::kVersion;
    return cl;
  } catch (const CLI::ParseError& e) {
    return UsageError(e);
  }
  if (!error.ok()) return error;
  if (!app.remaining().empty()) return ExtraArgument(app.remaining());
  if (cl.config.metrics_listen == kUnset) {
    cl.config.metrics_listen = kDefaultMetricsListen;
    cl.config.metrics_listen_optional = true;
  }
  if (Status st = Validate(cl.config); !st.ok()) return st;
  return cl;
}

std::string HelpText() {
  std::string s =
      "sluiced: Sluice shuffle daemon. Serves shuffle data and control messages on one port.\n"
      "\nUsage: sluiced [--config FILE] [--OPTION VALUE]...\n"
      "  --config FILE   TOML file with the options below (underscores: network_memory = "
      "\"256m\"); flags override it\n"
      "  --help          this text\n  --version       the version\n\nOptions:\n";
  for (const auto& [k, o] : Options()) {
    std::string flag = "  --" + Dashed(k);
    if (flag.size() < 26) flag.resize(26, ' ');
    s += flag + " " + o.help + "\n";
  }
  s += "\nSignals: SIGTERM or SIGINT stop accepting, let running jobs finish (up to "
       "shutdown_grace_ms), cancel the rest, check that every buffer is back, exit 0.\n"
       "SIGHUP reopens log_file (after logrotate) and reloads the options marked [SIGHUP "
       "reloads] from --config (flags still override); a file that fails to load is logged and "
       "the running settings stay. Other options need a restart.\n"
       "Under systemd (NOTIFY_SOCKET set) sluiced sends READY=1 once listening and STOPPING=1 "
       "when it begins to stop.\n";
  return s;
}

}  // namespace sluice::daemon
