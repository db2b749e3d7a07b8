#include "tools/harness/harness_run.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "shuffle/auth.h"
#include "tools/harness/external_job.h"
#include "tools/harness/file_check.h"
#include "tools/harness/process_util.h"
#include "tools/harness/run_util.h"

namespace sluice::harness {
namespace {

using control::JobState;
using std::chrono::milliseconds;

volatile std::sig_atomic_t g_interrupted = 0;

void OnSignal(int) { g_interrupted = 1; }

}  // namespace

bool Interrupted() { return g_interrupted != 0; }

void InstallSignalHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

HarnessRun::~HarnessRun() {
  clients_.clear();
  cluster_.reset();  // kills what still runs before the namespaces go
  netns_.reset();
  if (!run_dir_.empty() && !o_.keep_logs && report_.ok) RemoveTree(run_dir_);
}

std::string HarnessRun::ExpectedOutcome() const { return PlanOf(o_.fault).expected(o_); }

namespace {

// The daemons' arguments that follow from the options (not auth, roots or namespaces).
std::vector<std::string> DaemonArgs(const Options& o) {
  std::vector<std::string> args;
  if (!o.network_memory.empty()) args.insert(args.end(), {"--network-memory", o.network_memory});
  if (!o.segment_size.empty()) args.insert(args.end(), {"--segment-size", o.segment_size});
  if (o.io_threads > 0) args.insert(args.end(), {"--io-threads", std::to_string(o.io_threads)});
  if (!o.log_level.empty()) args.insert(args.end(), {"--log-level", o.log_level});
  // The daemons check buffer CRCs only when started with --checksums, and refuse a job that
  // asks for them otherwise.
  if (o.checksums) args.push_back("--checksums");
  // Delay and corruption come from the daemons' seeded in-process shim (no netem here).
  if (o.delay_ms > 0 || o.corrupt_ppm > 0) {
    args.insert(args.end(), {"--fault-seed", std::to_string(o.seed), "--fault-delay-ms",
                             std::to_string(static_cast<uint32_t>(o.delay_ms)),
                             "--fault-corrupt-per-million",
                             std::to_string(static_cast<uint32_t>(o.corrupt_ppm))});
  }
  // Fault hooks are refused by a daemon unless it was started for them: only runs that
  // inject faults through the daemon (CutConnections, the shim) ask for it.
  if (o.fault == Fault::kCutConnection || o.delay_ms > 0 || o.corrupt_ppm > 0) {
    args.push_back("--enable-fault-injection");
  }
  // Several daemons on one host: each serves metrics on a port of its own choosing, never the
  // default 9470 (in --netns each namespace has its own loopback).
  args.insert(args.end(), {"--metrics-listen", "127.0.0.1:0"});
  return args;
}

// The deepest directory holding every path (each made absolute, symlinks resolved).
std::filesystem::path CommonRoot(const std::vector<std::filesystem::path>& paths) {
  std::filesystem::path root;
  for (const auto& p : paths) {
    if (root.empty()) {
      root = p;
      continue;
    }
    std::filesystem::path common;
    auto a = root.begin();
    auto b = p.begin();
    for (; a != root.end() && b != p.end() && *a == *b; ++a, ++b) common /= *a;
    root = common;
  }
  return root;
}

}  // namespace

Status HarnessRun::SetupSecret(DaemonConfig* cfg) {
  if (!o_.secret.empty()) {
    // Found by main (FindSecret): the daemons read the same file.
    secret_ = o_.secret;
    // Absolute: file-job daemons run in another working directory.
    cfg->secret_file = std::filesystem::absolute(
        !o_.auth_secret_file.empty() ? o_.auth_secret_file
                                     : shuffle::auth::StateSecretPath(o_.state_dir));
  } else {
    secret_ = shuffle::auth::MakeJobToken();  // 32 random bytes, hex
    cfg->secret_file = run_dir_ + "/secret";
    Status s = WriteWholeFile(cfg->secret_file, secret_ + "\n", 0600);
    if (!s.ok()) return s;
  }
  cfg->client.secret = secret_;
  secret_file_ = cfg->secret_file;
  return Status::Ok();
}

// File jobs name their files relative to the daemons' roots. One root, the deepest directory
// that holds every input file and the output directory, serves as --input-dir, --output-dir
// and the daemons' working directory (so the relative names mean the same to a daemon that
// predates the roots).
Status HarnessRun::SetupFileRoot(DaemonConfig* cfg) {
  if (o_.kind != control::JobKind::kFilePartition) return Status::Ok();
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(o_.output_dir, ec);
  const fs::path out = fs::weakly_canonical(o_.output_dir, ec);
  if (ec) return InvalidArgument("--output-dir " + o_.output_dir + ": " + ec.message());
  std::vector<fs::path> paths = {out};
  for (const auto& in : o_.inputs) {
    const fs::path p = fs::canonical(in, ec);
    if (ec) return InvalidArgument("--input " + in + ": " + ec.message());
    input_paths_.push_back(p);
    paths.push_back(p.parent_path());
  }
  file_root_ = CommonRoot(paths);
  output_path_ = out;
  cfg->args.insert(cfg->args.end(),
                   {"--input-dir", file_root_.string(), "--output-dir", file_root_.string()});
  cfg->working_dir = file_root_.string();
  return Status::Ok();
}

Status HarnessRun::Setup() {
  auto dir = MakeRunDir();
  if (!dir.ok()) return dir.status();
  run_dir_ = *dir;
  report_.run_dir = run_dir_;

  const std::string sluiced = o_.sluiced.empty() ? FindSluiced() : o_.sluiced;
  DaemonConfig cfg;
  cfg.sluiced = std::filesystem::absolute(sluiced);  // file-job daemons run elsewhere
  cfg.run_dir = run_dir_;
  cfg.args = DaemonArgs(o_);
  cfg.client.client_name = "sluice-harness";
  if (Status s = SetupSecret(&cfg); !s.ok()) return s;
  if (Status s = SetupFileRoot(&cfg); !s.ok()) return s;
  if (o_.netns) {
    auto t = NetnsTopology::Create(o_.nodes, o_.rate_mbit, o_.drop_percent, run_dir_);
    if (!t.ok()) return t.status();
    netns_ = std::move(*t);
    cfg.netns = netns_.get();
    std::fprintf(stderr, "sluice-harness: network namespaces: %s\n", netns_->Describe().c_str());
    // A job may name only allowed peers (default loopback): here, the namespace addresses.
    std::string peers = "127.0.0.0/8";
    for (int i = 0; i < o_.nodes; ++i) peers += "," + netns_->node_address(i) + "/32";
    cfg.args.insert(cfg.args.end(), {"--allowed-peers", peers});
  }
  // Passed through last, so that they can override what the harness chose.
  cfg.args.insert(cfg.args.end(), o_.daemon_args.begin(), o_.daemon_args.end());
  const bool injects =
      std::find(cfg.args.begin(), cfg.args.end(), "--enable-fault-injection") != cfg.args.end();
  report_.extra.emplace_back("fault_injection", injects ? "true" : "false");
  cluster_ = std::make_unique<Cluster>(cfg);
  Status s = cluster_->Start(o_.nodes, milliseconds(30000));
  if (!s.ok()) return s;
  clients_.resize(static_cast<size_t>(o_.nodes));
  stats_.resize(static_cast<size_t>(o_.nodes));
  client_errors_.resize(static_cast<size_t>(o_.nodes));
  for (int i = 0; i < o_.nodes; ++i) {
    auto* c = Client(i);
    if (c == nullptr) return IoError(client_errors_[static_cast<size_t>(i)]);
    auto st = c->GetStats();
    if (!st.ok()) return st.status();
    stats_[static_cast<size_t>(i)] = *st;
  }
  // "auth" says what the daemons did, not what was asked: "on" when every one of them refused
  // a client with a wrong secret and one with none (PermissionDenied); else an error.
  std::vector<std::string> auth_errors, auth_notes;
  for (int i = 0; i < o_.nodes; ++i) CheckAuthRefusal(i, &auth_errors, &auth_notes);
  report_.AddExtra("auth", auth_errors.empty() ? "on" : "not enforced");
  report_.errors.insert(report_.errors.end(), auth_errors.begin(), auth_errors.end());
  return Status::Ok();
}

control::ControlClient* HarnessRun::Client(int node) {
  auto& c = clients_[static_cast<size_t>(node)];
  if (c) return c.get();
  if (!cluster_->node(node).alive) return nullptr;
  auto r = cluster_->Connect(node);
  if (!r.ok()) {
    client_errors_[static_cast<size_t>(node)] = r.status().ToString();
    return nullptr;
  }
  c = std::move(*r);
  return c.get();
}

control::JobSpec HarnessRun::MakeSpec(const std::string& job_id, const std::vector<int>& ids,
                                      const Placement& placement,
                                      uint64_t records_per_producer) const {
  control::JobSpec spec;
  spec.job_id = job_id;
  spec.kind = o_.kind;
  for (int id : ids) spec.nodes.push_back(cluster_->node(id).address());
  spec.producer_nodes = placement.producer_nodes;
  spec.consumer_nodes = placement.consumer_nodes;
  spec.pattern = o_.pattern;
  spec.records_per_producer = records_per_producer;
  spec.record_size_min = o_.record_min;
  spec.record_size_max = o_.record_max;
  spec.keys = o_.keys;
  spec.zipf_s = o_.zipf_s;
  spec.partitioner = o_.partitioner;
  spec.seed = o_.seed;
  if (o_.kind == control::JobKind::kFilePartition) {
    // Relative to the daemons' roots (SetupFileRoot).
    for (const auto& in : input_paths_) spec.input_files.push_back(RelativeToRoot(in));
    spec.delimiter = o_.delimiter;
    spec.key_field = o_.key_field;
    spec.output_dir = RelativeToRoot(output_path_);
  }
  // The job's token scopes it: its partitions, status and cancel (JobSpec::token).
  spec.token = shuffle::auth::MakeJobToken();
  spec.checksums = o_.checksums;
  spec.timeout_ms = static_cast<uint32_t>(std::min(o_.timeout_s * 1000, 4.0e9));
  return spec;
}

std::string HarnessRun::RelativeToRoot(const std::filesystem::path& path) const {
  const std::filesystem::path rel = path.lexically_relative(file_root_);
  return rel.empty() ? "." : rel.string();
}

void HarnessRun::SendGarbage(int node, std::vector<std::string>* errors,
                             std::vector<std::string>* notes) {
  const Node& n = cluster_->node(node);
  uint64_t before = stats_[static_cast<size_t>(node)].protocol_errors;
  std::string random_bytes = RandomHex(2048);
  random_bytes[0] = '\x7f';  // never a plausible frame length
  // A header with the right magic and version but a 2 GiB frame length.
  const std::string huge("\x7f\xff\xff\xff" "SLUC" "\x01\x01\x00\x00", 12);
  const std::vector<std::pair<std::string, std::string>> payloads = {
      {"random bytes", random_bytes},
      {"a 2 GiB frame length", huge},
      {"an HTTP request", "GET /metrics HTTP/1.1\r\nHost: sluice\r\n\r\n"},
  };
  for (const auto& [what, bytes] : payloads) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(n.port);
    inet_pton(AF_INET, n.host.c_str(), &addr.sin_addr);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      errors->push_back("garbage client: cannot connect to " + n.address() + ": " +
                        std::strerror(errno));
      if (fd >= 0) close(fd);
      continue;
    }
    ssize_t ignored = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    (void)ignored;
    const auto start = Clock::now();
    bool closed = false;
    char buf[4096];
    while (Seconds(start) < 5.0) {
      pollfd pfd = {fd, POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
        closed = true;
        break;
      }
      // An ErrorResponse may come first; keep reading until the close.
    }
    close(fd);
    if (closed) {
      notes->push_back("garbage (" + what + ") to node " + std::to_string(node) +
                       ": disconnected after " + Fixed(Seconds(start), 2) + " s");
    } else {
      errors->push_back("node " + std::to_string(node) + " (" + n.address() +
                        ") kept a connection that sent " + what + " open for 5 s");
    }
  }
  auto* c = Client(node);
  auto st = c != nullptr ? c->GetStats() : Result<control::NodeStats>(IoError("no control connection"));
  if (!st.ok()) {
    errors->push_back("after the garbage, GetStats on node " + std::to_string(node) + " failed: " +
                      st.status().ToString());
    return;
  }
  stats_[static_cast<size_t>(node)] = *st;
  notes->push_back("protocol_errors on node " + std::to_string(node) + ": " +
                   std::to_string(before) + " -> " + std::to_string(st->protocol_errors));
  if (st->protocol_errors <= before) {
    errors->push_back("node " + std::to_string(node) +
                      " did not count the garbage connections as protocol errors");
  }
}

