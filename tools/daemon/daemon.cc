#include "tools/daemon/daemon.h"

#include "store/store_control.h"

#include "client/writer.h"
#include "schema/control.h"
#include "shuffle/auth.h"
#include "tools/control/control_codec.h"
#include "transport/log.h"

namespace sluice::daemon {

using schema::MessageType;

namespace {
constexpr size_t kEndedJobsKept = 256;
constexpr size_t kMaxRunningJobs = 64;

bool Ended(control::JobState s) {
  return s == control::JobState::kSucceeded || s == control::JobState::kFailed ||
         s == control::JobState::kCancelled;
}

std::string Summary(const control::JobStatus& st) {
  uint64_t produced = 0, consumed = 0, bytes = 0;
  for (const auto& p : st.producers) produced += p.records;
  for (const auto& c : st.consumers) {
    consumed += c.records;
    bytes += c.bytes;
  }
  char secs[32];
  std::snprintf(secs, sizeof(secs), "%.2f", st.seconds);
  return "job '" + st.job_id + "' " + control::JobStateName(st.state) + " after " + secs +
         " s: " + std::to_string(st.producers.size()) + " producers sent " +
         std::to_string(produced) + " records, " + std::to_string(st.consumers.size()) +
         " consumers received " + std::to_string(consumed) + " (" + std::to_string(bytes >> 20) +
         " MiB)" + (st.error.empty() ? "" : "; " + st.error);
}
}  // namespace

namespace {

// A secret the daemon reads at start: `file` when given, else <state_dir>/<state_name>, created
// 0600 on first start. A file the daemon cannot use is a configuration error (exit 2), whatever
// the cause: PermissionDenied stays so, anything else is InvalidArgument. `what` leads the
// message ("" for none).
Result<std::string> LoadDaemonSecret(const DaemonConfig& config, const std::string& file,
                                     std::string_view state_name, const std::string& what) {
  Result<std::string> secret =
      file.empty() ? shuffle::auth::LoadStateFile(config.state_dir, state_name, /*create=*/true)
                   : shuffle::auth::ReadSecretFile(file);
  if (secret.ok()) return secret;
  const StatusCode code = secret.status().code() == StatusCode::kPermissionDenied
                              ? StatusCode::kPermissionDenied
                              : StatusCode::kInvalidArgument;
  return Status(code, what + secret.status().message());
}

// Where the shared secret comes from (issue 11: authenticated by default). The one place the
// environment's auth setting is made.
Status ConfigureAuth(const DaemonConfig& config, shuffle::EnvironmentConfig* ec) {
  auto secret = LoadDaemonSecret(config, config.auth_secret_file,
                                 shuffle::auth::kStateSecretFileName, "");
  if (!secret.ok()) return secret.status();
  ec->auth.secret = std::move(*secret);
  ec->auth.off = false;
  return Status::Ok();
}

// The bearer token of the metrics endpoint: metrics_token_file, else the state directory's
// metrics_token.
Result<std::string> MetricsToken(const DaemonConfig& config) {
  return LoadDaemonSecret(config, config.metrics_token_file, kMetricsTokenFileName,
                          "metrics token: ");
}

}  // namespace

shuffle::ControlReply LimitReplySize(shuffle::ControlReply reply, const std::string& node) {
  return [reply = std::move(reply), node](MessageType type, std::vector<uint8_t> message) {
    if (message.size() > control::kMaxControlMessageBytes) {
      const std::string what = std::string(schema::MessageTypeName(type));
      Log(LogLevel::kError, node + ": a " + what + " of " + std::to_string(message.size()) +
                                " bytes does not fit in a frame; answered with an error");
      type = MessageType::kControlResult;
      message = control::EncodeControlResult(InternalError(
          node + ": the " + what + " reply would be " + std::to_string(message.size()) +
          " bytes, over the " + std::to_string(control::kMaxControlMessageBytes) +
          "-byte frame limit"));
    }
    reply(type, std::move(message));
  };
}

Daemon::Daemon(const DaemonConfig& config) : config_(config) {}

Result<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config) {
  if (Status st = Validate(config); !st.ok()) return st;
  std::unique_ptr<Daemon> d(new Daemon(config));
  shuffle::EnvironmentConfig ec;
  ec.memory.network_memory = config.network_memory;
  ec.memory.segment_size = config.segment_size;
  ec.memory.preallocate = config.preallocate;
  // Validated when the config was read; anything else keeps the default (usage).
  (void)buffer::ParseRedistributionPolicy(config.redistribution, &ec.memory.redistribution);
  ec.options.credit.buffers_per_channel = config.buffers_per_channel;
  ec.options.credit.floating_per_gate = config.floating_per_gate;
  ec.options.credit.wide_threshold = config.wide_threshold;
  ec.options.credit.wide_gate_buffers = config.wide_gate_buffers;
  ec.options.buffer_timeout = std::chrono::milliseconds(config.buffer_timeout_ms);
  ec.options.checksums = config.checksums;
  ec.options.debloat = config.debloat;  // buffer debloating
  ec.options.debloat_target = std::chrono::milliseconds(config.debloat_target_ms);
  ec.options.faults.seed = config.fault_seed;
  ec.options.faults.corrupt_per_million = config.fault_corrupt_per_million;
  ec.options.faults.delay_ms = config.fault_delay_ms;
  if (ec.options.faults.active()) {
    Log(LogLevel::kWarn, "fault shim ON (testing only): corrupting " +
                             std::to_string(config.fault_corrupt_per_million) +
                             " per million sent buffers, delaying writes by " +
                             std::to_string(config.fault_delay_ms) + " ms, seed " +
                             std::to_string(config.fault_seed));
  }
  ec.listen = true;
  ec.bind_host = config.listen;
  ec.port = config.port;
  ec.io_threads = config.io_threads;
  ec.max_connections = config.max_connections;
  ec.max_connections_per_peer = config.max_connections_per_peer;
  ec.node_name = config.node_name.empty() ? "sluiced" : config.node_name;
  ec.control = d.get();
  if (Status st = ConfigureAuth(config, &ec); !st.ok()) return st;
  auto peers = ParseAllowedPeers(config.allowed_peers);
  if (!peers.ok()) return peers.status();
  d->allowed_peers_ = std::move(*peers);
  auto env = shuffle::ShuffleEnvironment::Start(ec);
  if (!env.ok()) {
    return Status(env.status().code(), "cannot start on " + config.listen + ":" +
                                           std::to_string(config.port) + ": " +
                                           env.status().message());
  }
  d->env_ = std::move(*env);
  d->node_name_ = config.node_name.empty()
                      ? "sluiced@" + config.listen + ":" + std::to_string(d->env_->port())
                      : config.node_name;
  if (Status st = d->StartStore(config); !st.ok()) return st;
  if (Status st = d->StartLocalWriters(config, d->store_.get()); !st.ok()) return st;
  d->control_thread_ = std::thread([p = d.get()] { p->ControlLoop(); });
  if (!config.metrics_listen.empty()) {
    auto token = MetricsToken(config);
    if (!token.ok()) return token.status();
    HttpHandlers handlers;
    handlers.metrics = [p = d.get()] { return p->Prometheus(); };
    handlers.healthy = [p = d.get()] { return p->serving(); };
    auto http = HttpServer::Start(config.metrics_listen, std::move(*token), std::move(handlers));
    if (http.ok()) {
      d->http_ = std::move(*http);
    } else if (config.metrics_listen_optional) {
      Log(LogLevel::kWarn, http.status().message() + " (the default address; running without "
                           "the metrics endpoint)");
    } else {
      return http.status();  // ~Daemon stops what started
    }
  }
  return d;
}

