#include "tools/daemon/job_runner.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "shuffle/record_reader.h"
#include "shuffle/record_serializer.h"
#include "shuffle/record_writer.h"
#include "tools/daemon/job_files.h"
#include "tools/daemon/job_records.h"

namespace sluice::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using control::JobKind;
using control::JobSpec;
using control::Pattern;

// A blocked read is woken by InputGate::Cancel when the job stops; this only bounds one wait.
constexpr std::chrono::milliseconds kReadSlice{1000};
// A finished producer waits for its consumers on ResultPartition::WaitConsumerEvent (woken by
// every consumer done or gone, and by Abort); this only bounds one wait.
constexpr std::chrono::milliseconds kConsumedWaitSlice{1000};
// Records between two looks at whether the producer's consumers are still there (mask).
constexpr uint64_t kCheckEvery = (1u << 13) - 1;
constexpr uint32_t kMaxTasks = 1u << 16;
constexpr uint32_t kMaxGeneratedRecord = 64u << 20;

std::string PartitionId(const std::string& job, uint32_t producer) {
  return job + "/p" + std::to_string(producer);
}

std::string Errno(int e) { return std::strerror(e); }

std::string Bytes(uint64_t bytes) {
  char out[64];
  if (bytes >= (1u << 20)) {
    std::snprintf(out, sizeof(out), "%.1f MiB", static_cast<double>(bytes) / (1u << 20));
  } else if (bytes >= 1024) {
    std::snprintf(out, sizeof(out), "%.1f KiB", static_cast<double>(bytes) / 1024);
  } else {
    std::snprintf(out, sizeof(out), "%llu bytes", static_cast<unsigned long long>(bytes));
  }
  return out;
}

// "host:port" or "[v6]:port".
Result<transport::Endpoint> ParseEndpoint(const std::string& s) {
  const size_t colon = s.rfind(':');
  auto bad = [&] {
    return InvalidArgument("node address '" + s + "' is not host:port (e.g. 127.0.0.1:7400)");
  };
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) return bad();
  std::string host = s.substr(0, colon);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return bad();
  uint32_t port = 0;
  for (size_t i = colon + 1; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return bad();
    port = port * 10 + static_cast<uint32_t>(s[i] - '0');
    if (port > 65535) return bad();
  }
  if (port == 0) return bad();
  return transport::Endpoint{host, static_cast<uint16_t>(port)};
}

// 1 to 128 characters of [A-Za-z0-9._-], and not "." or "..": job ids name files (token files,
// consumer output files), so none may be a directory's own name.
bool ValidJobId(const std::string& id) {
  if (id.empty() || id.size() > 128 || id == "." || id == "..") return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

uint32_t Subpartitions(const JobSpec& spec) {
  return spec.pattern == Pattern::kPointwise ? 1
                                             : static_cast<uint32_t>(spec.consumer_nodes.size());
}

// The consumer that reads subpartition `sub` of producer `producer`'s partition.
uint32_t ConsumerOf(const JobSpec& spec, uint32_t producer, uint32_t sub) {
  return spec.pattern == Pattern::kPointwise ? producer : sub;
}

// Producers whose partitions consumer `c` reads, in gate channel order.
std::vector<uint32_t> ProducersOf(const JobSpec& spec, uint32_t c) {
  if (spec.pattern == Pattern::kPointwise) return {c};
  std::vector<uint32_t> out(spec.producer_nodes.size());
  for (uint32_t p = 0; p < out.size(); ++p) out[p] = p;
  return out;
}

std::string FormatSeconds(double s) {
  char out[32];
  std::snprintf(out, sizeof(out), "%g s", s);
  return out;
}

// At most `bytes_per_second` on average, bursts up to kBurst: sleeps when the bucket is empty.
class TokenBucket {
 public:
  explicit TokenBucket(double bytes_per_second)
      : rate_(bytes_per_second), tokens_(kBurst), last_(Clock::now()) {}

  // Takes n bytes' worth of tokens; sleeps (in short steps, watching `stop`) while in debt.
  void Take(uint64_t n, const std::atomic<bool>& stop) {
    Refill();
    tokens_ -= static_cast<double>(n);
    while (tokens_ < 0 && !stop.load(std::memory_order_relaxed)) {
      const double wait_s = std::min(-tokens_ / rate_, 0.05);
      std::this_thread::sleep_for(std::chrono::duration<double>(wait_s));
      Refill();
    }
  }

 private:
  static constexpr double kBurst = 64 * 1024;
  void Refill() {
    const Clock::time_point now = Clock::now();
    tokens_ =
        std::min(kBurst, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }
  const double rate_;
  double tokens_;
  Clock::time_point last_;
};

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f != nullptr) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

using Counter = std::atomic<uint64_t>;

}  // namespace

