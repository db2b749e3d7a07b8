#include "tools/daemon/daemon.h"

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

Daemon::Daemon(const DaemonConfig& config) : config_(config) {}

Result<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config) {
  if (Status st = Validate(config); !st.ok()) return st;
  std::unique_ptr<Daemon> d(new Daemon(config));
  shuffle::EnvironmentConfig ec;
  ec.memory.network_memory = config.network_memory;
  ec.memory.segment_size = config.segment_size;
  ec.memory.preallocate = config.preallocate;
  ec.options.credit.buffers_per_channel = config.buffers_per_channel;
  ec.options.credit.floating_per_gate = config.floating_per_gate;
  ec.options.buffer_timeout = std::chrono::milliseconds(config.buffer_timeout_ms);
  ec.options.checksums = config.checksums;
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
  ec.node_name = config.node_name.empty() ? "sluiced" : config.node_name;
  ec.control = d.get();
  if (!config.auth_secret_file.empty()) {
    auto secret = shuffle::auth::ReadSecretFile(config.auth_secret_file);
    if (!secret.ok()) return secret.status();
    ec.auth.secret = *secret;
  }
  ec.auth.off = ec.auth.secret.empty();  // interim until state_dir/auth land in this file
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
  d->control_thread_ = std::thread([p = d.get()] { p->ControlLoop(); });
  return d;
}

Daemon::~Daemon() { Shutdown(std::chrono::milliseconds(0)); }

void Daemon::OnControlRequest(MessageType type, std::span<const uint8_t> message,
                              const std::string& peer, shuffle::ControlReply reply) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) {
    reply(MessageType::kControlResult,
          control::EncodeControlResult(Status(StatusCode::kClosed, node_name_ + " is stopping")));
    return;
  }
  queue_.push_back(Request{type, std::vector<uint8_t>(message.begin(), message.end()), peer,
                           std::move(reply)});
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

