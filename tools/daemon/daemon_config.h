// sluiced's configuration: a TOML file (--config) and command-line flags that override it.
// Every option has one name, spelled with underscores in the file and dashes on the command
// line (network_memory / --network-memory). Sizes take k/m/g suffixes (powers of 1024).
//
// Unknown keys, wrong types and values out of range are refused with a message that names the
// option, the value and what would be accepted. A plain value type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "buffer/status.h"

namespace sluice::daemon {

struct DaemonConfig {
  std::string listen = "127.0.0.1";
  uint16_t port = 7070;
  std::string port_file;  // written with the bound port once listening
  uint64_t network_memory = 256ull << 20;
  uint32_t segment_size = 32 * 1024;
  uint32_t io_threads = 1;  // 1 or 2 (see shuffle::EnvironmentConfig::io_threads)
  uint32_t buffers_per_channel = 2;
  uint32_t floating_per_gate = 8;
  int32_t buffer_timeout_ms = 100;  // -1: only full buffers are sent
  bool checksums = false;           // CRC32C on every buffer in transit
  // Authentication is always on, on every address. The shared secret comes from
  // auth_secret_file, or else from <state_dir>/auth_secret (created 0600 on first start).
  std::string auth_secret_file;
  std::string state_dir = "/var/lib/sluice";
  std::string auth = "on";  // "on", its only value ("off" is refused, naming the fix)
  // Fault hooks (CutConnections control message) are refused unless this is set.
  bool enable_fault_injection = false;
  // Nodes a job may name: comma-separated CIDRs (default loopback only).
  std::string allowed_peers = "127.0.0.0/8,::1/128";
  // File jobs: inputs are read beneath input_dir, outputs written beneath output_dir. Empty:
  // file jobs are refused.
  std::string input_dir;
  std::string output_dir;
  uint64_t max_line_bytes = 1u << 20;  // a longer input line fails the job
  // Heap the daemon's jobs may hold outside network memory (record buffers of generated
  // producers, consumers' reassembly of records up to record_size_max): a job that does not
  // fit in what is left is refused at submit.
  uint64_t job_memory = 64ull << 20;
  // GET /metrics and /healthz over HTTP on this host:port (sluiced's command line defaults to
  // 127.0.0.1:9470; empty: none, the default for in-process daemons). Port 0 picks one.
  std::string metrics_listen;
  // Set when metrics_listen is sluiced's default rather than asked for: an address in use is
  // then a warning (the daemon runs without the endpoint) instead of a start error, so that
  // several daemons started without the option on one host still start.
  bool metrics_listen_optional = false;
  // The bearer token every request to metrics_listen must carry ("Authorization: Bearer T"):
  // this file's content (mode 0600, >= 16 bytes), else <state_dir>/metrics_token, created 0600
  // with a random token on first start. Apart from the cluster secret, so that a scraper that
  // holds it cannot join the cluster.
  std::string metrics_token_file;
  std::string metrics_port_file;    // written with the bound metrics port once serving
  std::string metrics_file;         // empty: none; else Prometheus text rewritten periodically
  uint32_t metrics_interval_ms = 5000;
  std::string log_level = "info";   // trace, debug, info, warn, error
  std::string log_file;             // empty: stderr
  std::string node_name;            // empty: "sluiced@<listen>:<port>"
  uint32_t max_connections = 1024;
  uint32_t max_connections_per_peer = 64;  // from one remote IP address
  uint32_t shutdown_grace_ms = 10000;  // SIGTERM: how long running jobs may take to finish
  bool preallocate = false;            // touch every segment at start (MAP_POPULATE)
  // The transport's seeded fault shim (tests and sluice-harness only; see
  // transport::FaultShim): corrupt payloads, delay writes.
  uint64_t fault_seed = 1;
  uint32_t fault_corrupt_per_million = 0;
  uint32_t fault_delay_ms = 0;
  // Issue 14: how spare floating buffers move between the node's pools: "usage" (by measured
  // demand, the default) or "static" (Flink's capacity rule). See docs/architecture.md.
  std::string redistribution = "usage";
  // Buffer debloating (issue 14; docs/protocol.md "Buffer debloating"): this daemon's input
  // gates size their senders' buffers by throughput x debloat_target_ms. Producers always
  // honour announcements.
  bool debloat = false;
  uint32_t debloat_target_ms = 1000;
  // The external shuffle store (issue 13, docs/external-shuffle.md).
  std::string spill_dir;             // empty: <state_dir>/spill
  uint64_t spill_max_bytes = 0;      // disk quota for spill files; 0: none (ENOSPC still fails
                                     // the writer cleanly)
  uint64_t store_memory = 0;         // bytes the store keeps in memory before it spills; 0:
                                     // half of network_memory
  uint32_t retention = 3600;         // seconds a job's data outlives its last activity
  uint32_t store_max_subpartitions = 1u << 20;  // subpartitions of map outputs held at once
  uint32_t store_max_read_set_entries = 1u << 21;  // map outputs named by all read sets
  // External shuffle, the local write path (issue 13): writers on this host connect to this
  // Unix socket (empty: <state_dir>/sluiced-<port>.sock; "off": no local writers). Only the
  // daemon's uid may connect unless local_socket_any_uid. A writer gets writer_credit segments of
  // shared memory (at most writer_max_credit when it asks for more), reserved from
  // network_memory.
  std::string local_socket;
  bool local_socket_any_uid = false;
  uint32_t writer_credit = 16;
  uint32_t writer_max_credit = 64;