// The job's state lives outside JobRunner so that `Status` in its code names the error type,
// not JobRunner::Status().
namespace job_internal {

// Counters are written by the task's thread and read by Status(); strings and the release flag
// are guarded by RunningJob::mu. Each task is its own allocation so threads do not share lines.
struct alignas(64) ProducerTask {
  explicit ProducerTask(uint32_t i, uint32_t subpartitions)
      : index(i), per_consumer(subpartitions) {}
  const uint32_t index;
  std::shared_ptr<shuffle::ResultPartition> partition;
  std::string input_path;  // kFilePartition: relative to JobRunnerOptions::input_dir
  Counter records{0};
  Counter bytes{0};
  Counter bad_lines{0};
  std::vector<Counter> per_consumer;  // by subpartition
  std::atomic<bool> done{false};
  std::string error;      // GUARDED_BY(RunningJob::mu)
  bool released = false;  // GUARDED_BY(RunningJob::mu)
};

struct alignas(64) ConsumerTask {
  explicit ConsumerTask(uint32_t i, uint32_t producers) : index(i), per_producer(producers) {}
  const uint32_t index;
  std::unique_ptr<shuffle::InputGate> gate;  // consumer thread only once started
  std::vector<uint32_t> channel_producer;    // gate channel -> producer
  File output;                               // kFilePartition, opened on the consumer thread
  std::string output_path;                   // relative to JobRunnerOptions::output_dir
  double throttle_bytes_per_second = 0;  // 0: not throttled
  Counter records{0};
  Counter bytes{0};
  Counter duplicated{0};
  Counter reordered{0};
  Counter corrupted{0};
  std::vector<Counter> per_producer;
  std::atomic<bool> done{false};
  std::string error;  // GUARDED_BY(RunningJob::mu)
};

class RunningJob {
 public:
  RunningJob(shuffle::ShuffleEnvironment* e, const JobSpec& s, uint32_t n,
             const JobRunnerOptions& o)
      : env(e), spec(s), node(n), options(o), start(Clock::now()) {}
  ~RunningJob();

  // Stops the job: the first call wins and decides the outcome (cancelled, or failed with
  // `error`, also stored in *task_error). Wakes blocked writers, fails and releases the
  // partitions, and cancels the consumers' gates (a blocked read returns Cancelled at once);
  // consumers close their gates themselves (a gate is read and closed by one thread).
  void Abort(const std::string& error, bool cancel, std::string* task_error);
  // Unregisters and releases a producer's partition, once.
  void ReleasePartition(ProducerTask& t);
  void TaskEnded();

  void RunProducer(ProducerTask& t);
  Status ProducerBody(ProducerTask& t);
  Status ProduceGenerated(ProducerTask& t);
  Status ProduceFile(ProducerTask& t);
  Status CheckConsumers(ProducerTask& t, bool* all_consumed);
  Status AwaitConsumed(ProducerTask& t);
  void RunConsumer(ConsumerTask& t);
  Status ConsumerBody(ConsumerTask& t);
  Status OpenOutput(ConsumerTask& t);
  // Starts every task's thread and the watchdog. A thread that cannot be started fails the job
  // (the tasks not started count as ended); never throws.
  void StartThreads();
  // Creates this node's partitions (registered with the job's token) and input gates. May
  // throw std::system_error (a partition's flusher thread) or std::bad_alloc.
  Status CreatePartitionsAndGates(const std::vector<transport::Endpoint>& endpoints);
  Status ConsumeRecord(ConsumerTask& t, std::span<const uint8_t> data, uint32_t channel,
                       std::vector<SequenceTracker>& trackers);
  void RunWatchdog();

  shuffle::ShuffleEnvironment* const env;
  const JobSpec spec;
  const uint32_t node;
  const JobRunnerOptions options;
  const Clock::time_point start;
  std::vector<std::unique_ptr<ProducerTask>> producers;  // the ones on this node
  std::vector<std::unique_ptr<ConsumerTask>> consumers;
  std::vector<std::thread> threads;
  std::thread watchdog;
  std::atomic<bool> stop{false};

  mutable std::mutex mu;
  std::condition_variable ended;
  uint32_t running = 0;         // GUARDED_BY(mu): tasks not ended
  Clock::time_point end;        // GUARDED_BY(mu): when running went to 0
  std::string first_error;      // GUARDED_BY(mu)
  bool cancelled = false;       // GUARDED_BY(mu)
  std::string cancel_reason;    // GUARDED_BY(mu)
  sluice::Status abort_reason;  // GUARDED_BY(mu): what the partitions fail with once stopped
};

RunningJob::~RunningJob() {
  // Only what Start created before it failed is left here: running tasks released theirs.
  for (auto& p : producers) ReleasePartition(*p);
  for (auto& c : consumers) {
    if (c->gate) c->gate->Close();
  }
}

void RunningJob::Abort(const std::string& error, bool cancel, std::string* task_error) {
  const std::string verb = cancel ? "was cancelled" : "failed";
  {
    std::lock_guard lock(mu);
    if (running == 0 || stop.load()) return;
    if (cancel) {
      cancelled = true;
      cancel_reason = error;
    } else {
      first_error = error;
      if (task_error != nullptr) *task_error = error;
    }
    abort_reason = sluice::Status(
        StatusCode::kCancelled, "job '" + spec.job_id + "' " + verb + " on node " +
                                    std::to_string(node) + " (" + spec.nodes[node] + "): " + error);
    stop.store(true);
  }
  ended.notify_all();  // the watchdog
  for (auto& c : consumers) {
    if (c->gate) c->gate->Cancel();
  }
  for (auto& p : producers) ReleasePartition(*p);
}

void RunningJob::ReleasePartition(ProducerTask& t) {
  sluice::Status why;
  {
    std::lock_guard lock(mu);
    if (t.released || !t.partition) return;
    t.released = true;
    if (stop.load()) why = abort_reason;
  }
  // Failing first wakes a blocked writer and tells remote readers why, rather than "released".
  // A partition consumed to its end is not affected (its readers are gone).
  if (!why.ok()) t.partition->Fail(why);
  env->ReleasePartition(t.partition->id());
  t.partition->Release();  // idempotent; also when someone else had unregistered the id
}

void RunningJob::TaskEnded() {
  std::lock_guard lock(mu);
  if (--running == 0) {
    end = Clock::now();
    ended.notify_all();
  }
}

// What an exception in a task becomes: the job fails with it, the daemon stays up.
Status FromException(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory (std::bad_alloc) in the task's thread");
  } catch (const std::exception& ex) {
    return InternalError(std::string("exception in the task's thread: ") + ex.what());
  } catch (...) {
    return InternalError("unknown exception in the task's thread");
  }
}

