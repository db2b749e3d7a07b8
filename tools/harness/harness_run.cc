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
#include "tools/harness/file_check.h"
#include "tools/harness/process_util.h"

namespace sluice::harness {
namespace {

using Clock = std::chrono::steady_clock;
using control::JobState;
using std::chrono::milliseconds;

volatile std::sig_atomic_t g_interrupted = 0;

void OnSignal(int) { g_interrupted = 1; }

bool Terminal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string Fixed(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

constexpr double kMiB = 1024.0 * 1024.0;

// Follow-up job size: small, so that it proves the survivors serve jobs without costing time.
constexpr uint64_t kFollowUpRecords = 20000;

bool IsKill(Fault f) {
  return f == Fault::kKillConsumer || f == Fault::kKillProducer || f == Fault::kSigterm ||
         f == Fault::kCutConnection;
}

bool FiresMidShuffle(Fault f) {
  return IsKill(f) || f == Fault::kStallConsumer;
}

}  // namespace

void InstallSignalHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

Placement MakePlacement(const Options& o, int nodes, int producers, int consumers) {
  Placement p;
  const auto n = static_cast<uint32_t>(nodes);
  const uint32_t last = n - 1;
  for (int i = 0; i < producers; ++i) p.producer_nodes.push_back(static_cast<uint32_t>(i) % n);
  for (int j = 0; j < consumers; ++j) p.consumer_nodes.push_back(static_cast<uint32_t>(j) % n);
  switch (o.fault) {
    case Fault::kKillConsumer:
    case Fault::kStallConsumer:
      // The last node runs consumers only.
      for (int i = 0; i < producers; ++i) p.producer_nodes[i] = static_cast<uint32_t>(i) % last;
      p.victim = static_cast<int>(last);
      break;
    case Fault::kKillProducer:
      for (int j = 0; j < consumers; ++j) p.consumer_nodes[j] = static_cast<uint32_t>(j) % last;
      p.victim = static_cast<int>(last);
      break;
    case Fault::kSigterm:
      p.victim = static_cast<int>(last);
      break;
    case Fault::kCutConnection:
      p.victim = 0;
      break;
    case Fault::kSlowConsumer:
      for (int j = 0; j < consumers; ++j) p.consumer_nodes[j] = static_cast<uint32_t>(j + 1) % n;
      break;
    default:
      break;
  }
  return p;
}

HarnessRun::~HarnessRun() {
  clients_.clear();
  cluster_.reset();  // kills what still runs before the namespaces go
  netns_.reset();
  if (!run_dir_.empty() && !o_.keep_logs && report_.ok) RemoveTree(run_dir_);
}

std::string HarnessRun::ExpectedOutcome() const {
  const std::string dl = Fixed(o_.fault_deadline_s, 0) + " s";
  const std::string at = Fixed(o_.fault_at * 100, 0) + "%";
  switch (o_.fault) {
    case Fault::kNone:
      return "every record arrives exactly once and in order, every segment returns, every "
             "daemon exits 0 on SIGTERM";
    case Fault::kKillConsumer:
      return "SIGKILL of the consumer-only node at " + at +
             " of the records: the job fails cleanly, no hang: the survivors end (by their own "
             "errors, or cancelled by the harness after 5 s) within " + dl +
             ", return every segment, and then run a follow-up job successfully";
    case Fault::kKillProducer:
      return "SIGKILL of the producer-only node at " + at +
             ": every consumer reading from it fails within " + dl +
             " with an error naming its host:port, the survivors return every segment and run a "
             "follow-up job successfully";
    case Fault::kStallConsumer:
      return "SIGSTOP of the consumer-only node at " + at + " for " +
             Fixed(o_.stall_seconds, 1) +
             " s, then SIGCONT: the job succeeds with nothing lost, duplicated, reordered or "
             "corrupted, and every daemon's peak RSS stays <= its network memory + " +
             FormatBytes(o_.rss_slack);
    case Fault::kCutConnection:
      return "node 0 closes every data connection at " + at +
             ": the affected consumers fail within " + dl +
             " with errors naming the peer, nothing hangs, zero leaked segments, and a "
             "follow-up job succeeds";
    case Fault::kDrop:
      return Fixed(o_.drop_percent, 1) +
             "% random packet loss between the daemons: the job succeeds with nothing lost";
    case Fault::kSlowConsumer:
      return "pointwise, consumer 0 throttled to a tenth of the calibrated per-consumer rate: "
             "the other consumers' median rate stays >= 0.5x the calibration rate, nothing lost";
    case Fault::kGarbage:
      return "a client sending garbage (random bytes, a 2 GiB frame length, HTTP) is "
             "disconnected within 5 s and counted as a protocol error; the daemon then serves "
             "the job successfully";
    case Fault::kSigterm:
      return "SIGTERM of a node at " + at + ": it exits 0 within " +
             Fixed(o_.shutdown_deadline_s, 0) +
             " s (after draining or cancelling its tasks within its shutdown grace and "
             "checking every segment is back); either it drained its share and the job succeeds "
             "on the survivors, or the consumers reading from it fail within " + dl +
             " naming its host:port; the survivors leak nothing and run a follow-up job";
    case Fault::kWrongSecret:
      return "a wrong and a missing secret are refused with PermissionDenied at connect; the "
             "right secret runs the job successfully";
  }
  return "";
}

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
  if (!o.auth) args.insert(args.end(), {"--auth", "off"});
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
  if (!o_.auth) return Status::Ok();
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