Daemon::~Daemon() { Shutdown(std::chrono::milliseconds(0)); }

Status Daemon::Reload(const DaemonConfig& config) {
  if (Status st = Validate(config); !st.ok()) return st;
  auto peers = ParseAllowedPeers(config.allowed_peers);
  if (!peers.ok()) return peers.status();
  std::lock_guard<std::mutex> lock(mu_);
  allowed_peers_ = std::move(*peers);
  config_.allowed_peers = config.allowed_peers;
  config_.job_memory = config.job_memory;
  config_.max_line_bytes = config.max_line_bytes;
  config_.log_level = config.log_level;
  config_.metrics_interval_ms = config.metrics_interval_ms;
  return Status::Ok();
}

void Daemon::OnControlRequest(MessageType type, std::span<const uint8_t> message,
                              const std::string& peer, shuffle::ControlReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) {
    reply(MessageType::kControlResult,
          control::EncodeControlResult(Status(StatusCode::kClosed, node_name_ + " is stopping")));
    return;
  }
  if (queue_.size() >= kMaxQueuedRequests) {
    reply(MessageType::kControlResult,
          control::EncodeControlResult(ResourceExhausted(
              node_name_ + " has " + std::to_string(queue_.size()) +
              " control requests queued, the most it holds; wait for the answers to earlier "
              "requests before sending more")));
    return;
  }
  queue_.push_back(Request{type, std::vector<uint8_t>(message.begin(), message.end()), peer,
                           LimitReplySize(std::move(reply), node_name_)});
  cv_.notify_one();
}