void RunningJob::RunProducer(ProducerTask& t) {
  Status st;
  try {
    if (options.task_hook_for_testing) options.task_hook_for_testing();
    st = ProducerBody(t);
  } catch (...) {
    st = FromException(std::current_exception());
  }
  if (!st.ok() && !stop.load()) {
    Abort("producer " + std::to_string(t.index) + ": " + st.message(), false, &t.error);
  }
  ReleasePartition(t);
  TaskEnded();
}

Status RunningJob::ProducerBody(ProducerTask& t) {
  Status st = spec.kind == JobKind::kGenerated ? ProduceGenerated(t) : ProduceFile(t);
  if (st.ok()) st = t.partition->Finish();
  if (st.ok()) {
    t.done.store(true);
    st = AwaitConsumed(t);
  }
  return st;
}

Status RunningJob::ProduceGenerated(ProducerTask& t) {
  SplitMix64 rng(ProducerStreamSeed(spec.seed, t.index));
  std::optional<ZipfSampler> zipf;
  if (spec.keys == control::KeyDistribution::kZipf) zipf.emplace(spec.key_count, spec.zipf_s);
  const uint32_t subs = t.partition->num_subpartitions();
  const uint64_t size_range = uint64_t{spec.record_size_max} - spec.record_size_min + 1;
  std::vector<uint8_t> record(spec.record_size_max);
  std::vector<uint64_t> sequence(subs, 0);
  uint32_t round_robin = 0;
  for (uint64_t i = 0; i < spec.records_per_producer; ++i) {
    if ((i & 255) == 0 && stop.load(std::memory_order_relaxed)) {
      return Cancelled("producer " + std::to_string(t.index) + " stopped");
    }
    if ((i & kCheckEvery) == kCheckEvery) {
      bool all = false;
      if (Status st = CheckConsumers(t, &all); !st.ok()) return st;
    }
    const uint64_t key = zipf ? zipf->Sample(rng) : rng.Below(spec.key_count);
    const auto size = static_cast<uint32_t>(spec.record_size_min + rng.Below(size_range));
    uint32_t sub = 0;
    if (subs > 1) {
      if (spec.partitioner == control::Partitioner::kRoundRobin) {
        sub = round_robin;
        round_robin = round_robin + 1 == subs ? 0 : round_robin + 1;
      } else {
        sub = shuffle::HashToSubpartition(shuffle::Mix64(key), subs);
      }
    }
    const std::span<uint8_t> out(record.data(), size);
    WriteGeneratedRecord(out, spec.seed, t.index, sequence[sub]++, key);
    if (Status st = t.partition->Emit(out, sub); !st.ok()) return st;
    t.records.fetch_add(1, std::memory_order_relaxed);
    t.bytes.fetch_add(size, std::memory_order_relaxed);
    t.per_consumer[sub].fetch_add(1, std::memory_order_relaxed);
  }
  return Status::Ok();
}