void HarnessRun::CheckAuthRefusal(int node, std::vector<std::string>* errors,
                                  std::vector<std::string>* notes) {
  control::ControlClientOptions opts;
  opts.client_name = "sluice-harness-wrong-secret";
  opts.timeout = milliseconds(10000);
  const std::vector<std::pair<std::string, std::optional<std::string>>> tries = {
      {"a wrong secret", std::string("not-") + secret_},
      {"no secret", std::nullopt},
  };
  for (const auto& [what, secret] : tries) {
    opts.secret = secret;
    auto r = cluster_->Connect(node, opts);
    if (r.ok()) {
      // Some daemons only refuse at the first request: try one.
      auto st = (*r)->GetStats();
      if (st.ok()) {
        errors->push_back("node " + std::to_string(node) + " accepted a client with " + what);
        continue;
      }
      r = st.status();
    }
    const Status& s = r.status();
    notes->push_back("with " + what + ": " + s.ToString());
    if (s.code() != StatusCode::kPermissionDenied) {
      errors->push_back("with " + what + " node " + std::to_string(node) +
                        " answered " + s.ToString() + ", expected PermissionDenied");
    }
  }
}

// The slow-consumer fault's calibration: an unthrottled run of the same job; returns the
// median consumer rate in MiB/s (0 when it failed).
double HarnessRun::Calibrate(MainRun& m) {
  Report& r = report_;
  auto spec = MakeSpec(m.id_prefix + "-calibration", m.all, m.placement, o_.records_per_producer);
  auto cal = RunJob(spec, m.all, m.placement, false);
  for (const auto& e : cal.errors) r.errors.push_back("calibration: " + e);
  std::vector<double> rates;
  for (const auto& [c, cs] : cal.view.consumers) {
    auto it = cal.view.consumer_end_s.find(c);
    if (it != cal.view.consumer_end_s.end() && it->second > 0) {
      rates.push_back(static_cast<double>(cs.bytes) / kMiB / it->second);
    }
  }
  double rate = 0;
  if (!cal.all_succeeded || rates.empty()) {
    r.errors.push_back("the calibration run failed; no rate to throttle against");
  } else {
    rate = tools::Median(rates);
    m.notes.push_back("calibration: median consumer rate " + Fixed(rate, 1) + " MiB/s over " +
                      Fixed(cal.seconds, 1) + " s");
    r.AddExtra("calibration_mib_per_second", rate);
  }
  CheckLeaks(m.all, milliseconds(10000), &r.errors);
  return rate;
}