void Daemon::ControlLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait_for(lock, std::chrono::milliseconds(100),
                 [this] { return stopping_ || !queue_.empty(); });
    while (!queue_.empty()) {
      Request r = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      Serve(r);
      lock.lock();
    }
    lock.unlock();
    ReapEndedJobs();
    lock.lock();
    if (stopping_ && queue_.empty()) return;
  }
}

void Daemon::SetTaskHookForTesting(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  task_hook_ = std::move(hook);
}

// The external shuffle store: spill_dir (default <state_dir>/spill) is created and cleared of
// a crashed daemon's spill files; its views are served for "ext/..." partition ids.
Status Daemon::StartStore(const DaemonConfig& config) {
  store::PartitionStoreOptions o;
  o.node = config.listen + ":" + std::to_string(env_->port());
  o.spill_dir = config.spill_dir.empty() ? config.state_dir + "/spill" : config.spill_dir;
  o.spill_max_bytes = config.spill_max_bytes;
  o.memory_budget_bytes =
      config.store_memory != 0 ? config.store_memory : config.network_memory / 2;
  o.retention = std::chrono::seconds(config.retention);
  o.max_held_subpartitions = config.store_max_subpartitions;
  o.max_held_read_set_entries = config.store_max_read_set_entries;
  o.read_pool = env_->pool();
  o.maintenance_interval = std::chrono::milliseconds(200);
  o.read_segments = std::max<uint32_t>(
      2, std::min<uint64_t>(16, config.network_memory / config.segment_size / 16));
  auto s = store::PartitionStore::Create(o);
  if (!s.ok()) return s.status();
  store_ = std::move(*s);
  env_->registry().SetViewProvider(std::string(store::kExternalPartitionPrefix), store_.get());
  return Status::Ok();
}

void Daemon::Serve(Request& r) {
  try {
    if (store_ && store::IsStoreControlRequest(r.type)) {
      return store::ServeStoreControl(*store_, r.type, r.message, r.reply);
    }
    switch (r.type) {
      case MessageType::kSubmitJob: return ServeSubmit(r);
      case MessageType::kJobStatusRequest: return ServeJobStatus(r);
      case MessageType::kCancelJob: return ServeCancel(r);
      case MessageType::kStatsRequest:
        return r.reply(MessageType::kStatsResponse, control::EncodeStats(Stats()));
      case MessageType::kCutConnections: return ServeCutConnections(r);
      case MessageType::kListJobsRequest:
        return r.reply(MessageType::kListJobsResponse, control::EncodeJobList(ListJobs()));
      default:
        return r.reply(MessageType::kControlResult,
                       control::EncodeControlResult(InvalidArgument(
                           std::string(schema::MessageTypeName(r.type)) + " is not a request")));
    }
  } catch (const std::exception& e) {
    // A request must never end the daemon (bad_alloc, a thread that cannot start, ...).
    Log(LogLevel::kError, node_name_ + ": " + std::string(schema::MessageTypeName(r.type)) +
                              " from " + r.peer + " failed: " + e.what());
    r.reply(MessageType::kControlResult,
            control::EncodeControlResult(InternalError(
                node_name_ + " could not serve " +
                std::string(schema::MessageTypeName(r.type)) + ": " + e.what())));
  }
}