Status RunningJob::ProduceFile(ProducerTask& t) {
  auto fd = OpenInputBeneath(options.input_dir, t.input_path);
  if (!fd.ok()) return fd.status();
  LineReader lines(*fd, t.input_path, options.max_line_bytes);
  const auto consumers_n = static_cast<uint32_t>(spec.consumer_nodes.size());
  while (true) {
    std::string_view text;
    auto more = lines.Next(&text);
    if (!more.ok()) return more.status();
    if (!*more) return Status::Ok();
    if (stop.load(std::memory_order_relaxed)) {
      return Cancelled("producer " + std::to_string(t.index) + " stopped");
    }
    if ((t.records.load(std::memory_order_relaxed) & kCheckEvery) == kCheckEvery) {
      bool all = false;
      if (Status st = CheckConsumers(t, &all); !st.ok()) return st;
    }
    std::string_view key;
    if (!LineKey(text, spec.delimiter, spec.key_field, &key)) {
      t.bad_lines.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    const uint32_t c = ConsumerOfKey(key, consumers_n);
    Status st = t.partition->Emit({reinterpret_cast<const uint8_t*>(text.data()), text.size()}, c);
    if (!st.ok()) return st;
    t.records.fetch_add(1, std::memory_order_relaxed);
    t.bytes.fetch_add(text.size(), std::memory_order_relaxed);
    t.per_consumer[c].fetch_add(1, std::memory_order_relaxed);
  }
}

// The producer reads its partition's stats (a lock per subpartition) after every consumer
// event once it finished (see AwaitConsumed), and now and then while it writes.
// A subpartition whose view was released before the end of partition was polled lost its
// reader (the consumer failed, was cancelled or its connection died): the partition drops what
// is written there, so the producer fails rather than write into the void.
Status RunningJob::CheckConsumers(ProducerTask& t, bool* all_consumed) {
  const shuffle::ResultPartitionStats stats = t.partition->Stats();
  *all_consumed = true;
  for (uint32_t s = 0; s < stats.subpartitions.size(); ++s) {
    const shuffle::SubpartitionStats& sp = stats.subpartitions[s];
    if (sp.consumed) continue;
    *all_consumed = false;
    if (!sp.view_released) continue;
    const uint32_t c = ConsumerOf(spec, t.index, s);
    return ClosedError("consumer " + std::to_string(c) + " (node " +
                       std::to_string(spec.consumer_nodes[c]) + ", " +
                       spec.nodes[spec.consumer_nodes[c]] + ") went away before reading " +
                       "subpartition " + std::to_string(s) + " of partition '" + t.partition->id() +
                       "' to its end (" + std::to_string(sp.dropped_records) + " records dropped)");
  }
  return Status::Ok();
}

Status RunningJob::AwaitConsumed(ProducerTask& t) {
  while (true) {
    // Read the counter first: an event after it (a consumer done or gone, or Abort failing the
    // partition) ends the wait below.
    const uint64_t seen = t.partition->consumer_events();
    bool all = false;
    if (Status st = CheckConsumers(t, &all); !st.ok() || all) return st;
    if (stop.load()) return Cancelled("producer " + std::to_string(t.index) + " stopped");
    t.partition->WaitConsumerEvent(seen, kConsumedWaitSlice);
  }
}

Status RunningJob::ConsumeRecord(ConsumerTask& t, std::span<const uint8_t> data, uint32_t channel,
                                 std::vector<SequenceTracker>& trackers) {
  const uint32_t producer = t.channel_producer[channel];
  if (spec.kind == JobKind::kFilePartition) {
    if (std::fwrite(data.data(), 1, data.size(), t.output.get()) != data.size() ||
        std::fputc('\n', t.output.get()) == EOF) {
      return IoError("writing '" + t.output_path + "': " + Errno(errno));
    }
  } else {
    GeneratedRecord r;
    if (!ParseGeneratedRecord(data, &r) || r.producer != producer ||
        r.sequence >= spec.records_per_producer || r.key >= spec.key_count) {
      t.corrupted.fetch_add(1, std::memory_order_relaxed);
      return Status::Ok();
    }
    switch (trackers[channel].Observe(r.sequence)) {
      case SequenceTracker::Outcome::kDuplicate:
        t.duplicated.fetch_add(1, std::memory_order_relaxed);
        return Status::Ok();
      case SequenceTracker::Outcome::kReordered:
        t.reordered.fetch_add(1, std::memory_order_relaxed);
        break;
      case SequenceTracker::Outcome::kInOrder:
        break;
    }
  }
  t.records.fetch_add(1, std::memory_order_relaxed);
  t.bytes.fetch_add(data.size(), std::memory_order_relaxed);
  t.per_producer[producer].fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

Status RunningJob::OpenOutput(ConsumerTask& t) {
  const std::string name = spec.job_id + "-part-" + std::to_string(t.index) + ".txt";
  auto fd = CreateOutputBeneath(options.output_dir, spec.output_dir, name);
  if (!fd.ok()) return fd.status();
  t.output.reset(::fdopen(*fd, "we"));
  if (!t.output) {
    const int e = errno;
    ::close(*fd);
    return IoError("output file '" + t.output_path + "': fdopen: " + Errno(e));
  }
  return Status::Ok();
}

Status RunningJob::ConsumerBody(ConsumerTask& t) {
  if (spec.kind == JobKind::kFilePartition) {
    if (Status st = OpenOutput(t); !st.ok()) return st;
  }
  // A record longer than the job declares fails its channel instead of being reserved for
  // (generated: record_size_max; files: the longest line a producer may send).
  const uint64_t max_record =
      spec.kind == JobKind::kGenerated ? spec.record_size_max : options.max_line_bytes;
  t.gate->SetMaxRecordSize(static_cast<uint32_t>(
      std::min<uint64_t>(max_record, shuffle::kMaxRecordLength)));
  shuffle::RecordReader reader(t.gate.get());
  std::vector<SequenceTracker> trackers(t.channel_producer.size());
  std::optional<TokenBucket> throttle;
  if (t.throttle_bytes_per_second > 0) throttle.emplace(t.throttle_bytes_per_second);
  while (!stop.load(std::memory_order_relaxed)) {
    auto item = reader.Next(kReadSlice);
    if (!item.ok()) return item.status();
    if (item->kind == shuffle::RecordReader::Kind::kEndOfInput) {
      t.done.store(true);
      return Status::Ok();
    }
    if (item->kind != shuffle::RecordReader::Kind::kRecord) continue;
    if (Status st = ConsumeRecord(t, item->data, item->channel, trackers); !st.ok()) return st;
    if (throttle) throttle->Take(item->data.size(), stop);
  }
  return Status::Ok();
}  // the reader holds a buffer until it is destroyed

void RunningJob::RunConsumer(ConsumerTask& t) {
  Status st;
  try {
    if (options.task_hook_for_testing) options.task_hook_for_testing();
    st = ConsumerBody(t);
  } catch (...) {
    st = FromException(std::current_exception());
  }
  // The job fails with this consumer's error before its gate closes: closing first would let a
  // producer fail the job with "consumer went away" instead of the reason.
  if (!st.ok() && !stop.load()) {
    Abort("consumer " + std::to_string(t.index) + ": " + st.message(), false, &t.error);
  }
  t.gate->Close();
  if (t.output && std::fclose(t.output.release()) != 0 && st.ok() && t.done.load()) {
    t.done.store(false);
    st = IoError("closing '" + t.output_path + "': " + Errno(errno));
    if (!stop.load()) {
      Abort("consumer " + std::to_string(t.index) + ": " + st.message(), false, &t.error);
    }
  }
  TaskEnded();
}

void RunningJob::StartThreads() {
  std::vector<std::function<void()>> bodies;
  std::vector<std::string> names;
  for (auto& t : producers) {
    bodies.emplace_back([this, p = t.get()] { RunProducer(*p); });
    names.push_back("producer " + std::to_string(t->index));
  }
  for (auto& t : consumers) {
    bodies.emplace_back([this, c = t.get()] { RunConsumer(*c); });
    names.push_back("consumer " + std::to_string(t->index));
  }
  size_t started = 0;
  std::string failure;
  for (; started < bodies.size(); ++started) {
    try {
      threads.emplace_back(std::move(bodies[started]));
    } catch (const std::system_error& e) {
      failure = "cannot start the thread of " + names[started] + ": " + e.what() + " (" +
                std::to_string(started) + " of " + std::to_string(bodies.size()) +
                " task threads started; the daemon's task or thread limit, e.g. RLIMIT_NPROC)";
      break;
    }
  }
  if (failure.empty() && !bodies.empty()) {
    try {
      watchdog = std::thread([this] { RunWatchdog(); });
    } catch (const std::system_error& e) {
      failure = std::string("cannot start the job's watchdog thread: ") + e.what();
    }
  }
  if (failure.empty()) return;
  Abort(failure, false, nullptr);
  for (size_t i = started; i < bodies.size(); ++i) {
    if (i >= producers.size()) consumers[i - producers.size()]->gate->Close();
    TaskEnded();
  }
}

Status RunningJob::CreatePartitionsAndGates(const std::vector<transport::Endpoint>& endpoints) {
  const std::string job = "job '" + spec.job_id + "': ";
  const uint32_t node_index = node;
  // Partitions first, so that this node's own gates find them and remote ones soon do.
  for (auto& t : producers) {
    auto part = env->CreatePartition(PartitionId(spec.job_id, t->index), Subpartitions(spec),
                                     spec.token);
    if (!part.ok()) {
      return Status(part.status().code(),
                    job + "producer " + std::to_string(t->index) + ": " + part.status().message());
    }
    t->partition = std::move(*part);
  }
  for (auto& t : consumers) {
    std::vector<shuffle::ChannelSpec> channels;
    for (uint32_t p : ProducersOf(spec, t->index)) {
      shuffle::ChannelSpec ch;
      ch.partition_id = PartitionId(spec.job_id, p);
      ch.subpartition = spec.pattern == Pattern::kPointwise ? 0 : t->index;
      ch.access_token = spec.token;
      if (spec.producer_nodes[p] != node_index) ch.remote = endpoints[spec.producer_nodes[p]];
      channels.push_back(std::move(ch));
      t->channel_producer.push_back(p);
    }
    auto gate = env->CreateInputGate(spec.job_id + "/c" + std::to_string(t->index), channels);
    if (!gate.ok()) {
      return Status(gate.status().code(),
                    job + "consumer " + std::to_string(t->index) + ": " + gate.status().message());
    }
    t->gate = std::move(*gate);
  }
  return Status::Ok();
}

void RunningJob::RunWatchdog() {
  std::unique_lock lock(mu);
  const auto deadline = start + std::chrono::milliseconds(spec.timeout_ms);
  if (ended.wait_until(lock, deadline, [&] { return running == 0 || stop.load(); })) return;
  lock.unlock();
  Abort("job '" + spec.job_id + "' timed out after " + FormatSeconds(spec.timeout_ms / 1000.0) +
            " on node " + std::to_string(node) + " (timeout_ms " + std::to_string(spec.timeout_ms) +
            ")",
        false, nullptr);
}

}  // namespace job_internal

struct JobRunner::State : job_internal::RunningJob {
  using RunningJob::RunningJob;
};

namespace {
// The file-partition fields: one relative input per producer, a relative output_dir.
Status ValidateFileJob(const JobSpec& spec, const std::string& job) {
  if (spec.input_files.size() != spec.producer_nodes.size()) {
    return InvalidArgument(job + "a file-partition job needs one input file per producer (" +
                           std::to_string(spec.producer_nodes.size()) + " producers, " +
                           std::to_string(spec.input_files.size()) + " input_files)");
  }
  if (spec.output_dir.empty()) return InvalidArgument(job + "output_dir is empty");
  if (sluice::Status st = CheckRelativePath(spec.output_dir, "output_dir"); !st.ok()) {
    return InvalidArgument(job + st.message());
  }
  for (size_t i = 0; i < spec.input_files.size(); ++i) {
    const std::string what = "input_files[" + std::to_string(i) + "]";
    if (sluice::Status st = CheckRelativePath(spec.input_files[i], what); !st.ok()) {
      return InvalidArgument(job + st.message());
    }
  }
  if (spec.pattern != Pattern::kAllToAll) {
    return InvalidArgument(job +
                           "a file-partition job partitions lines by key across all "
                           "consumers: pattern must be all-to-all");
  }
  if (spec.delimiter == '\n') return InvalidArgument(job + "delimiter cannot be a newline");
  return Status::Ok();
}
}  // namespace

JobBufferMetrics JobRunner::BufferMetrics() const {
  JobBufferMetrics m;
  for (const auto& p : state_->producers) {
    if (!p->partition) continue;
    const shuffle::ResultPartitionStats ps = p->partition->Stats();
    PartitionBufferMetrics pm;
    pm.partition = p->partition->id();
    for (const auto& sub : ps.subpartitions) pm.backlog += sub.backlog;
    pm.buffers_in_use = ps.pool.lent;
    pm.backpressure_ns = ps.backpressure_ns;
    m.partitions.push_back(std::move(pm));
  }
  for (const auto& c : state_->consumers) {
    if (!c->gate) continue;
    GateBufferMetrics gm;
    gm.gate = c->gate->name();
    for (const shuffle::ChannelState& ch : c->gate->ChannelStates()) {
      gm.exclusive += ch.exclusive;
      gm.floating += ch.floating;
      gm.queued += ch.queued;
      gm.sender_backlog += ch.sender_backlog;
    }
    m.gates.push_back(std::move(gm));
  }
  return m;
}

Status ValidateJobSpec(const JobSpec& spec) {
  if (!ValidJobId(spec.job_id)) {
    return InvalidArgument("job_id '" + spec.job_id +
                           "' must be 1 to 128 characters of [A-Za-z0-9._-], and not . or ..");
  }
  const std::string job = "job '" + spec.job_id + "': ";
  if (spec.nodes.empty())
    return InvalidArgument(job + "nodes is empty: list every node's host:port");
  for (const std::string& n : spec.nodes) {
    if (auto e = ParseEndpoint(n); !e.ok()) return InvalidArgument(job + e.status().message());
  }
  const size_t np = spec.producer_nodes.size();
  const size_t nc = spec.consumer_nodes.size();
  if (np == 0 || nc == 0) {
    return InvalidArgument(job + "needs at least one producer and one consumer (has " +
                           std::to_string(np) + " and " + std::to_string(nc) + ")");
  }
  if (np > kMaxTasks || nc > kMaxTasks) {
    return InvalidArgument(job + "at most " + std::to_string(kMaxTasks) +
                           " producers and consumers");
  }
  for (const auto* list : {&spec.producer_nodes, &spec.consumer_nodes}) {
    const char* what = list == &spec.producer_nodes ? "producer" : "consumer";
    for (size_t i = 0; i < list->size(); ++i) {
      if ((*list)[i] >= spec.nodes.size()) {
        return InvalidArgument(job + what + " " + std::to_string(i) + " is placed on node " +
                               std::to_string((*list)[i]) + ", but there are only " +
                               std::to_string(spec.nodes.size()) + " nodes (0.." +
                               std::to_string(spec.nodes.size() - 1) + ")");
      }
    }
  }
  if (spec.pattern == Pattern::kPointwise && np != nc) {
    return InvalidArgument(job + "pattern pointwise needs as many consumers as producers (has " +
                           std::to_string(np) + " producers and " + std::to_string(nc) +
                           " consumers): use all-to-all or change the counts");
  }
  if (spec.timeout_ms == 0) return InvalidArgument(job + "timeout_ms must be positive");
  if (spec.throttled_consumer >= 0) {
    if (static_cast<size_t>(spec.throttled_consumer) >= nc) {
      return InvalidArgument(job + "throttled_consumer " + std::to_string(spec.throttled_consumer) +
                             " is not a consumer (0.." + std::to_string(nc - 1) + ")");
    }
    if (!(spec.throttle_mib_per_second > 0) || !std::isfinite(spec.throttle_mib_per_second)) {
      return InvalidArgument(job +
                             "throttle_mib_per_second must be positive with a "
                             "throttled_consumer");
    }
  }
  if (spec.kind == JobKind::kGenerated) {
    if (spec.record_size_min < control::kMinGeneratedRecordSize) {
      return InvalidArgument(job + "record_size_min " + std::to_string(spec.record_size_min) +
                             " is below " + std::to_string(control::kMinGeneratedRecordSize) +
                             " bytes, the header (producer, sequence, key, size) and checksum");
    }
    if (spec.record_size_max < spec.record_size_min) {
      return InvalidArgument(job + "record_size_max " + std::to_string(spec.record_size_max) +
                             " is below record_size_min " + std::to_string(spec.record_size_min));
    }
    if (spec.record_size_max > kMaxGeneratedRecord) {
      return InvalidArgument(job + "record_size_max " + std::to_string(spec.record_size_max) +
                             " is above the limit of " + std::to_string(kMaxGeneratedRecord) +
                             " bytes");
    }
    if (spec.key_count == 0) return InvalidArgument(job + "key_count must be at least 1");
    if (spec.keys == control::KeyDistribution::kZipf &&
        (!(spec.zipf_s > 0) || !std::isfinite(spec.zipf_s))) {
      return InvalidArgument(job + "zipf_s must be a positive number (e.g. 1.1)");
    }
  } else if (spec.kind == JobKind::kFilePartition) {
    if (sluice::Status st = ValidateFileJob(spec, job); !st.ok()) return st;
  } else {
    return InvalidArgument(job + "unknown job kind " + std::to_string(static_cast<int>(spec.kind)));
  }
  return Status::Ok();
}

JobMemoryEstimate EstimateJobMemory(const JobSpec& spec, uint32_t node_index,
                                    const buffer::CreditOptions& options,
                                    uint64_t max_line_bytes) {
  JobMemoryEstimate out;
  const uint64_t per_task = spec.kind == JobKind::kGenerated
                                ? spec.record_size_max
                                : max_line_bytes + LineReader::kChunk;
  buffer::Topology topology;
  for (uint32_t p = 0; p < spec.producer_nodes.size(); ++p) {
    if (spec.producer_nodes[p] != node_index) continue;
    topology.partitions.push_back({PartitionId(spec.job_id, p), Subpartitions(spec)});
    out.heap_bytes += per_task;  // the record (or line) buffer
  }
  for (uint32_t c = 0; c < spec.consumer_nodes.size(); ++c) {
    if (spec.consumer_nodes[c] != node_index) continue;
    buffer::GateSpec gate;
    gate.name = spec.job_id + "/c" + std::to_string(c);
    for (uint32_t p : ProducersOf(spec, c)) {
      ++(spec.producer_nodes[p] == node_index ? gate.local_channels : gate.remote_channels);
    }
    topology.gates.push_back(std::move(gate));
    // Reassembly of one record spanning buffers: up to record_size_max (or a line).
    out.heap_bytes += spec.kind == JobKind::kGenerated ? spec.record_size_max : max_line_bytes;
  }
  out.network = buffer::EstimateNetworkMemory(topology, options);
  return out;
}

namespace {

// This node's share against what the pool can still admit (total minus what is admitted:
// pool minimums and exclusive segments already lent).
Status CheckMemory(const JobSpec& spec, uint32_t node, const shuffle::ShuffleEnvironment& env) {
  const buffer::CreditOptions& credit = env.config().options.credit;
  const buffer::MemoryEstimate e = EstimateJobMemory(spec, node, credit).network;
  const auto& pool = *env.pool();
  const uint64_t total = pool.total_segments();
  const uint64_t admitted = std::min<uint64_t>(pool.required_segments(), total);
  const uint64_t free = total - admitted;
  if (e.min_segments <= free) return Status::Ok();
  uint64_t partition_segments = 0;
  uint64_t gate_segments = 0;
  uint64_t partitions = 0;
  uint64_t gates = 0;
  for (const buffer::EstimateItem& i : e.items) {
    const bool is_gate = i.name.rfind("gate ", 0) == 0;
    (is_gate ? gate_segments : partition_segments) += i.min_segments;
    ++(is_gate ? gates : partitions);
  }
  const uint64_t seg = credit.segment_size;
  const uint64_t fit_bytes = (admitted + e.min_segments) * seg;
  const uint64_t fit_mib = (fit_bytes + (1u << 20) - 1) >> 20;
  return ResourceExhausted(
      "job '" + spec.job_id + "' needs " + Bytes(e.min_bytes) + " of network memory on node " +
      std::to_string(node) + " (" + std::to_string(partitions) +
      " output partitions: " + std::to_string(partition_segments) + " segments, " +
      std::to_string(gates) + " input gates: " + std::to_string(gate_segments) + " segments; " +
      std::to_string(e.min_segments) + " segments of " + Bytes(seg) + "; " +
      Bytes(e.recommended_bytes) + " recommended), this daemon has " + Bytes(total * seg) + " (" +
      Bytes(free * seg) + " free): start sluiced with --network-memory " + std::to_string(fit_mib) +
      "m (network_memory) or lower buffers_per_channel/" + "floating_per_gate");
}

}  // namespace

Result<std::unique_ptr<JobRunner>> JobRunner::Start(shuffle::ShuffleEnvironment* env,
                                                    const JobSpec& spec, uint32_t node_index,
                                                    const JobRunnerOptions& options) {
  if (sluice::Status st = ValidateJobSpec(spec); !st.ok()) return st;
  const std::string job = "job '" + spec.job_id + "': ";
  if (node_index >= spec.nodes.size()) {
    return InvalidArgument(job + "node index " + std::to_string(node_index) +
                           " is not in nodes (0.." + std::to_string(spec.nodes.size() - 1) + ")");
  }
  std::vector<transport::Endpoint> endpoints;
  for (const std::string& n : spec.nodes) endpoints.push_back(*ParseEndpoint(n));
  if (env->port() != 0 && endpoints[node_index].port != env->port()) {
    return InvalidArgument(job + "node " + std::to_string(node_index) + " is " +
                           spec.nodes[node_index] + " in the job, but this daemon listens on " +
                           env->endpoint().ToString() + ": wrong node index or nodes list");
  }
  if (sluice::Status st = CheckMemory(spec, node_index, *env); !st.ok()) return st;
  const bool files = spec.kind == JobKind::kFilePartition;
  if (files && (options.input_dir.empty() || options.output_dir.empty())) {
    return InvalidArgument(job + "file-partition jobs are refused by this daemon: start sluiced "
                           "with " + (options.input_dir.empty() ? "--input-dir" : "--output-dir") +
                           " (input_dir / output_dir; job paths are relative to them)");
  }

  auto state = std::make_shared<State>(env, spec, node_index, options);
  const auto np = static_cast<uint32_t>(spec.producer_nodes.size());
  const auto nc = static_cast<uint32_t>(spec.consumer_nodes.size());

  for (uint32_t p = 0; p < np; ++p) {
    if (spec.producer_nodes[p] != node_index) continue;
    auto t = std::make_unique<job_internal::ProducerTask>(p, Subpartitions(spec));
    if (files) t->input_path = spec.input_files[p];  // opened on the producer's thread
    state->producers.push_back(std::move(t));
  }
  for (uint32_t c = 0; c < nc; ++c) {
    if (spec.consumer_nodes[c] != node_index) continue;
    auto t = std::make_unique<job_internal::ConsumerTask>(c, np);
    if (files) {  // created on the consumer's thread
      t->output_path = spec.output_dir + "/" + spec.job_id + "-part-" + std::to_string(c) + ".txt";
    }
    if (spec.throttled_consumer == static_cast<int32_t>(c)) {
      t->throttle_bytes_per_second = spec.throttle_mib_per_second * (1u << 20);
    }
    state->consumers.push_back(std::move(t));
  }

  sluice::Status created;
  try {
    created = state->CreatePartitionsAndGates(endpoints);
  } catch (const std::system_error& e) {
    created = ResourceExhausted(job + "cannot start a thread while creating its partitions "
                                "(an output flusher): " + e.what() +
                                " (the daemon's task or thread limit, e.g. RLIMIT_NPROC)");
  } catch (const std::bad_alloc&) {
    created = ResourceExhausted(job + "out of memory (std::bad_alloc) creating its partitions");
  }
  if (!created.ok()) return created;  // ~RunningJob releases what was created

  State* s = state.get();
  const auto tasks = static_cast<uint32_t>(s->producers.size() + s->consumers.size());
  s->running = tasks;                 // before any thread starts; read under s->mu afterwards
  if (tasks == 0) s->end = s->start;  // nothing on this node: done at once
  s->StartThreads();
  return std::unique_ptr<JobRunner>(new JobRunner(std::move(state)));
}

JobRunner::JobRunner(std::shared_ptr<State> state) : state_(std::move(state)) {}

JobRunner::~JobRunner() {
  Cancel("the job runner was destroyed");
  for (std::thread& t : state_->threads) t.join();
  if (state_->watchdog.joinable()) state_->watchdog.join();
}

void JobRunner::Cancel(const std::string& reason) { state_->Abort(reason, true, nullptr); }

bool JobRunner::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(state_->mu);
  return state_->ended.wait_for(lock, timeout, [&] { return state_->running == 0; });
}