  std::string sluiced = o_.sluiced;
  if (sluiced.empty()) {
    sluiced = (std::filesystem::path(SelfDir()) / ".." / "daemon" / "sluiced").lexically_normal();
  }
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
  report_.AddExtra("auth", o_.auth ? "on" : "off");
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

HarnessRun::Tally HarnessRun::Count(const control::JobSpec& spec, const JobView& view) {
  Tally t;
  const bool pointwise = spec.pattern == control::Pattern::kPointwise;
  for (const auto& [p, ps] : view.producers) t.sent += ps.records;
  for (const auto& [c, cs] : view.consumers) {
    t.received += cs.records;
    t.bytes += cs.bytes;
    t.duplicated += cs.duplicated;
    t.reordered += cs.reordered;
    t.corrupted += cs.corrupted;
  }
  // Lost, per channel (p, c): what p says it sent to c minus what c validly got from p.
  for (const auto& [p, ps] : view.producers) {
    for (size_t k = 0; k < ps.records_per_consumer.size(); ++k) {
      const uint32_t c = pointwise ? p : static_cast<uint32_t>(k);
      const uint64_t sent = ps.records_per_consumer[k];
      uint64_t got = 0;
      auto it = view.consumers.find(c);
      if (it != view.consumers.end()) {
        const auto& rpp = it->second.records_per_producer;
        if (p < rpp.size()) {
          got = rpp[p];
        } else if (pointwise && rpp.size() == 1) {
          got = rpp[0];
        }
      }
      if (sent > got) t.lost += sent - got;
    }
  }
  return t;
}

void HarnessRun::CancelOn(const control::JobSpec& spec, const std::vector<int>& ids,
                          const JobView& view, const std::string& reason,
                          std::vector<std::string>* errors) {
  for (size_t k = 0; k < ids.size(); ++k) {
    const Node& node = cluster_->node(ids[k]);
    if (!node.alive || node.stopped || Terminal(view.state[k])) continue;
    auto* c = Client(ids[k]);
    if (c == nullptr) continue;
    Status s = c->CancelJob(spec.job_id, spec.token, reason);
    if (!s.ok()) {
      errors->push_back("CancelJob on node " + std::to_string(ids[k]) + " (" + node.address() +
                        ") failed: " + s.ToString());
      DropClient(ids[k]);
    }
  }
}

void HarnessRun::PrintProgress(const control::JobSpec& spec, const JobView& view, double elapsed,
                               bool final) {
  if (o_.quiet) return;
  uint64_t records = 0;
  uint64_t bytes = 0;
  for (const auto& [c, cs] : view.consumers) {
    records += cs.records;
    bytes += cs.bytes;
  }
  const double dt = elapsed - std::max(0.0, last_print_s_);
  const double rate = dt > 0 ? static_cast<double>(bytes - std::min(bytes, last_print_bytes_)) / kMiB / dt : 0;
  if (!final && !progress_tty_ && last_print_s_ >= 0 && elapsed - last_print_s_ < 2.0) return;
  last_print_s_ = elapsed;
  last_print_bytes_ = bytes;
  uint64_t total = 0;
  uint64_t used = 0;
  for (size_t i = 0; i < stats_.size(); ++i) {
    if (!cluster_->node(static_cast<int>(i)).alive) continue;
    total += stats_[i].total_segments;
    used += stats_[i].total_segments - std::min(stats_[i].total_segments, stats_[i].available_segments);
  }
  const uint64_t expected =
      spec.kind == control::JobKind::kGenerated ? spec.records_per_producer * spec.producer_nodes.size() : 0;
  char line[256];
  std::snprintf(line, sizeof line, "[%6.1fs] %s %llu%s%s records  %.1f MiB  %.1f MiB/s  pool %llu/%llu segments (%.0f%%)",
                elapsed, spec.job_id.c_str(), static_cast<unsigned long long>(records),
                expected ? ("/" + std::to_string(expected)).c_str() : "",
                expected ? (" (" + Fixed(100.0 * static_cast<double>(records) / static_cast<double>(expected), 0) + "%)").c_str() : "",
                static_cast<double>(bytes) / kMiB, final ? static_cast<double>(bytes) / kMiB / std::max(elapsed, 1e-3) : rate,
                static_cast<unsigned long long>(used), static_cast<unsigned long long>(total),
                total ? 100.0 * static_cast<double>(used) / static_cast<double>(total) : 0.0);
  if (progress_tty_) {
    std::fprintf(stderr, "\r%-120s%s", line, final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line);
  }
  std::fflush(stderr);
}

HarnessRun::JobOutcome HarnessRun::RunJob(const control::JobSpec& spec, const std::vector<int>& ids,
                                          const Placement& placement, bool inject) {
  JobOutcome out;
  JobView& view = out.view;
  const size_t n = ids.size();
  view.state.assign(n, JobState::kUnknown);
  view.node_error.assign(n, "");
  last_print_s_ = -1;
  last_print_bytes_ = 0;

  // For an operator's `sluicectl status JOB --token-file <run dir>/JOB.token`.
  if (Status s = WriteWholeFile(run_dir_ + "/" + spec.job_id + ".token", spec.token + "\n", 0600);
      !s.ok()) {
    out.errors.push_back(s.ToString());
  }
  // Submit to every node; a refusal cancels what was already submitted.
  for (size_t k = 0; k < n; ++k) {
    auto* c = Client(ids[k]);
    Status s = c != nullptr ? c->SubmitJob(spec, static_cast<uint32_t>(k))
                            : IoError(client_errors_[static_cast<size_t>(ids[k])]);
    if (!s.ok()) {
      out.errors.push_back("node " + std::to_string(ids[k]) + " (" +
                           cluster_->node(ids[k]).address() + ") did not take job " +
                           spec.job_id + ": " + s.ToString());
      for (size_t m = 0; m < k; ++m) view.state[m] = JobState::kRunning;
      CancelOn(spec, std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(k)), view,
               "another node refused the job", &out.errors);
      return out;
    }
    view.state[k] = JobState::kRunning;
  }
  const auto start = Clock::now();
  const Fault fault = inject ? o_.fault : Fault::kNone;
  const uint64_t expected =
      spec.kind == control::JobKind::kGenerated ? spec.records_per_producer * spec.producer_nodes.size() : 0;
  // The victim as a position in ids (the job's node index).
  const int victim_k = placement.victim;
  const int victim = victim_k >= 0 ? ids[static_cast<size_t>(victim_k)] : -1;
  std::vector<bool> gone(n, false);
  bool fired = false;
  double fired_s = -1;
  double stall_until = -1;
  bool cancel_sent = false;
  double cancel_s = -1;
  double first_failure_s = -1;
  bool victim_exit_checked = false;
  double last_stats_s = -1;
  std::set<std::string> reported;