Status Daemon::CheckSubmitLocked(const control::JobSpec& spec, uint32_t node,
                                 uint64_t heap_bytes) {
  const std::string job = "job '" + spec.job_id + "': ";
  if (!accepting_jobs_) {
    return Status(StatusCode::kClosed, node_name_ + " is shutting down; submit elsewhere");
  }
  if (spec.token.size() < shuffle::auth::kMinJobTokenLength) {
    return InvalidArgument(job + "token is " + std::to_string(spec.token.size()) +
                           " characters; every job needs a random token of at least " +
                           std::to_string(shuffle::auth::kMinJobTokenLength) +
                           " (JobSpec.token, e.g. auth::MakeJobToken())");
  }
  if (running_.count(spec.job_id) != 0 || ended_.count(spec.job_id) != 0) {
    return InvalidArgument("job id '" + spec.job_id + "' is already known to " + node_name_ +
                           "; use a new id");
  }
  if (spec.checksums && !config_.checksums) {
    // Buffer checksums are a property of the daemon's connections, not of one job.
    return InvalidArgument(job + "asks for buffer checksums but " + node_name_ +
                           " runs without them; start every sluiced with --checksums "
                           "(checksums = true)");
  }
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    const std::string& n = spec.nodes[i];
    const size_t colon = n.rfind(':');
    const std::string host = colon == std::string::npos ? n : n.substr(0, colon);
    auto ok = AddressAllowed(allowed_peers_, host);
    if (!ok.ok()) {
      return InvalidArgument(job + "node " + std::to_string(i) + " " + ok.status().message() +
                             " (allowed_peers)");
    }
    if (!*ok) {
      return Status(StatusCode::kPermissionDenied,
                    job + "node " + std::to_string(i) + " address " + host +
                        " is not inside allowed_peers (" + config_.allowed_peers + ") of " +
                        node_name_ + "; add its network to --allowed-peers");
    }
  }
  if (running_.size() >= kMaxRunningJobs) {
    return ResourceExhausted(node_name_ + " already runs " + std::to_string(running_.size()) +
                             " jobs; wait for one to end");
  }
  if (heap_bytes > config_.job_memory - std::min(config_.job_memory, job_heap_charged_)) {
    return ResourceExhausted(
        job + "needs " + std::to_string(heap_bytes) + " bytes of heap outside network memory "
        "on node " + std::to_string(node) + " (record buffers: producers x record_size_max " +
        std::to_string(spec.record_size_max) + ", plus the consumers' reassembly bound), but " +
        node_name_ + " has " + std::to_string(config_.job_memory - std::min(config_.job_memory,
                                                                             job_heap_charged_)) +
        " of job_memory " + std::to_string(config_.job_memory) +
        " left; lower record_size_max or the task count, or raise --job-memory");
  }
  return Status::Ok();
}

void Daemon::ServeSubmit(Request& r) {
  auto m = schema::ParseSubmitJob(r.message);
  if (!m.ok()) {
    return r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
  }
  const control::JobSpec spec = control::DecodeJobSpec(*(*m)->spec());
  const uint32_t node = (*m)->node_index();
  Status st = ValidateJobSpec(spec);
  uint64_t heap = 0;
  JobRunnerOptions options;
  options.input_dir = config_.input_dir;
  options.output_dir = config_.output_dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    options.max_line_bytes = config_.max_line_bytes;
  }
  if (st.ok() && node >= spec.nodes.size()) {
    st = InvalidArgument("job '" + spec.job_id + "': node index " + std::to_string(node) +
                         " is not in nodes");
  }
  if (st.ok()) {
    heap = EstimateJobMemory(spec, node, env_->config().options.credit, options.max_line_bytes)
               .heap_bytes;
    std::lock_guard<std::mutex> lock(mu_);
    st = CheckSubmitLocked(spec, node, heap);
    options.task_hook_for_testing = task_hook_;
    if (st.ok()) {  // reserved now, so a concurrent submit cannot take the same budget
      job_heap_[spec.job_id] = heap;
      job_heap_charged_ += heap;
    }
  }
  if (st.ok()) {
    auto runner = JobRunner::Start(env_.get(), spec, node, options);
    std::lock_guard<std::mutex> lock(mu_);
    if (runner.ok()) {
      Log(LogLevel::kInfo, "job '" + spec.job_id + "' from " + r.peer + " started on " +
                               node_name_ + " as node " + std::to_string(node));
      running_[spec.job_id] = std::move(*runner);
    } else {
      st = runner.status();
      job_heap_charged_ -= heap;
      job_heap_.erase(spec.job_id);
    }
  }
  if (!st.ok()) {
    Log(LogLevel::kWarn, "job '" + spec.job_id + "' from " + r.peer + " refused: " +
                             st.message());
  }
  r.reply(MessageType::kControlResult, control::EncodeControlResult(st));
}