const JobSpec& JobRunner::spec() const { return state_->spec; }

uint32_t JobRunner::running_tasks() const {
  std::lock_guard lock(state_->mu);
  return state_->running;
}

control::JobStatus JobRunner::Status() const {
  const State& s = *state_;
  control::JobStatus out;
  out.job_id = s.spec.job_id;
  std::lock_guard lock(s.mu);
  if (s.running > 0) {
    out.state = control::JobState::kRunning;
  } else if (s.cancelled) {
    out.state = control::JobState::kCancelled;
  } else if (!s.first_error.empty()) {
    out.state = control::JobState::kFailed;
  } else {
    out.state = control::JobState::kSucceeded;
  }
  out.error = s.cancelled ? "cancelled: " + s.cancel_reason : s.first_error;
  const Clock::time_point until = s.running > 0 ? Clock::now() : s.end;
  out.seconds = std::chrono::duration<double>(until - s.start).count();
  for (const auto& t : s.producers) {
    control::ProducerStatus p;
    p.index = t->index;
    p.done = t->done.load();
    p.error = t->error;
    p.records = t->records.load(std::memory_order_relaxed);
    p.bytes = t->bytes.load(std::memory_order_relaxed);
    p.bad_lines = t->bad_lines.load(std::memory_order_relaxed);
    for (const Counter& n : t->per_consumer) {
      p.records_per_consumer.push_back(n.load(std::memory_order_relaxed));
    }
    out.producers.push_back(std::move(p));
  }
  for (const auto& t : s.consumers) {
    control::ConsumerStatus c;
    c.index = t->index;
    c.done = t->done.load();
    c.error = t->error;
    c.records = t->records.load(std::memory_order_relaxed);
    c.bytes = t->bytes.load(std::memory_order_relaxed);
    c.duplicated = t->duplicated.load(std::memory_order_relaxed);
    c.reordered = t->reordered.load(std::memory_order_relaxed);
    c.corrupted = t->corrupted.load(std::memory_order_relaxed);
    for (const Counter& n : t->per_producer) {
      c.records_per_producer.push_back(n.load(std::memory_order_relaxed));
    }
    c.output_file = t->output_path;
    out.consumers.push_back(std::move(c));
  }
  return out;
}

}  // namespace sluice::daemon