  bool operator==(const DaemonConfig&) const = default;
  // Wide gates (issue 14): a gate of more remote channels than wide_threshold takes no
  // exclusive buffers and shares wide_gate_buffers floating ones (0: never wide).
  uint32_t wide_threshold = 1024;
  uint32_t wide_gate_buffers = 512;
};

// Whether `a` and `b` differ only in what SIGHUP reloads: log_level, metrics_interval_ms,
// allowed_peers, job_memory, max_line_bytes.
bool DiffersOnlyInReloadable(const DaemonConfig& a, const DaemonConfig& b);
// The address GET /metrics is served on when sluiced's command line does not say.
inline constexpr const char* kDefaultMetricsListen = "127.0.0.1:9470";
// The metrics endpoint's bearer token inside the state directory (metrics_token_file unset).
inline constexpr std::string_view kMetricsTokenFileName = "metrics_token";

// One entry of allowed_peers: an IPv4 or IPv6 network.
struct Cidr {
  int family = 0;             // AF_INET or AF_INET6
  uint8_t address[16] = {};   // network byte order; IPv4 in the first 4 bytes
  uint32_t prefix_bits = 0;   // 0..32 or 0..128
};
// "127.0.0.0/8,::1/128" -> networks. A bare address is a /32 or /128. InvalidArgument naming
// allowed_peers and the entry that is not a CIDR.
Result<std::vector<Cidr>> ParseAllowedPeers(const std::string& text);
// Whether `host` (a literal IPv4 or IPv6 address, brackets allowed) is inside one of `cidrs`.
// InvalidArgument when `host` is not a literal address: host names are not resolved (a name
// could resolve differently later); the message says to list the node by address.
Result<bool> AddressAllowed(const std::vector<Cidr>& cidrs, const std::string& host);

// What the command line asked for.
struct CommandLine {
  enum class Action { kRun, kHelp, kVersion } action = Action::kRun;
  DaemonConfig config;
};

// Parses argv with CLI11 (tools/common/cli.h conventions): --config FILE is applied first, then
// every flag over it, through the same setters as the file; --flag=value and --flag value;
// boolean flags without a value mean true. --help / -h and --version give kHelp / kVersion.
// Usage errors (unknown flag, missing value, a value that does not parse) are InvalidArgument
// naming the flag, with a message for a person.
Result<CommandLine> ParseCommandLine(const std::vector<std::string>& args);
// Applies a TOML document (tests use this directly). `origin` names it in errors.
Status ApplyToml(const std::string& text, const std::string& origin, DaemonConfig* config);
// Checks the values together (segment size, memory for the smallest job, ...).
Status Validate(const DaemonConfig& config);
// "1g" -> 1073741824. InvalidArgument naming `option` when it is not a size.
Result<uint64_t> ParseSize(const std::string& text, const std::string& option);

std::string HelpText();

}  // namespace sluice::daemon