bool Daemon::TokenMatchesLocked(const std::string& id, const std::string& token) {
  std::string expected;
  if (auto it = running_.find(id); it != running_.end()) {
    expected = it->second->spec().token;
  } else if (auto e = ended_.find(id); e != ended_.end()) {
    expected = e->second.token;
  }
  // An unknown job is compared against the empty token and never matches: the same work and
  // the same answer as a wrong token.
  return shuffle::auth::SecretsMatch(expected, token);
}

Status Daemon::DeniedJob(const std::string& id) const {
  return Status(StatusCode::kPermissionDenied,
                "job '" + id + "': " + node_name_ +
                    " has no job with this id and token; give the job's token (JobSpec.token, "
                    "as submitted)");
}

void Daemon::ServeJobStatus(Request& r) {
  auto m = schema::ParseJobStatusRequest(r.message);
  if (!m.ok()) {
    return r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
  }
  const std::string id = (*m)->job_id()->str();
  const std::string token = (*m)->token() ? (*m)->token()->str() : std::string();
  control::JobStatus st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!TokenMatchesLocked(id, token)) {
      return r.reply(MessageType::kControlResult, control::EncodeControlResult(DeniedJob(id)));
    }
    if (auto it = running_.find(id); it != running_.end()) {
      st = it->second->Status();
    } else {
      st = ended_.at(id).status;
    }
  }
  r.reply(MessageType::kJobStatusResponse, control::EncodeJobStatus(st));
}

void Daemon::ServeCancel(Request& r) {
  auto m = schema::ParseCancelJob(r.message);
  if (!m.ok()) {
    return r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
  }
  const std::string id = (*m)->job_id()->str();
  const std::string token = (*m)->token() ? (*m)->token()->str() : std::string();
  const std::string reason = (*m)->reason() ? (*m)->reason()->str() : "cancelled";
  Status st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!TokenMatchesLocked(id, token)) {
      st = DeniedJob(id);
    } else if (auto it = running_.find(id); it != running_.end()) {
      Log(LogLevel::kInfo, "job '" + id + "' cancelled by " + r.peer + ": " + reason);
      it->second->Cancel(reason);
    }
  }
  r.reply(MessageType::kControlResult, control::EncodeControlResult(st));
}

void Daemon::ServeCutConnections(Request& r) {
  if (!config_.enable_fault_injection) {
    Log(LogLevel::kWarn, "fault injection (CutConnections) from " + r.peer + " refused");
    return r.reply(MessageType::kControlResult,
                   control::EncodeControlResult(Status(
                       StatusCode::kPermissionDenied,
                       "CutConnections is a fault hook; " + node_name_ +
                           " was not started with --enable-fault-injection")));
  }
  const std::string why = "connection cut by fault injection on " + node_name_;
  uint32_t n = env_->server() ? env_->server()->CutDataConnections(why) : 0;
  n += env_->client().CutConnections(why);
  Log(LogLevel::kWarn, "fault injection from " + r.peer + ": cut " + std::to_string(n) +
                           " data connections");
  r.reply(MessageType::kControlResult, control::EncodeControlResult(Status::Ok(), n));
}

void Daemon::RecordEnded(const control::JobStatus& st, const std::string& token) {
  // mu_ held.
  if (auto h = job_heap_.find(st.job_id); h != job_heap_.end()) {
    job_heap_charged_ -= h->second;
    job_heap_.erase(h);
  }
  switch (st.state) {
    case control::JobState::kSucceeded: ++ended_counters_.succeeded; break;
    case control::JobState::kFailed: ++ended_counters_.failed; break;
    default: ++ended_counters_.cancelled; break;
  }
  for (const auto& p : st.producers) ended_counters_.records_produced += p.records;
  for (const auto& c : st.consumers) {
    ended_counters_.records_consumed += c.records;
    ended_counters_.bytes_consumed += c.bytes;
  }
  ended_[st.job_id] = EndedJob{st, token};
  ended_order_.push_back(st.job_id);
  while (ended_order_.size() > kEndedJobsKept) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

void Daemon::ReapEndedJobs() {
  std::vector<std::unique_ptr<JobRunner>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = running_.begin(); it != running_.end();) {
      control::JobStatus st = it->second->Status();
      if (!Ended(st.state)) {
        ++it;
        continue;
      }
      Log(st.state == control::JobState::kSucceeded ? LogLevel::kInfo : LogLevel::kWarn,
          Summary(st));
      RecordEnded(st, it->second->spec().token);
      done.push_back(std::move(it->second));
      it = running_.erase(it);
    }
  }
  done.clear();  // destroys the runners outside the lock: joins threads, returns segments
}