// The main job (with the fault), and its tally in the report.
void HarnessRun::RunMainJob(MainRun& m) {
  Report& r = report_;
  m.spec = MakeSpec(m.id_prefix + "-main", m.all, m.placement, o_.records_per_producer);
  if (o_.fault == Fault::kSlowConsumer && m.calibration_rate > 0) {
    m.spec.throttled_consumer = 0;
    m.spec.throttle_mib_per_second = m.calibration_rate / 10;
    m.notes.push_back("consumer 0 throttled to " + Fixed(m.spec.throttle_mib_per_second, 2) +
                      " MiB/s");
  }
  m.skip_main = o_.fault == Fault::kSlowConsumer && m.calibration_rate <= 0;
  if (!m.skip_main) m.out = RunJob(m.spec, m.all, m.placement, true);
  r.errors.insert(r.errors.end(), m.out.errors.begin(), m.out.errors.end());
  m.notes.insert(m.notes.end(), m.out.notes.begin(), m.out.notes.end());
  const Tally t = Count(m.spec, m.out.view);
  r.records_expected = o_.kind == control::JobKind::kGenerated
                           ? o_.records_per_producer * static_cast<uint64_t>(o_.producers)
                           : 0;
  r.records_sent = t.sent;
  r.records_received = t.received;
  r.bytes_received = t.bytes;
  r.lost = t.lost;
  r.duplicated = t.duplicated;
  r.reordered = t.reordered;
  r.corrupted = t.corrupted;
  r.seconds = m.out.seconds;
  r.mib_per_second = tools::MiBPerSecond(t.bytes, m.out.seconds);
  if (t.duplicated || t.reordered || t.corrupted) {
    r.errors.push_back("records duplicated, reordered or corrupted: never acceptable");
  }
  for (int i = 0; i < o_.nodes; ++i) {
    if (cluster_->node(i).alive) m.survivors.push_back(i);
  }
}