  // Consumers the fault must fail: every consumer with a channel that crosses the cut.
  std::set<uint32_t> affected;
  if (IsKill(fault)) {
    const bool pointwise = spec.pattern == control::Pattern::kPointwise;
    for (size_t c = 0; c < spec.consumer_nodes.size(); ++c) {
      const uint32_t cn = spec.consumer_nodes[c];
      for (size_t p = 0; p < spec.producer_nodes.size(); ++p) {
        if (pointwise && p != c) continue;
        const uint32_t pn = spec.producer_nodes[p];
        bool hit = false;
        if (fault == Fault::kKillProducer || fault == Fault::kSigterm) {
          hit = static_cast<int>(pn) == victim_k && static_cast<int>(cn) != victim_k;
        } else if (fault == Fault::kCutConnection) {
          hit = pn != cn && (static_cast<int>(pn) == victim_k || static_cast<int>(cn) == victim_k);
        }
        if (hit) affected.insert(static_cast<uint32_t>(c));
      }
    }
  }

  while (true) {
    std::this_thread::sleep_for(milliseconds(fired || fault == Fault::kNone ? 100 : 40));
    const double now = Seconds(start);
    if (g_interrupted) {
      out.errors.push_back("interrupted by a signal: cancelled the job and stopped the daemons");
      CancelOn(spec, ids, view, "sluice-harness interrupted", &out.errors);
      break;
    }
    // Poll every live, running node.
    for (size_t k = 0; k < n; ++k) {
      const int id = ids[k];
      if (gone[k]) continue;
      if (cluster_->Reap(id, milliseconds(0))) {
        gone[k] = true;
        const Node& node = cluster_->node(id);
        if (!(fired && id == victim)) {
          out.errors.push_back("node " + std::to_string(id) + " (" + node.address() +
                               ") died during job " + spec.job_id + " with " +
                               DescribeWaitStatus(node.wait_status) + "; its log " +
                               node.log_path + " ends with: " + cluster_->LogTail(id, 3));
        }
        continue;
      }
      if (cluster_->node(id).stopped) continue;
      auto* c = Client(id);
      if (c == nullptr) continue;
      auto st = c->GetJobStatus(spec.job_id, spec.token);
      if (!st.ok()) {
        const std::string e = "GetJobStatus on node " + std::to_string(id) + " failed: " +
                              st.status().ToString();
        if (reported.insert(e).second && !(fired && id == victim)) out.errors.push_back(e);
        DropClient(id);
        continue;
      }
      view.state[k] = st->state;
      view.node_error[k] = st->error;
      for (auto& p : st->producers) view.producers[p.index] = p;
      for (auto& cs : st->consumers) {
        if ((cs.done || !cs.error.empty()) && !view.consumer_end_s.count(cs.index)) {
          view.consumer_end_s[cs.index] = now;
        }
        view.consumers[cs.index] = cs;
      }
      if (st->state == JobState::kFailed && first_failure_s < 0) first_failure_s = now;
    }
    if (now - last_stats_s >= 0.5) {
      last_stats_s = now;
      for (size_t k = 0; k < n; ++k) {
        const int id = ids[k];
        if (gone[k] || cluster_->node(id).stopped) continue;
        if (auto* c = Client(id)) {
          auto st = c->GetStats();
          if (st.ok()) {
            stats_[static_cast<size_t>(id)] = std::move(*st);
          } else {
            DropClient(id);
          }
        }
      }
      PrintProgress(spec, view, now, false);
    }

    // The fault, once the job moved its share of records.
    uint64_t received = 0;
    for (const auto& [ci, cs] : view.consumers) received += cs.records;
    if (!fired && FiresMidShuffle(fault) && expected > 0 &&
        static_cast<double>(received) >= o_.fault_at * static_cast<double>(expected)) {
      fired = true;
      fired_s = now;
      out.fault_fired_s = now;
      const Node& vn = cluster_->node(victim);
      const std::string where = "node " + std::to_string(victim) + " (" + vn.address() + ", pid " +
                                std::to_string(vn.pid) + ") at " + Fixed(now, 2) + " s, " +
                                Fixed(100.0 * static_cast<double>(received) / static_cast<double>(expected), 1) +
                                "% of the records received";
      switch (fault) {
        case Fault::kKillConsumer:
        case Fault::kKillProducer:
          cluster_->Signal(victim, SIGKILL);
          gone[static_cast<size_t>(victim_k)] = true;
          DropClient(victim);
          out.notes.push_back("SIGKILL " + where);
          break;
        case Fault::kSigterm:
          // The victim may drain its share (sluiced's shutdown grace) or cancel it: keep
          // polling it until it exits.
          cluster_->Signal(victim, SIGTERM);
          out.notes.push_back("SIGTERM " + where);
          break;
        case Fault::kStallConsumer:
          cluster_->Signal(victim, SIGSTOP);
          stall_until = now + o_.stall_seconds;
          out.notes.push_back("SIGSTOP " + where);
          break;
        case Fault::kCutConnection: {
          auto* c = Client(victim);
          auto r = c != nullptr ? c->CutConnections() : Result<uint32_t>(IoError("no control connection"));
          if (r.ok()) {
            out.notes.push_back("CutConnections closed " + std::to_string(*r) +
                                " data connections of " + where);
            if (*r == 0) out.errors.push_back("CutConnections closed no connection");
          } else {
            out.errors.push_back("CutConnections on node " + std::to_string(victim) +
                                 " failed: " + r.status().ToString());
          }
          break;
        }
        default:
          break;
      }
    }
    if (stall_until >= 0 && now >= stall_until) {
      cluster_->Signal(victim, SIGCONT);
      out.notes.push_back("SIGCONT after " + Fixed(now - fired_s, 1) + " s");
      stall_until = -1;
    }
    if (fault == Fault::kSigterm && fired && !victim_exit_checked) {
      const Node& vn = cluster_->node(victim);
      if (!vn.alive || cluster_->Reap(victim, milliseconds(0))) {
        victim_exit_checked = true;
        const std::string how = DescribeWaitStatus(vn.wait_status);
        out.notes.push_back("node " + std::to_string(victim) + " exited with " + how + " " +
                            Fixed(now - fired_s, 1) + " s after SIGTERM");
        if (how != "exit 0") {
          out.errors.push_back("node " + std::to_string(victim) + " ended with " + how +
                               " after SIGTERM during a job, expected exit 0; its log " +
                               vn.log_path + " ends with: " + cluster_->LogTail(victim, 3));
        }
      } else if (now - fired_s > o_.shutdown_deadline_s) {
        victim_exit_checked = true;
        out.errors.push_back("node " + std::to_string(victim) + " did not exit within " +
                             Fixed(o_.shutdown_deadline_s, 0) + " s after SIGTERM; killed it");
        cluster_->Signal(victim, SIGKILL);
      }
    }

    // Done?
    bool survivors_terminal = true;
    for (size_t k = 0; k < n; ++k) {
      if (!gone[k] && !Terminal(view.state[k])) survivors_terminal = false;
    }
    const bool victim_settled = fault != Fault::kSigterm || !fired || victim_exit_checked;
    if (survivors_terminal && stall_until < 0 && victim_settled) break;

    if (IsKill(fault) && fired) {
      const double since = now - fired_s;
      if (!cancel_sent) {
        bool affected_ended = true;
        bool affected_failed = false;
        for (uint32_t c : affected) {
          const uint32_t cn = spec.consumer_nodes[c];
          if (gone[cn]) continue;
          auto it = view.consumers.find(c);
          if (it == view.consumers.end() || (!it->second.done && it->second.error.empty())) {
            affected_ended = false;
          } else if (!it->second.error.empty()) {
            affected_failed = true;
          }
        }
        // When every affected channel ended well (a SIGTERMed node drained its share), the
        // job goes on as if nothing happened.
        const bool drained = !affected.empty() && affected_ended && !affected_failed;
        const bool ready = fault == Fault::kKillConsumer ? since >= 5.0
                                                         : affected_ended && affected_failed;
        if (!drained && (ready || since >= o_.fault_deadline_s)) {
          if (!ready) {
            std::string which;
            for (uint32_t c : affected) {
              auto it = view.consumers.find(c);
              if (gone[spec.consumer_nodes[c]]) continue;
              if (it == view.consumers.end() || (!it->second.done && it->second.error.empty())) {
                which += (which.empty() ? "" : ", ") + std::to_string(c);
              }
            }
            out.errors.push_back("consumers " + which + " neither failed nor finished within " +
                                 Fixed(o_.fault_deadline_s, 0) + " s after the fault");
          }
          cancel_sent = true;
          cancel_s = now;
          bool any = false;
          for (size_t k = 0; k < n; ++k) any = any || (!gone[k] && !Terminal(view.state[k]));
          if (any) {
            out.notes.push_back("harness cancelled the job on the survivors still running " +
                                Fixed(since, 1) + " s after the fault");
          }
          CancelOn(spec, ids, view, std::string("sluice-harness: fault ") + FaultName(fault), &out.errors);
        }
      } else if (now - cancel_s > 10.0 && now - fired_s > o_.fault_deadline_s) {
        for (size_t k = 0; k < n; ++k) {
          if (!gone[k] && !Terminal(view.state[k])) {
            out.errors.push_back("node " + std::to_string(ids[k]) + " still runs job " + spec.job_id +
                                 " " + Fixed(now - fired_s, 0) +
                                 " s after the fault and after CancelJob: it hangs");
          }
        }
        break;
      }
    } else if (first_failure_s >= 0 && !cancel_sent && now - first_failure_s > 5.0) {
      // A node failed on its own: give the others 5 s to notice, then cancel them.
      cancel_sent = true;
      cancel_s = now;
      CancelOn(spec, ids, view, "sluice-harness: another node failed", &out.errors);
    } else if (cancel_sent && now - cancel_s > 15.0) {
      out.errors.push_back("job " + spec.job_id + " still runs 15 s after CancelJob");
      break;
    }
    if (now > o_.timeout_s + 5 && !cancel_sent) {
      out.errors.push_back("job " + spec.job_id + " did not finish within --timeout " +
                           Fixed(o_.timeout_s, 0) + " s");
      cancel_sent = true;
      cancel_s = now;
      CancelOn(spec, ids, view, "sluice-harness: timeout", &out.errors);
    }
  }
  out.seconds = Seconds(start);
  for (size_t k = 0; k < n; ++k) {
    if (view.state[k] == JobState::kUnknown && !gone[k]) view.state[k] = JobState::kUnknown;
  }
  if (fault == Fault::kSigterm && fired && !victim_exit_checked) {
    if (cluster_->Reap(victim, std::chrono::duration_cast<milliseconds>(
                                   std::chrono::duration<double>(o_.shutdown_deadline_s)))) {
      const std::string how = DescribeWaitStatus(cluster_->node(victim).wait_status);
      out.notes.push_back("node " + std::to_string(victim) + " exited with " + how);
      if (how != "exit 0") {
        out.errors.push_back("node " + std::to_string(victim) + " ended with " + how +
                             " after SIGTERM during a job, expected exit 0");
      }
    } else {
      out.errors.push_back("node " + std::to_string(victim) + " did not exit after SIGTERM");
      cluster_->Signal(victim, SIGKILL);
    }
  }
  out.all_succeeded = true;
  for (size_t k = 0; k < n; ++k) {
    if (view.state[k] != JobState::kSucceeded) out.all_succeeded = false;
  }
  PrintProgress(spec, view, out.seconds, true);
  return out;
}

std::map<int, int64_t> HarnessRun::CheckLeaks(const std::vector<int>& ids, milliseconds wait,
                                              std::vector<std::string>* errors) {
  std::map<int, int64_t> leaked;
  const auto until = Clock::now() + wait;
  for (int id : ids) {
    if (!cluster_->node(id).alive) continue;
    int64_t out = -1;
    while (true) {
      auto* c = Client(id);
      auto st = c != nullptr ? c->GetStats() : Result<control::NodeStats>(IoError(client_errors_[static_cast<size_t>(id)]));
      if (!st.ok()) {
        DropClient(id);
        if (Clock::now() >= until) {
          errors->push_back("leak check: GetStats on node " + std::to_string(id) + " failed: " +
                            st.status().ToString());
          break;
        }
      } else {
        stats_[static_cast<size_t>(id)] = *st;
        out = static_cast<int64_t>(st->total_segments) - static_cast<int64_t>(st->available_segments);
        if (out == 0 || Clock::now() >= until) break;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    leaked[id] = out;
    if (out > 0) {
      errors->push_back("node " + std::to_string(id) + " (" + cluster_->node(id).address() +
                        ") has " + std::to_string(out) + " of " +
                        std::to_string(stats_[static_cast<size_t>(id)].total_segments) +
                        " segments not back in its pool " +
                        Fixed(std::chrono::duration<double>(wait).count(), 0) +
                        " s after the job ended");
    }
  }
  return leaked;
}

bool HarnessRun::RunFollowUp(const std::vector<int>& ids, std::vector<std::string>* errors) {
  Options saved = o_;
  Placement p;
  for (size_t k = 0; k < ids.size(); ++k) {
    p.producer_nodes.push_back(static_cast<uint32_t>(k));
    p.consumer_nodes.push_back(static_cast<uint32_t>(k));
  }
  o_.pattern = control::Pattern::kAllToAll;
  o_.kind = control::JobKind::kGenerated;
  auto spec = MakeSpec("h" + std::to_string(getpid()) + "-followup", ids, p, kFollowUpRecords);
  o_ = saved;
  auto out = RunJob(spec, ids, p, false);
  const Tally t = Count(spec, out.view);
  bool ok = out.all_succeeded && out.errors.empty() && t.lost == 0 && t.duplicated == 0 &&
            t.reordered == 0 && t.corrupted == 0 &&
            t.received == kFollowUpRecords * ids.size();
  for (const auto& e : out.errors) errors->push_back("follow-up job: " + e);
  if (!ok) {
    std::string why;
    for (size_t k = 0; k < ids.size(); ++k) {
      if (out.view.state[k] != JobState::kSucceeded) {
        why += " node " + std::to_string(ids[k]) + " " + control::JobStateName(out.view.state[k]) +
               (out.view.node_error[k].empty() ? "" : " (" + out.view.node_error[k] + ")") + ";";
      }
    }
    errors->push_back("the surviving daemons did not serve the follow-up job: received " +
                      std::to_string(t.received) + " of " +
                      std::to_string(kFollowUpRecords * ids.size()) + " records, lost " +
                      std::to_string(t.lost) + ";" + why);
  }
  auto leaks = CheckLeaks(ids, milliseconds(10000), errors);
  for (auto& [id, l] : leaks) ok = ok && l == 0;
  return ok;
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

Report HarnessRun::Run() {
  progress_tty_ = isatty(STDERR_FILENO) != 0;
  Report& r = report_;
  r.nodes = o_.nodes;
  r.producers = o_.producers;
  r.consumers = o_.consumers;
  r.fault = FaultName(o_.fault);
  r.expected = ExpectedOutcome();
  r.job = o_.kind == control::JobKind::kGenerated ? "generated" : "file-partition";
  std::vector<std::string> notes;

  Status s = Setup();
  if (!s.ok()) {
    r.errors.push_back(s.ToString());
    if (s.code() == StatusCode::kPermissionDenied && o_.netns) r.AddExtra("skipped_reason", s.message());
    if (cluster_) {
      auto errs = cluster_->Shutdown(milliseconds(5000));
      (void)errs;
    }
    r.ok = false;
    return r;
  }
  if (!o_.json) {
    std::fprintf(stderr, "sluice-harness: %d daemons up, run directory %s\n", o_.nodes,
                 run_dir_.c_str());
  }
  std::vector<int> all;
  for (int i = 0; i < o_.nodes; ++i) all.push_back(i);
  const Placement placement = MakePlacement(o_, o_.nodes, o_.producers, o_.consumers);
  const std::string id_prefix = "h" + std::to_string(getpid());

  // Before the main job.
  if (o_.fault == Fault::kGarbage) SendGarbage(0, &r.errors, &notes);
  if (o_.fault == Fault::kWrongSecret) CheckAuthRefusal(0, &r.errors, &notes);
  double calibration_rate = 0;
  if (o_.fault == Fault::kSlowConsumer) {
    auto spec = MakeSpec(id_prefix + "-calibration", all, placement, o_.records_per_producer);
    auto cal = RunJob(spec, all, placement, false);
    for (const auto& e : cal.errors) r.errors.push_back("calibration: " + e);
    std::vector<double> rates;
    for (const auto& [c, cs] : cal.view.consumers) {
      auto it = cal.view.consumer_end_s.find(c);
      if (it != cal.view.consumer_end_s.end() && it->second > 0) {
        rates.push_back(static_cast<double>(cs.bytes) / kMiB / it->second);
      }
    }
    std::sort(rates.begin(), rates.end());
    if (!cal.all_succeeded || rates.empty()) {
      r.errors.push_back("the calibration run failed; no rate to throttle against");
    } else {
      calibration_rate = rates[rates.size() / 2];
      notes.push_back("calibration: median consumer rate " + Fixed(calibration_rate, 1) +
                      " MiB/s over " + Fixed(cal.seconds, 1) + " s");
      r.AddExtra("calibration_mib_per_second", calibration_rate);
    }
    CheckLeaks(all, milliseconds(10000), &r.errors);
  }

  // The main job.
  auto spec = MakeSpec(id_prefix + "-main", all, placement, o_.records_per_producer);
  if (o_.fault == Fault::kSlowConsumer && calibration_rate > 0) {
    spec.throttled_consumer = 0;
    spec.throttle_mib_per_second = calibration_rate / 10;
    notes.push_back("consumer 0 throttled to " + Fixed(spec.throttle_mib_per_second, 2) + " MiB/s");
  }
  const bool skip_main = o_.fault == Fault::kSlowConsumer && calibration_rate <= 0;
  JobOutcome out;
  if (!skip_main) out = RunJob(spec, all, placement, true);
  r.errors.insert(r.errors.end(), out.errors.begin(), out.errors.end());
  notes.insert(notes.end(), out.notes.begin(), out.notes.end());
  const Tally t = Count(spec, out.view);
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
  r.seconds = out.seconds;
  r.mib_per_second = out.seconds > 0 ? static_cast<double>(t.bytes) / kMiB / out.seconds : 0;

  const bool fault_kills = IsKill(o_.fault);
  const bool victim_gone = o_.fault == Fault::kKillConsumer || o_.fault == Fault::kKillProducer ||
                           o_.fault == Fault::kSigterm;
  // Survivors: every node still alive.
  std::vector<int> survivors;
  for (int i = 0; i < o_.nodes; ++i) {
    if (cluster_->node(i).alive) survivors.push_back(i);
  }

  // Expected outcome, per fault.
  if (t.duplicated || t.reordered || t.corrupted) {
    r.errors.push_back("records duplicated, reordered or corrupted: never acceptable");
  }
  if (!fault_kills && !skip_main && !g_interrupted) {
    if (!out.all_succeeded) {
      for (size_t k = 0; k < out.view.state.size(); ++k) {
        if (out.view.state[k] != JobState::kSucceeded) {
          r.errors.push_back("node " + std::to_string(k) + " ended job " + spec.job_id + " as " +
                             control::JobStateName(out.view.state[k]) +
                             (out.view.node_error[k].empty() ? "" : ": " + out.view.node_error[k]));
        }
      }
    }
    for (const auto& [c, cs] : out.view.consumers) {
      if (!cs.error.empty()) r.errors.push_back("consumer " + std::to_string(c) + ": " + cs.error);
    }
    for (const auto& [p, ps] : out.view.producers) {
      if (!ps.error.empty()) r.errors.push_back("producer " + std::to_string(p) + ": " + ps.error);
    }
    if (t.lost > 0) r.errors.push_back(std::to_string(t.lost) + " records lost");
    if (o_.kind == control::JobKind::kGenerated && t.received != r.records_expected) {
      r.errors.push_back("received " + std::to_string(t.received) + " records, expected " +
                         std::to_string(r.records_expected));
    }
  }
  if (fault_kills) {
    for (size_t k = 0; k < out.view.state.size(); ++k) {
      if (!cluster_->node(static_cast<int>(k)).alive && static_cast<int>(k) == placement.victim) continue;
      notes.push_back("node " + std::to_string(k) + " " + control::JobStateName(out.view.state[k]) +
                      (out.view.node_error[k].empty() ? "" : ": " + out.view.node_error[k]));
    }
  }
  if (fault_kills && out.fault_fired_s < 0 && !skip_main) {
    r.errors.push_back("the job ended before the fault fired at " + Fixed(o_.fault_at * 100, 0) +
                       "% of the records: make the job bigger or lower --fault-at");
  }
  if (o_.fault == Fault::kStallConsumer && out.fault_fired_s < 0) {
    r.errors.push_back("the job ended before the stall fired: make the job bigger");
  }
  if ((o_.fault == Fault::kKillProducer || o_.fault == Fault::kSigterm ||
       o_.fault == Fault::kCutConnection) && out.fault_fired_s >= 0) {
    // Each failed consumer's error names the peer it lost.
    const int victim_k = placement.victim;
    int named = 0;
    for (const auto& [c, cs] : out.view.consumers) {
      const int cn = static_cast<int>(spec.consumer_nodes[c]);
      if (cn == victim_k && o_.fault != Fault::kCutConnection) continue;
      if (cs.error.empty()) continue;
      std::vector<std::string> peers;
      if (o_.fault == Fault::kCutConnection && cn == victim_k) {
        for (int k = 0; k < o_.nodes; ++k) {
          if (k != cn) peers.push_back(spec.nodes[static_cast<size_t>(k)]);
        }
      } else {
        peers.push_back(spec.nodes[static_cast<size_t>(victim_k)]);
      }
      bool ok = false;
      for (const auto& p : peers) ok = ok || cs.error.find(p) != std::string::npos;
      const auto end = out.view.consumer_end_s.find(c);
      const double after = end != out.view.consumer_end_s.end() ? end->second - out.fault_fired_s : -1;
      if (ok) {
        ++named;
        notes.push_back("consumer " + std::to_string(c) + " failed " + Fixed(after, 1) +
                        " s after the fault: " + cs.error);
      } else if (cs.error.find("cancel") == std::string::npos &&
                 cs.error.find("Cancel") == std::string::npos) {
        r.errors.push_back("consumer " + std::to_string(c) + " failed without naming the peer " +
                           peers.front() + ": " + cs.error);
      }
    }
    bool any_failed = false;
    for (const auto& [c, cs] : out.view.consumers) any_failed = any_failed || !cs.error.empty();
    if (o_.fault == Fault::kSigterm && !any_failed) {
      bool survivors_ok = true;
      for (size_t k = 0; k < out.view.state.size(); ++k) {
        if (static_cast<int>(k) != victim_k && out.view.state[k] != JobState::kSucceeded) {
          survivors_ok = false;
        }
      }
      if (survivors_ok) {
        notes.push_back("no channel failed: node " + std::to_string(victim_k) +
                        " drained its share of the job within its shutdown grace, the "
                        "survivors succeeded");
      } else {
        r.errors.push_back("after SIGTERM of node " + std::to_string(victim_k) +
                           " no consumer failed, yet the survivors did not all succeed");
      }
    } else if (named == 0) {
      r.errors.push_back("no consumer failed with an error naming the lost peer");
    }
  }
  if (o_.fault == Fault::kSlowConsumer && !skip_main) {
    std::vector<double> rates;
    std::string per;
    for (const auto& [c, cs] : out.view.consumers) {
      auto it = out.view.consumer_end_s.find(c);
      if (it == out.view.consumer_end_s.end() || it->second <= 0) continue;
      const double rate = static_cast<double>(cs.bytes) / kMiB / it->second;
      per += (per.empty() ? "" : ", ") + std::to_string(c) + ": " + Fixed(rate, 1);
      if (static_cast<int>(c) != spec.throttled_consumer) rates.push_back(rate);
    }
    std::sort(rates.begin(), rates.end());
    notes.push_back("consumer rates MiB/s {" + per + "}");
    if (!rates.empty()) {
      const double median = rates[rates.size() / 2];
      r.AddExtra("unthrottled_median_mib_per_second", median);
      r.AddExtra("unthrottled_min_mib_per_second", rates.front());
      if (median < 0.5 * calibration_rate) {
        r.errors.push_back("the unthrottled consumers slowed down: median " + Fixed(median, 1) +
                           " MiB/s < 0.5 x calibration " + Fixed(calibration_rate, 1) + " MiB/s");
      }
    }
  }

  // Every segment back on every live node (after cancel, when the job failed).
  auto leaks = CheckLeaks(survivors, milliseconds(10000), &r.errors);
  for (auto& [id, l] : leaks) r.leaked_segments += l > 0 ? static_cast<uint64_t>(l) : 0;

  // File jobs: the part files hold exactly the input.
  if (o_.kind == control::JobKind::kFilePartition && out.all_succeeded) {
    std::vector<std::string> parts;
    for (int c = 0; c < o_.consumers; ++c) {
      auto it = out.view.consumers.find(static_cast<uint32_t>(c));
      const std::string name = spec.job_id + "-part-" + std::to_string(c) + ".txt";
      std::filesystem::path path =
          it != out.view.consumers.end() && !it->second.output_file.empty()
              ? std::filesystem::path(it->second.output_file)
              : output_path_ / name;
      // A daemon may report the path relative to its root.
      if (path.is_relative()) path = (file_root_ / path).lexically_normal();
      parts.push_back(path.string());
    }
    std::vector<std::string> inputs;
    for (const auto& in : input_paths_) inputs.push_back(in.string());
    FileCheck fc = CheckFilePartition(inputs, spec.delimiter, spec.key_field, parts);
    for (const auto& e : fc.errors) r.errors.push_back("file-partition: " + e);
    uint64_t bad = 0;
    for (const auto& [p, ps] : out.view.producers) bad += ps.bad_lines;
    if (bad != fc.keyless_lines) {
      r.errors.push_back("file-partition: producers counted " + std::to_string(bad) +
                         " lines without the key field, the harness counts " +
                         std::to_string(fc.keyless_lines));
    }
    notes.push_back("file-partition: " + std::to_string(fc.input_lines) + " input lines (" +
                    std::to_string(fc.keyless_lines) + " without the key field), " +
                    std::to_string(fc.output_lines) + " output lines in " +
                    std::to_string(parts.size()) + " parts");
    std::string list;
    for (const auto& p : parts) list += (list.empty() ? "" : ",") + JsonString(p);
    r.extra.emplace_back("output_files", "[" + list + "]");
    r.extra.emplace_back("keyless_lines", std::to_string(fc.keyless_lines));
  }

  // Memory stays bounded (checked for the stall; reported always).
  for (int i = 0; i < o_.nodes; ++i) {
    NodeReport nr;
    const Node& node = cluster_->node(i);
    nr.index = i;
    nr.address = node.address();
    nr.pid = node.pid;
    for (size_t p = 0; p < placement.producer_nodes.size(); ++p) {
      if (static_cast<int>(placement.producer_nodes[p]) == i) nr.tasks += (nr.tasks.empty() ? "P" : " P") + std::to_string(p);
    }
    for (size_t c = 0; c < placement.consumer_nodes.size(); ++c) {
      if (static_cast<int>(placement.consumer_nodes[c]) == i) nr.tasks += (nr.tasks.empty() ? "C" : " C") + std::to_string(c);
    }
    if (nr.tasks.size() > 14) nr.tasks = nr.tasks.substr(0, 12) + "..";
    nr.state = static_cast<size_t>(i) < out.view.state.size()
                   ? control::JobStateName(out.view.state[static_cast<size_t>(i)])
                   : "-";
    const auto& st = stats_[static_cast<size_t>(i)];
    nr.network_memory_bytes = st.total_segments * st.segment_size;
    auto l = leaks.find(i);
    nr.leaked_segments = l != leaks.end() ? l->second : -1;
    if (node.alive) {
      nr.peak_rss_bytes = ReadPeakRss(node.pid).value_or(st.peak_rss_bytes);
      if (o_.fault == Fault::kStallConsumer &&
          nr.peak_rss_bytes > nr.network_memory_bytes + o_.rss_slack) {
        r.errors.push_back("node " + std::to_string(i) + " peak RSS " + FormatBytes(nr.peak_rss_bytes) +
                           " exceeds its network memory " + FormatBytes(nr.network_memory_bytes) +
                           " + slack " + FormatBytes(o_.rss_slack));
      }
    } else {
      if (victim_gone && i == placement.victim) {
        nr.state = o_.fault == Fault::kSigterm ? "stopped" : "killed";
      }
    }
    r.node_reports.push_back(std::move(nr));
  }

  // The survivors serve the next job.
  if (fault_kills && !survivors.empty() && !g_interrupted) {
    const bool ok = RunFollowUp(survivors, &r.errors);
    notes.push_back(std::string("follow-up job on ") + std::to_string(survivors.size()) +
                    " surviving daemons: " + (ok ? "succeeded" : "FAILED"));
    r.extra.emplace_back("follow_up_ok", ok ? "true" : "false");
  }

  if (netns_ && o_.drop_percent > 0) {
    const uint64_t dropped = netns_->DroppedPackets();
    notes.push_back("nftables dropped " + std::to_string(dropped) + " packets");
    r.extra.emplace_back("dropped_packets", std::to_string(dropped));
  }

  // Stop: every daemon exits 0 after SIGTERM.
  auto down = cluster_->Shutdown(std::chrono::duration_cast<milliseconds>(
      std::chrono::duration<double>(o_.shutdown_deadline_s)));
  r.errors.insert(r.errors.end(), down.begin(), down.end());
  for (auto& nr : r.node_reports) {
    const Node& node = cluster_->node(nr.index);
    nr.exit = DescribeWaitStatus(node.wait_status);
  }
  std::string obs;
  for (const auto& note : notes) obs += (obs.empty() ? "" : "; ") + note;
  r.observed = obs;
  r.ok = r.errors.empty();
  if (!r.ok && !o_.json) {
    std::fprintf(stderr, "sluice-harness: daemon logs kept in %s\n", run_dir_.c_str());
  }
  return r;
}

}  // namespace sluice::harness