JobCounters Daemon::Counters() {
  std::lock_guard<std::mutex> lock(mu_);
  JobCounters c = ended_counters_;
  c.running = static_cast<uint32_t>(running_.size());
  for (const auto& [id, r] : running_) {
    const control::JobStatus st = r->Status();
    for (const auto& p : st.producers) c.records_produced += p.records;
    for (const auto& cs : st.consumers) {
      c.records_consumed += cs.records;
      c.bytes_consumed += cs.bytes;
    }
  }
  return c;
}

std::string Daemon::CreditDump() {
  std::string out;
  if (env_->server()) {
    for (const std::string& line : env_->server()->ReaderStates()) out += line + "\n";
  }
  for (const std::string& line : env_->client().ChannelStates()) out += line + "\n";
  return out;
}

std::string Daemon::Prometheus() {
  MetricsSnapshot m;
  m.node = node_name_;
  if (http_) m.http = &http_->stats();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, r] : running_) m.job_buffers.emplace_back(id, r->BufferMetrics());
  }
  m.pool = env_->pool()->Stats();
  if (env_->server()) {
    m.server = &env_->server()->stats();
    m.served = env_->server()->metrics().get();
  }
  m.opened = env_->client().metrics().get();
  m.jobs = Counters();
  ReadRss(&m.rss_bytes, &m.peak_rss_bytes);
  std::string text = RenderPrometheus(m);
  if (store_) text += RenderStoreMetrics(node_name_, store_->Stats());
  if (local_writers_) text += RenderLocalWriterMetrics(node_name_, local_writers_->Stats());
  return text;
}

namespace {
control::JobSummary Summarize(const control::JobStatus& st) {
  control::JobSummary s;
  s.job_id = st.job_id;
  s.state = st.state;
  s.seconds = st.seconds;
  s.error = st.error;
  s.totals = st.note.empty() ? control::ComputeTotals(st) : st.totals;
  return s;
}
}  // namespace

control::JobList Daemon::ListJobs() {
  control::JobList list;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, runner] : running_) list.jobs.push_back(Summarize(runner->Status()));
  for (auto it = ended_order_.rbegin(); it != ended_order_.rend(); ++it) {
    if (auto e = ended_.find(*it); e != ended_.end()) {
      list.jobs.push_back(Summarize(e->second.status));
    }
  }
  list.total = static_cast<uint32_t>(list.jobs.size());
  return list;
}

control::NodeStats Daemon::Stats() {
  control::NodeStats s;
  s.node_name = node_name_;
  const buffer::NetworkBufferPoolStats p = env_->pool()->Stats();
  s.total_segments = p.total;
  s.available_segments = p.available;
  s.segment_size = p.segment_size;
  s.buffers_per_channel = env_->config().options.credit.buffers_per_channel;
  s.floating_per_gate = env_->config().options.credit.floating_per_gate;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.running_jobs = static_cast<uint32_t>(running_.size());
  }
  ReadRss(&s.rss_bytes, &s.peak_rss_bytes);
  s.protocol_errors = ProtocolErrors(*env_->client().metrics());
  s.connections = env_->client().connection_count();
  if (env_->server()) {
    s.protocol_errors += ProtocolErrors(*env_->server()->metrics());
    s.connections += env_->server()->connection_count();
  }
  s.prometheus = Prometheus();
  s.credit_dump = CreditDump();
  return s;
}