// Without a fault that ends channels: every node, producer and consumer succeeded, nothing lost.
void HarnessRun::CheckJobSucceeded(const MainRun& m) {
  Report& r = report_;
  const JobView& view = m.out.view;
  if (!m.out.all_succeeded) {
    for (size_t k = 0; k < view.state.size(); ++k) {
      if (view.state[k] != JobState::kSucceeded) {
        r.errors.push_back("node " + std::to_string(k) + " ended job " + m.spec.job_id + " as " +
                           control::JobStateName(view.state[k]) +
                           (view.node_error[k].empty() ? "" : ": " + view.node_error[k]));
      }
    }
  }
  for (const auto& [c, cs] : view.consumers) {
    if (!cs.error.empty()) r.errors.push_back("consumer " + std::to_string(c) + ": " + cs.error);
  }
  for (const auto& [p, ps] : view.producers) {
    if (!ps.error.empty()) r.errors.push_back("producer " + std::to_string(p) + ": " + ps.error);
  }
  if (r.lost > 0) r.errors.push_back(std::to_string(r.lost) + " records lost");
  if (o_.kind == control::JobKind::kGenerated && r.records_received != r.records_expected) {
    r.errors.push_back("received " + std::to_string(r.records_received) + " records, expected " +
                       std::to_string(r.records_expected));
  }
}