void Daemon::Serve(Request& r) {
  const std::span<const uint8_t> msg(r.message);
  switch (r.type) {
    case MessageType::kSubmitJob: {
      auto m = schema::ParseSubmitJob(msg);
      if (!m.ok()) {
        r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
        return;
      }
      control::JobSpec spec = control::DecodeJobSpec(*(*m)->spec());
      const uint32_t node = (*m)->node_index();
      Status st;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!accepting_jobs_) {
          st = Status(StatusCode::kClosed, node_name_ + " is shutting down; submit elsewhere");
        } else if (running_.count(spec.job_id) != 0 || ended_.count(spec.job_id) != 0) {
          st = InvalidArgument("job id '" + spec.job_id + "' is already known to " +
                               node_name_ + "; use a new id");
        } else if (spec.checksums && !config_.checksums) {
          // Buffer checksums are a property of the daemon's connections, not of one job.
          st = InvalidArgument("job '" + spec.job_id + "' asks for buffer checksums but " +
                               node_name_ + " runs without them; start every sluiced with " +
                               "--checksums (checksums = true)");
        } else if (running_.size() >= kMaxRunningJobs) {
          st = Status(StatusCode::kResourceExhausted,
                      node_name_ + " already runs " + std::to_string(running_.size()) +
                          " jobs; wait for one to end");
        }
      }
      if (st.ok()) {
        auto runner = JobRunner::Start(env_.get(), spec, node);
        if (runner.ok()) {
          Log(LogLevel::kInfo, "job '" + spec.job_id + "' from " + r.peer + " started on " +
                                   node_name_ + " as node " + std::to_string(node));
          std::lock_guard<std::mutex> lock(mu_);
          running_[spec.job_id] = std::move(*runner);
        } else {
          st = runner.status();
        }
      }
      if (!st.ok()) {
        Log(LogLevel::kWarn, "job '" + spec.job_id + "' from " + r.peer + " refused: " +
                                 st.message());
      }
      r.reply(MessageType::kControlResult, control::EncodeControlResult(st));
      return;
    }
    case MessageType::kJobStatusRequest: {
      auto m = schema::ParseJobStatusRequest(msg);
      if (!m.ok()) {
        r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
        return;
      }
      const std::string id = (*m)->job_id()->str();
      control::JobStatus st;
      st.job_id = id;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (auto it = running_.find(id); it != running_.end()) {
          st = it->second->Status();
        } else if (auto e = ended_.find(id); e != ended_.end()) {
          st = e->second;
        }
      }
      r.reply(MessageType::kJobStatusResponse, control::EncodeJobStatus(st));
      return;
    }
    case MessageType::kCancelJob: {
      auto m = schema::ParseCancelJob(msg);
      if (!m.ok()) {
        r.reply(MessageType::kControlResult, control::EncodeControlResult(m.status()));
        return;
      }
      const std::string id = (*m)->job_id()->str();
      const std::string reason = (*m)->reason() ? (*m)->reason()->str() : "cancelled";
      Status st;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = running_.find(id);
        if (it != running_.end()) {
          Log(LogLevel::kInfo, "job '" + id + "' cancelled by " + r.peer + ": " + reason);
          it->second->Cancel(reason);
        } else if (ended_.count(id) == 0) {
          st = NotFound("job '" + id + "' is not known to " + node_name_);
        }
      }
      r.reply(MessageType::kControlResult, control::EncodeControlResult(st));
      return;
    }
    case MessageType::kStatsRequest: {
      r.reply(MessageType::kStatsResponse, control::EncodeStats(Stats()));
      return;
    }
    case MessageType::kCutConnections: {
      const std::string why = "connection cut by fault injection on " + node_name_;
      uint32_t n = env_->server() ? env_->server()->CutDataConnections(why) : 0;
      n += env_->client().CutConnections(why);
      Log(LogLevel::kWarn, "fault injection from " + r.peer + ": cut " + std::to_string(n) +
                               " data connections");
      r.reply(MessageType::kControlResult, control::EncodeControlResult(Status::Ok(), n));
      return;
    }
    default:
      r.reply(MessageType::kControlResult,
              control::EncodeControlResult(InvalidArgument(
                  std::string(schema::MessageTypeName(r.type)) + " is not a request")));
      return;
  }
}

void Daemon::RecordEnded(const control::JobStatus& st) {
  // mu_ held.
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
  ended_[st.job_id] = st;
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
      RecordEnded(st);
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
  m.pool = env_->pool()->Stats();
  if (env_->server()) {
    m.server = &env_->server()->stats();
    m.served = env_->server()->metrics().get();
  }
  m.opened = env_->client().metrics().get();
  m.jobs = Counters();
  ReadRss(&m.rss_bytes, &m.peak_rss_bytes);
  return RenderPrometheus(m);
}

control::NodeStats Daemon::Stats() {
  control::NodeStats s;
  s.node_name = node_name_;
  const buffer::NetworkBufferPoolStats p = env_->pool()->Stats();
  s.total_segments = p.total;
  s.available_segments = p.available;
  s.segment_size = p.segment_size;
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

ShutdownReport Daemon::Shutdown(std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> once(shutdown_mu_);
  if (shutdown_) return *shutdown_;
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
    for (auto& [id, r] : running_) r->Wait(std::chrono::seconds(30));
    for (auto& [id, r] : running_) RecordEnded(r->Status());
    rest.swap(running_);
    for (auto& q : queue_) {
      q.reply(MessageType::kControlResult,
              control::EncodeControlResult(Status(StatusCode::kClosed, node_name_ + " stopped")));
    }
    queue_.clear();
  }
  rest.clear();
  env_->Stop();
  const buffer::NetworkBufferPoolStats p = env_->pool()->Stats();
  report.leaked_segments = p.total - p.available;
  shutdown_ = report;
  return report;
}

}  // namespace sluice::daemon