uint32_t Daemon::AwaitCancelled(std::map<std::string, std::unique_ptr<JobRunner>>& runners) {
  // A cancelled task wakes at once unless it is blocked in a system call (e.g. a read that
  // does not return): such a thread is not waited for beyond this.
  constexpr std::chrono::milliseconds kStuckWait{3000};
  const auto deadline = std::chrono::steady_clock::now() + kStuckWait;
  uint32_t stuck = 0;
  for (auto& [id, r] : runners) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (r->Wait(std::max(left, std::chrono::milliseconds(0)))) continue;
    const uint32_t n = r->running_tasks();
    stuck += n;
    Log(LogLevel::kError, "job '" + id + "': " + std::to_string(n) + " task threads did not "
                              "stop after the cancel (blocked in I/O?); not waiting for them");
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, r] : runners) {
    RecordEnded(r->Status(), r->spec().token);
    if (r->running_tasks() > 0) stuck_.push_back(std::move(r));
  }
  return stuck;
}

// --- External shuffle: the local write path (issue 13, extwrite) ---
Status Daemon::StartLocalWriters(const DaemonConfig& config, store::PartitionStore* store) {
  if (config.local_socket == "off" || store == nullptr) return Status::Ok();
  LocalWriterServiceOptions o;
  o.socket_path = config.local_socket.empty()
                      ? client::LocalSocketPath(config.state_dir, env_->port())
                      : config.local_socket;
  o.auth = env_->config().auth;
  o.any_uid = config.local_socket_any_uid;
  o.writer_credit = config.writer_credit;
  o.max_writer_credit = config.writer_max_credit;
  o.max_reserved_segments = std::max<uint64_t>(env_->pool()->total_segments() / 2, 1);
  o.node_name = node_name_;
  writer_sink_ = MakeStoreSink(store);
  auto service = LocalWriterService::Start(o, env_->pool(), writer_sink_.get());
  if (!service.ok()) {
    return Status(service.status().code(), "local writers: " + service.status().message());
  }
  local_writers_ = std::move(*service);
  Log(LogLevel::kInfo, "local writers on " + o.socket_path + " (credit " +
                           std::to_string(o.writer_credit) + " segments per writer)");
  return Status::Ok();
}

LocalWriterStats Daemon::LocalWriters() const {
  return local_writers_ ? local_writers_->Stats() : LocalWriterStats{};
}

std::string Daemon::local_socket() const {
  return local_writers_ ? local_writers_->socket_path() : std::string();
}

ShutdownReport Daemon::Shutdown(std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> once(shutdown_mu_);
  if (shutdown_) return *shutdown_;
  shutting_down_.store(true, std::memory_order_release);
  ShutdownReport report;
  if (!env_) {
    shutdown_ = report;
    return report;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_jobs_ = false;
  }
  if (env_->server()) env_->server()->StopListening();
  if (local_writers_) local_writers_->Stop();  // uncommitted local writers are aborted
  // Let running jobs end on their own; the control thread reaps them meanwhile.
  const auto deadline = std::chrono::steady_clock::now() + grace;
  uint32_t at_start = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    at_start = static_cast<uint32_t>(running_.size());
  }
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (running_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    report.jobs_cancelled = static_cast<uint32_t>(running_.size());
    report.jobs_finished = at_start - report.jobs_cancelled;
    for (auto& [id, r] : running_) {
      Log(LogLevel::kWarn, "job '" + id + "' cancelled: " + node_name_ + " is shutting down");
      r->Cancel("daemon " + node_name_ + " shutting down");
    }
    stopping_ = true;
    cv_.notify_all();
  }
  if (control_thread_.joinable()) control_thread_.join();
  // Whatever the control thread did not reap (cancelled just now) ends here.
  std::map<std::string, std::unique_ptr<JobRunner>> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rest.swap(running_);
    for (auto& q : queue_) {
      q.reply(MessageType::kControlResult,
              control::EncodeControlResult(Status(StatusCode::kClosed, node_name_ + " stopped")));
    }
    queue_.clear();
  }
  report.stuck_tasks = AwaitCancelled(rest);
  rest.clear();
  // Its handlers read env_ and http_: joined before the pointer changes.
  if (http_) http_->Stop();
  http_.reset();
  env_->Stop();
  // Connections are closed (their views released): the store's buffers go home now.
  env_->registry().SetViewProvider(std::string(store::kExternalPartitionPrefix), nullptr);
  store_.reset();
  const buffer::NetworkBufferPoolStats p = env_->pool()->Stats();
  report.leaked_segments = p.total - p.available;
  shutdown_ = report;
  return report;
}

}  // namespace sluice::daemon