// Kill-producer, SIGTERM, cut-connection: each failed consumer's error names the peer it lost
// (or, after SIGTERM, the victim drained its share and the survivors succeeded).
void HarnessRun::CheckPeersNamed(MainRun& m) {
  Report& r = report_;
  const JobView& view = m.out.view;
  const int victim_k = m.placement.victim;
  const bool cut = o_.fault == Fault::kCutConnection;
  int named = 0;
  for (const auto& [c, cs] : view.consumers) {
    const int cn = static_cast<int>(m.spec.consumer_nodes[c]);
    if ((cn == victim_k && !cut) || cs.error.empty()) continue;
    std::vector<std::string> peers;
    if (cut && cn == victim_k) {
      for (int k = 0; k < o_.nodes; ++k) {
        if (k != cn) peers.push_back(m.spec.nodes[static_cast<size_t>(k)]);
      }
    } else {
      peers.push_back(m.spec.nodes[static_cast<size_t>(victim_k)]);
    }
    bool ok = false;
    for (const auto& p : peers) ok = ok || cs.error.find(p) != std::string::npos;
    const auto end = view.consumer_end_s.find(c);
    const double after =
        end != view.consumer_end_s.end() ? end->second - m.out.fault_fired_s : -1;
    if (ok) {
      ++named;
      m.notes.push_back("consumer " + std::to_string(c) + " failed " + Fixed(after, 1) +
                        " s after the fault: " + cs.error);
    } else if (cs.error.find("cancel") == std::string::npos &&
               cs.error.find("Cancel") == std::string::npos) {
      r.errors.push_back("consumer " + std::to_string(c) + " failed without naming the peer " +
                         peers.front() + ": " + cs.error);
    }
  }
  bool any_failed = false;
  for (const auto& [c, cs] : view.consumers) any_failed = any_failed || !cs.error.empty();
  if (o_.fault != Fault::kSigterm || any_failed) {
    if (named == 0) r.errors.push_back("no consumer failed with an error naming the lost peer");
    return;
  }
  bool survivors_ok = true;
  for (size_t k = 0; k < view.state.size(); ++k) {
    if (static_cast<int>(k) != victim_k && view.state[k] != JobState::kSucceeded) {
      survivors_ok = false;
    }
  }
  if (survivors_ok) {
    m.notes.push_back("no channel failed: node " + std::to_string(victim_k) +
                      " drained its share of the job within its shutdown grace, the "
                      "survivors succeeded");
    return;
  }
  // A survivor may see the loss first on its producer side ("consumer N (node K, host:port)
  // went away"): its job then stops its own consumers (cancelled, no error of their own).
  // That names the victim as well as a consumer's error would.
  const std::string& victim = m.spec.nodes[static_cast<size_t>(victim_k)];
  for (const auto& [p, ps] : view.producers) {
    if (ps.error.find(victim) == std::string::npos) continue;
    m.notes.push_back("producer " + std::to_string(p) + " failed naming the stopped node: " +
                      ps.error);
    return;
  }
  r.errors.push_back("after SIGTERM of node " + std::to_string(victim_k) +
                     " no consumer or producer failed naming it, yet the survivors did not "
                     "all succeed");
}

// The fault plan's verdict on the main job.
void HarnessRun::CheckFaultOutcome(MainRun& m) {
  Report& r = report_;
  const bool ends_channels = PlanOf(o_.fault).ends_channels;
  if (!ends_channels && !m.skip_main && !g_interrupted) CheckJobSucceeded(m);
  if (ends_channels) {
    for (size_t k = 0; k < m.out.view.state.size(); ++k) {
      if (!cluster_->node(static_cast<int>(k)).alive &&
          static_cast<int>(k) == m.placement.victim) {
        continue;
      }
      m.notes.push_back("node " + std::to_string(k) + " " +
                        control::JobStateName(m.out.view.state[k]) +
                        (m.out.view.node_error[k].empty() ? "" : ": " + m.out.view.node_error[k]));
    }
    if (m.out.fault_fired_s < 0 && !m.skip_main) {
      r.errors.push_back("the job ended before the fault fired at " +
                         Fixed(o_.fault_at * 100, 0) +
                         "% of the records: make the job bigger or lower --fault-at");
    }
  }
  if (o_.fault == Fault::kStallConsumer && m.out.fault_fired_s < 0) {
    r.errors.push_back("the job ended before the stall fired: make the job bigger");
  }
  if ((o_.fault == Fault::kKillProducer || o_.fault == Fault::kSigterm ||
       o_.fault == Fault::kCutConnection) && m.out.fault_fired_s >= 0) {
    CheckPeersNamed(m);
  }
  if (o_.fault == Fault::kSlowConsumer && !m.skip_main) CheckSlowConsumer(m);
}

// Slow consumer: the unthrottled consumers keep at least half the calibrated rate.
void HarnessRun::CheckSlowConsumer(MainRun& m) {
  Report& r = report_;
  std::vector<double> rates;
  std::string per;
  for (const auto& [c, cs] : m.out.view.consumers) {
    auto it = m.out.view.consumer_end_s.find(c);
    if (it == m.out.view.consumer_end_s.end() || it->second <= 0) continue;
    const double rate = static_cast<double>(cs.bytes) / kMiB / it->second;
    per += (per.empty() ? "" : ", ") + std::to_string(c) + ": " + Fixed(rate, 1);
    if (static_cast<int>(c) != m.spec.throttled_consumer) rates.push_back(rate);
  }
  m.notes.push_back("consumer rates MiB/s {" + per + "}");
  if (rates.empty()) return;
  const double median = tools::Median(rates);
  r.AddExtra("unthrottled_median_mib_per_second", median);
  r.AddExtra("unthrottled_min_mib_per_second", *std::min_element(rates.begin(), rates.end()));
  if (median < 0.5 * m.calibration_rate) {
    r.errors.push_back("the unthrottled consumers slowed down: median " + Fixed(median, 1) +
                       " MiB/s < 0.5 x calibration " + Fixed(m.calibration_rate, 1) + " MiB/s");
  }
}

// File jobs: the part files hold exactly the input.
void HarnessRun::CheckFileOutput(MainRun& m) {
  Report& r = report_;
  std::vector<std::string> parts;
  for (int c = 0; c < o_.consumers; ++c) {
    auto it = m.out.view.consumers.find(static_cast<uint32_t>(c));
    const std::string name = m.spec.job_id + "-part-" + std::to_string(c) + ".txt";
    std::filesystem::path path =
        it != m.out.view.consumers.end() && !it->second.output_file.empty()
            ? std::filesystem::path(it->second.output_file)
            : output_path_ / name;
    // A daemon may report the path relative to its root.
    if (path.is_relative()) path = (file_root_ / path).lexically_normal();
    parts.push_back(path.string());
  }
  std::vector<std::string> inputs;
  for (const auto& in : input_paths_) inputs.push_back(in.string());
  FileCheck fc = CheckFilePartition(inputs, m.spec.delimiter, m.spec.key_field, parts);
  for (const auto& e : fc.errors) r.errors.push_back("file-partition: " + e);
  uint64_t bad = 0;
  for (const auto& [p, ps] : m.out.view.producers) bad += ps.bad_lines;
  if (bad != fc.keyless_lines) {
    r.errors.push_back("file-partition: producers counted " + std::to_string(bad) +
                       " lines without the key field, the harness counts " +
                       std::to_string(fc.keyless_lines));
  }
  m.notes.push_back("file-partition: " + std::to_string(fc.input_lines) + " input lines (" +
                    std::to_string(fc.keyless_lines) + " without the key field), " +
                    std::to_string(fc.output_lines) + " output lines in " +
                    std::to_string(parts.size()) + " parts");
  std::string list;
  for (const auto& p : parts) list += (list.empty() ? "" : ",") + JsonString(p);
  r.extra.emplace_back("output_files", "[" + list + "]");
  r.extra.emplace_back("keyless_lines", std::to_string(fc.keyless_lines));
}

// One row per node: tasks, state, memory (bounded for the stall), leaks.
void HarnessRun::AddNodeReports(const MainRun& m) {
  Report& r = report_;
  for (int i = 0; i < o_.nodes; ++i) {
    NodeReport nr;
    const Node& node = cluster_->node(i);
    nr.index = i;
    nr.address = node.address();
    nr.pid = node.pid;
    for (size_t p = 0; p < m.placement.producer_nodes.size(); ++p) {
      if (static_cast<int>(m.placement.producer_nodes[p]) == i) {
        nr.tasks += (nr.tasks.empty() ? "P" : " P") + std::to_string(p);
      }
    }
    for (size_t c = 0; c < m.placement.consumer_nodes.size(); ++c) {
      if (static_cast<int>(m.placement.consumer_nodes[c]) == i) {
        nr.tasks += (nr.tasks.empty() ? "C" : " C") + std::to_string(c);
      }
    }
    if (nr.tasks.size() > 14) nr.tasks = nr.tasks.substr(0, 12) + "..";
    nr.state = static_cast<size_t>(i) < m.out.view.state.size()
                   ? control::JobStateName(m.out.view.state[static_cast<size_t>(i)])
                   : "-";
    const auto& st = stats_[static_cast<size_t>(i)];
    nr.network_memory_bytes = st.total_segments * st.segment_size;
    auto l = m.leaks.find(i);
    nr.leaked_segments = l != m.leaks.end() ? l->second : -1;
    if (node.alive) {
      nr.peak_rss_bytes = ReadPeakRss(node.pid).value_or(st.peak_rss_bytes);
      if (o_.fault == Fault::kStallConsumer &&
          nr.peak_rss_bytes > nr.network_memory_bytes + o_.rss_slack) {
        r.errors.push_back("node " + std::to_string(i) + " peak RSS " +
                           FormatBytes(nr.peak_rss_bytes) + " exceeds its network memory " +
                           FormatBytes(nr.network_memory_bytes) + " + slack " +
                           FormatBytes(o_.rss_slack));
      }
    } else if (PlanOf(o_.fault).victim_leaves && i == m.placement.victim) {
      nr.state = o_.fault == Fault::kSigterm ? "stopped" : "killed";
    }
    r.node_reports.push_back(std::move(nr));
  }
}

// The follow-up job, the dropped packets, and the stop: every daemon exits 0 after SIGTERM.
void HarnessRun::FinishRun(MainRun& m) {
  Report& r = report_;
  if (PlanOf(o_.fault).ends_channels && !m.survivors.empty() && !g_interrupted) {
    const bool ok = RunFollowUp(m.survivors, &r.errors);
    m.notes.push_back(std::string("follow-up job on ") + std::to_string(m.survivors.size()) +
                      " surviving daemons: " + (ok ? "succeeded" : "FAILED"));
    r.extra.emplace_back("follow_up_ok", ok ? "true" : "false");
  }
  if (netns_ && o_.drop_percent > 0) {
    const uint64_t dropped = netns_->DroppedPackets();
    m.notes.push_back("nftables dropped " + std::to_string(dropped) + " packets");
    r.extra.emplace_back("dropped_packets", std::to_string(dropped));
  }
  auto down = cluster_->Shutdown(std::chrono::duration_cast<milliseconds>(
      std::chrono::duration<double>(o_.shutdown_deadline_s)));
  r.errors.insert(r.errors.end(), down.begin(), down.end());
  for (auto& nr : r.node_reports) nr.exit = DescribeWaitStatus(cluster_->node(nr.index).wait_status);
  std::string obs;
  for (const auto& note : m.notes) obs += (obs.empty() ? "" : "; ") + note;
  r.observed = obs;
}

Report HarnessRun::Run() {
  progress_tty_ = isatty(STDERR_FILENO) != 0;
  Report& r = report_;
  r.nodes = o_.nodes;
  r.producers = o_.producers;
  r.consumers = o_.consumers;
  r.fault = FaultName(o_.fault);
  r.expected = ExpectedOutcome();
  r.job = o_.kind == control::JobKind::kGenerated ? "generated" : "file-partition";

  Status s = Setup();
  if (!s.ok()) {
    r.errors.push_back(s.ToString());
    r.usage_error = s.code() == StatusCode::kInvalidArgument;
    if (s.code() == StatusCode::kPermissionDenied && o_.netns) {
      r.AddExtra("skipped_reason", s.message());
    }
    if (cluster_) (void)cluster_->Shutdown(milliseconds(5000));
    r.ok = false;
    return r;
  }
  if (!o_.json) {
    std::fprintf(stderr, "sluice-harness: %d daemons up, run directory %s\n", o_.nodes,
                 run_dir_.c_str());
  }
  MainRun m;
  if (o_.external) {
    {
      ExternalJob job(*this);
      job.Run(&m.notes);
    }  // every task process reaped
    FinishRun(m);
    r.ok = r.errors.empty();
    return r;
  }
  for (int i = 0; i < o_.nodes; ++i) m.all.push_back(i);
  m.placement = MakePlacement(o_, o_.nodes, o_.producers, o_.consumers);
  m.id_prefix = "h" + std::to_string(getpid());

  // Before the main job.
  if (o_.fault == Fault::kGarbage) SendGarbage(0, &r.errors, &m.notes);
  if (o_.fault == Fault::kWrongSecret) CheckAuthRefusal(0, &r.errors, &m.notes);
  if (o_.fault == Fault::kSlowConsumer) m.calibration_rate = Calibrate(m);

  RunMainJob(m);
  CheckFaultOutcome(m);
  // Every segment back on every live node (after cancel, when the job failed).
  m.leaks = CheckLeaks(m.survivors, milliseconds(10000), &r.errors);
  for (auto& [id, l] : m.leaks) r.leaked_segments += l > 0 ? static_cast<uint64_t>(l) : 0;
  if (o_.kind == control::JobKind::kFilePartition && m.out.all_succeeded) CheckFileOutput(m);
  AddNodeReports(m);
  FinishRun(m);
  r.ok = r.errors.empty();
  if (!r.ok && !o_.json) {
    std::fprintf(stderr, "sluice-harness: daemon logs kept in %s\n", run_dir_.c_str());
  }
  return r;
}

}  // namespace sluice::harness
