#include "tools/bench/data_path.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "buffer/memory_estimate.h"
#include "shuffle/auth.h"
#include "shuffle/record_reader.h"
#include "shuffle/record_writer.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_environment.h"
#include "shuffle/shuffle_server.h"
#include "tools/bench/child_process.h"
#include "tools/bench/debloat_bench.h"
#include "tools/bench/latency_stats.h"
#include "tools/bench/raw_latency.h"
#include "tools/bench/turn_board.h"

namespace sluice::bench {
namespace {

using Clock = std::chrono::steady_clock;
using shuffle::ShuffleEnvironment;

constexpr size_t kSeqBytes = 8;
constexpr size_t kStampBytes = 16;  // sequence number + scheduled send time
// Records of 24 bytes or more also carry the time the producer actually wrote them (for the
// coordinated-omission figure: what sluice-bench reported before issue 15).
constexpr size_t kActualStampBytes = 24;
constexpr uint8_t kFillByte = 0x5A;  // --in-place fill
// A consumer that sees no end of input this long after it stopped the producer gives up.
constexpr auto kDrainLimit = std::chrono::seconds(30);

// --latency --events: every kEventEvery-th scheduled send is a user event (ResultPartition::
// EmitEvent) instead of a record; its 16-byte payload is kEventMagic and the scheduled time.
constexpr uint64_t kEventEvery = 10;
constexpr uint64_t kEventMagic = 0x534c4556454e5431ull;  // "SLEVENT1"

shuffle::EnvironmentConfig ConfigFor(const BenchFlags& f, const char* name, bool listen) {
  shuffle::EnvironmentConfig c;
  c.node_name = name;
  c.listen = listen;
  c.memory.segment_size = f.segment_size;
  c.memory.network_memory = NetworkMemoryFor(f);
  c.options.credit.segment_size = f.segment_size;
  c.options.credit.buffers_per_channel = f.buffers_per_channel;
  c.options.credit.floating_per_gate = f.floating_per_gate;
  c.options.credit.wide_threshold = f.wide_threshold;
  c.options.credit.wide_gate_buffers = f.wide_gate_buffers;
  if (f.latency || f.buffer_timeout_ms == 0) {
    c.options.buffer_timeout = std::chrono::milliseconds(0);
  } else if (f.buffer_timeout_ms < 0) {
    c.options.buffer_timeout = shuffle::kBufferTimeoutOff;
  } else {
    c.options.buffer_timeout = std::chrono::milliseconds(f.buffer_timeout_ms);
  }
  c.options.checksums = f.checksum;
  c.auth.secret = f.auth ? f.secret : std::string();
  c.auth.off = !f.auth;
  // Issue 14: the pool's redistribution policy; the delay line on every connection.
  c.memory.redistribution = f.redistribution;
  c.options.faults.delay_ms = f.delay_ms;
  ApplyDebloatOptions(f, &c.options);  // --debloat, --debloat-target-ms
  return c;
}

// A stamped user event (--latency --events, and debloating's timed events): kEventMagic and
// `stamp_ns` (the scheduled or actual send time), timed by the consumer's LatencyRecorder.
Status EmitStampedEvent(shuffle::ResultPartition& partition, uint32_t ch, uint64_t stamp_ns) {
  uint8_t payload[16];
  std::memcpy(payload, &kEventMagic, 8);
  std::memcpy(payload + 8, &stamp_ns, 8);
  return partition.EmitEvent(payload, ch);
}

// Generated records: a cycle of sizes (fixed or uniform in the range, seeded), written into an
// arena so a batch is `n` distinct records, each stamped with its channel sequence number.
// With --in-place only the sizes and the stamps are used: the records are filled in place.
class RecordSource {
 public:
  explicit RecordSource(const BenchFlags& f)
      : batch_(f.EffectiveBatch()),
        max_(f.record_max),
        arena_(f.in_place ? 0 : static_cast<size_t>(batch_) * f.record_max),
        spans_(batch_),
        batch_sizes_(batch_),
        next_seq_(f.channels, 0) {
    std::mt19937 rng(42);
    std::uniform_int_distribution<uint32_t> size(f.record_min, f.record_max);
    sizes_.resize(4096);
    for (uint32_t& s : sizes_) s = size(rng);
    for (size_t i = 0; i < arena_.size(); ++i) arena_[i] = static_cast<uint8_t>(i * 7 + 1);
  }
  uint32_t batch() const { return batch_; }

  // The sizes of the next batch of records.
  std::span<const uint32_t> NextSizes() {
    for (uint32_t& n : batch_sizes_) {
      n = sizes_[cursor_++ & (sizes_.size() - 1)];
      bytes_ += n + 4;  // with the length prefix, as in the buffers
    }
    return batch_sizes_;
  }
  // Bytes of the records handed out so far, length prefixes included.
  uint64_t bytes() const { return bytes_; }

  // Writes the channel's next sequence number (and with --latency, stamp_ns != 0, the
  // record's scheduled send time) at the front of `record`; the rest of its bytes are left as
  // they are.
  void Stamp(uint32_t channel, std::span<uint8_t> record, uint64_t stamp_ns) {
    const uint64_t seq = next_seq_[channel]++;
    std::memcpy(record.data(), &seq, std::min(kSeqBytes, record.size()));
    if (stamp_ns != 0 && record.size() >= kStampBytes) {
      std::memcpy(record.data() + kSeqBytes, &stamp_ns, 8);
    }
    if (stamp_ns != 0 && record.size() >= kActualStampBytes) {
      const uint64_t now = MonotonicNowNs();
      std::memcpy(record.data() + kStampBytes, &now, 8);
    }
  }

  // The bytes Stamp writes at the front of a record of `size` bytes (stamped: --latency).
  static size_t StampedBytes(size_t size, bool stamped) {
    if (stamped && size >= kActualStampBytes) return kActualStampBytes;
    if (stamped && size >= kStampBytes) return kStampBytes;
    return std::min(size, kSeqBytes);
  }
  // --in-place fill: writes every byte of `record` after what Stamp wrote (a pattern), as a
  // serialiser writing its record into the buffer would.
  static void FillAfterStamp(std::span<uint8_t> record, bool stamped) {
    const size_t from = StampedBytes(record.size(), stamped);
    std::memset(record.data() + from, kFillByte, record.size() - from);
  }
  // The consumer's check of FillAfterStamp: the record's last byte (when it has one past the
  // stamp) is the pattern.
  static bool FilledAfterStamp(std::span<const uint8_t> record, bool stamped) {
    return record.size() == StampedBytes(record.size(), stamped) || record.back() == kFillByte;
  }

  // The next batch of records in the arena, stamped. REQUIRES: not --in-place.
  std::span<const std::span<const uint8_t>> Next(uint32_t channel, uint64_t stamp_ns) {
    const std::span<const uint32_t> sizes = NextSizes();
    for (uint32_t i = 0; i < batch_; ++i) {
      const std::span<uint8_t> record(arena_.data() + static_cast<size_t>(i) * max_, sizes[i]);
      Stamp(channel, record, stamp_ns);
      spans_[i] = record;
    }
    return spans_;
  }

 private:
  const uint32_t batch_;
  const uint32_t max_;
  std::vector<uint8_t> arena_;
  std::vector<std::span<const uint8_t>> spans_;
  std::vector<uint32_t> batch_sizes_;
  std::vector<uint32_t> sizes_;
  size_t cursor_ = 0;
  std::vector<uint64_t> next_seq_;
  uint64_t bytes_ = 0;
};

// One batch (one record with --latency or --batch 1) to channel `ch`: copied from the
// source's arena, or with --in-place filled in the network buffer with only the stamp (with
// --in-place fill, the stamp and a pattern in every other byte).
// `stamp_ns`: the scheduled send time with --latency, else 0.
Status EmitNext(shuffle::RecordWriter& writer, RecordSource& source, const BenchFlags& f,
                uint32_t ch, uint64_t stamp_ns = 0) {
  if (!f.in_place) {
    const auto records = source.Next(ch, stamp_ns);
    return records.size() == 1 ? writer.EmitTo(records[0], ch) : writer.EmitBatchTo(records, ch);
  }
  const std::span<const uint32_t> sizes = source.NextSizes();
  auto fill = [&](std::span<uint8_t> record) {
    source.Stamp(ch, record, stamp_ns);
    if (f.in_place_fill) RecordSource::FillAfterStamp(record, stamp_ns != 0);
  };
  if (sizes.size() == 1) return writer.EmitInPlaceTo(sizes[0], ch, fill);
  return writer.EmitInPlaceBatchTo(sizes, ch,
                                   [&](size_t, std::span<uint8_t> record) { fill(record); });
}

// Emits until `stop`, round-robin over the subpartitions (a batch per subpartition), then
// finishes the partition. With --latency: one record at a time at flags.rate records/s, each
// stamped with its scheduled send time (latency_stats.h: a producer that blocks, on credit or
// on the scheduler, then catches up back to back and its late records count the wait).
Status Produce(shuffle::RecordWriter& writer, const BenchFlags& f, const std::atomic<bool>& stop) {
  RecordSource source(f);
  const uint32_t channels = f.channels;
  uint32_t ch = 0;
  if (f.latency) {
    Pacer pacer = StartPacer(f.rate);  // in its turns with --interleave-ms
    while (!stop.load(std::memory_order_relaxed)) {
      const bool event = f.events && pacer.count() % kEventEvery == kEventEvery - 1;
      const uint64_t scheduled = pacer.Next();
      if (event) {
        if (Status s = EmitStampedEvent(writer.partition(), ch, scheduled); !s.ok()) return s;
      } else if (Status s = EmitNext(writer, source, f, ch, scheduled); !s.ok()) {
        return s;
      }
      ch = ch + 1 == channels ? 0 : ch + 1;
    }
  } else {
    EventSchedule events(EventIntervalMs(f), channels);  // debloating: timed events
    DebloatProbe* const probe = DebloatProbe::Shared();  // bytes written, for inflight_bytes
    while (!stop.load(std::memory_order_relaxed)) {
      if (Status s = EmitNext(writer, source, f, ch); !s.ok()) return s;
      if (probe != nullptr) probe->producer_bytes.store(source.bytes(), std::memory_order_relaxed);
      if (const std::optional<uint32_t> to = events.Due()) {
        if (Status s = EmitStampedEvent(writer.partition(), *to, MonotonicNowNs()); !s.ok()) {
          return s;
        }
      }
      ch = ch + 1 == channels ? 0 : ch + 1;
    }
  }
  return writer.Finish();
}

// The consumer's clock: warm-up, the measured window, one interval line per second, and the
// drain after the producer was told to stop.
struct ConsumeWindow {
  Clock::time_point t0, warm_end, end, next_tick, last_tick, stopped_at, warm_at;
  bool warm = false;
  bool stopped = false;
  uint64_t records = 0, bytes = 0;
  uint64_t tick_records = 0, tick_bytes = 0, tick_buffers = 0;
  uint64_t warm_records = 0, warm_bytes = 0, warm_buffers = 0;
  std::vector<uint64_t> tick_latency_ns;  // --latency: the interval's records, from schedule
};

// --latency: the interval's p50 and p99 for its line (empty before the measured window), so a
// tail that comes in bursts shows which seconds it came in. Clears the interval's samples.
std::string TakeIntervalLatency(std::vector<uint64_t>& ns) {
  if (ns.empty()) return "";
  const LatencyResult l = SelectP50P99(ns);  // linear: this runs inside the measured window
  ns.clear();
  char text[64];
  std::snprintf(text, sizeof text, "  p50 %.1f us  p99 %.1f us", l.p50_us, l.p99_us);
  return text;
}

void PrintInterval(const BenchFlags& f, const buffer::NetworkBufferPool& pool, ConsumeWindow& w,
                   Clock::time_point now, uint64_t buffers) {
  const std::string latency = TakeIntervalLatency(w.tick_latency_ns);
  if (f.json) return;
  const double dt = std::chrono::duration<double>(now - w.last_tick).count();
  std::printf("[%5.1f-%5.1f s] %9.3f M rec/s %9.1f MiB/s %9.0f buf/s  pool %u/%u%s%s\n",
              std::chrono::duration<double>(w.last_tick - w.t0).count(),
              std::chrono::duration<double>(now - w.t0).count(),
              (w.records - w.tick_records) / dt / 1e6, (w.bytes - w.tick_bytes) / dt / (1 << 20),
              (buffers - w.tick_buffers) / dt, pool.used_segments(), pool.total_segments(),
              latency.c_str(), w.last_tick < w.warm_end && f.warmup > 0 ? "  (warm-up)" : "");
  std::fflush(stdout);
}

// Every 512 records (and on every non-record item): warm-up end, interval line, stop.
Status AdvanceWindow(shuffle::InputGate* gate, const buffer::NetworkBufferPool& pool,
                     const BenchFlags& f, const std::function<void()>& stop_producer,
                     ConsumeWindow& w, RunResult* out) {
  const Clock::time_point now = Clock::now();
  if (!w.warm && now >= w.warm_end) {
    w.warm = true;
    w.warm_at = now;
    w.warm_records = w.records;
    w.warm_bytes = w.bytes;
    w.warm_buffers = gate->Stats().buffers_in;
  }
  const bool stopping = !w.stopped && now >= w.end;
  if (!w.stopped && (now >= w.next_tick || stopping)) {
    const uint64_t buffers = gate->Stats().buffers_in;
    PrintInterval(f, pool, w, now, buffers);
    w.tick_records = w.records;
    w.tick_bytes = w.bytes;
    w.tick_buffers = buffers;
    w.last_tick = now;
    w.next_tick = now + std::chrono::seconds(1);
  }
  if (stopping) {
    w.stopped = true;
    w.stopped_at = now;
    out->seconds = std::chrono::duration<double>(now - w.warm_at).count();
    out->records = w.records - w.warm_records;
    out->bytes = w.bytes - w.warm_bytes;
    out->buffers = gate->Stats().buffers_in - w.warm_buffers;
    stop_producer();
  }
  if (w.stopped && now - w.stopped_at > kDrainLimit) {
    return TimeoutError("no end of input within 30 s after the producer was told to stop");
  }
  return Status::Ok();
}

// --latency: the one-way latency of records (and with --events of events) in the measured
// window, from the scheduled send time each carries. Debloating's timed events (stamped with
// the time they were emitted) are timed by the same `events` recorder.
struct ConsumeLatency {
  LatencyRecorder records;
  LatencyRecorder events;
  LatencyRecorder from_actual;  // the same records timed from their actual write

  // `interval` also gets the latency from the scheduled time (the interval line's figures).
  void OnRecord(std::span<const uint8_t> rec, std::vector<uint64_t>* interval) {
    if (rec.size() < kStampBytes) return;
    const uint64_t now = MonotonicNowNs();
    uint64_t scheduled;
    std::memcpy(&scheduled, rec.data() + kSeqBytes, 8);
    interval->push_back(records.Record(scheduled, now));
    if (rec.size() < kActualStampBytes) return;
    uint64_t actual;
    std::memcpy(&actual, rec.data() + kStampBytes, 8);
    from_actual.Record(actual, now);
  }
  void OnEvent(std::span<const uint8_t> payload) {
    if (payload.size() != 16) return;
    uint64_t magic, scheduled;
    std::memcpy(&magic, payload.data(), 8);
    std::memcpy(&scheduled, payload.data() + 8, 8);
    if (magic == kEventMagic) events.Record(scheduled, MonotonicNowNs());
  }
  void Report(RunResult* out) {
    const LatencyResult l = records.Summarize();
    out->latency_samples = l.samples;
    out->p50_us = l.p50_us;
    out->p99_us = l.p99_us;
    out->p999_us = l.p999_us;
    out->max_us = l.max_us;
    out->event_latency = events.Summarize();
    out->actual_send_latency = from_actual.Summarize();
  }
};

// The consumer's work on each item of the gate: order check, fill check, latency, the window
// (warm-up, measured time, interval lines, stopping the producer). Runs on the consumer
// thread (Consume) or, in push mode, on the IO thread (ConsumeOnIoThread).
class RecordConsumer {
 public:
  RecordConsumer(shuffle::InputGate* gate, const buffer::NetworkBufferPool& pool,
                 const BenchFlags& f, std::function<void()> stop_producer, Clock::time_point t0,
                 RunResult* out)
      : gate_(gate),
        pool_(pool),
        f_(f),
        stop_producer_(std::move(stop_producer)),
        out_(out),
        reader_(gate),
        expected_(f.channels, 0),
        peak_used_(pool.used_segments()),
        debloat_(f, DebloatProbe::Shared()) {  // throttle, in-flight bytes
    w_.t0 = t0;
    // With --interleave-ms the producer sends only in its turns: the same number of records
    // takes TurnPaths() times as long.
    w_.warm_end = t0 + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(f.WarmupWallSeconds()));
    w_.end = w_.warm_end + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(f.MeasuredWallSeconds()));
    w_.next_tick = t0 + std::chrono::seconds(1);
    w_.last_tick = t0;
    w_.warm_at = t0;  // the measured window starts here
    w_.warm = f.warmup <= 0;
    if (f.latency) {
      latency_.records.Reserve(static_cast<size_t>(f.rate * (f.seconds + 1)));
      latency_.from_actual.Reserve(static_cast<size_t>(f.rate * (f.seconds + 1)));
      w_.tick_latency_ns.reserve(static_cast<size_t>(f.rate) * 2);  // a second's, with slack
    }
  }

  shuffle::RecordReader& reader() { return reader_; }

  // One item (a timeout too: it advances the window). True at the end of input.
  Result<bool> Take(const shuffle::RecordReader::Item& item) {
    using Kind = shuffle::RecordReader::Kind;
    if (item.kind == Kind::kEndOfInput) return true;
    if (item.kind == Kind::kRecord) {
      OnRecord(item);
      if (++since_check_ < 512) return false;
    } else if (item.kind == Kind::kEvent && w_.warm && !w_.stopped) {
      latency_.OnEvent(item.data);
    }
    since_check_ = 0;
    if (w_.warm && !w_.stopped) debloat_.Sample(gate_->Stats().bytes_in);
    peak_used_ = std::max(peak_used_, pool_.used_segments());
    if (Status s = AdvanceWindow(gate_, pool_, f_, stop_producer_, w_, out_); !s.ok()) return s;
    return false;
  }

  // After the end of input: the figures into `out`.
  Status Finish() {
    if (!w_.stopped) return InternalError("the input ended before the measurement did");
    // Records after the producer was stopped are only drained; a gap at the very end is fine.
    out_->pool_total_segments = pool_.total_segments();
    out_->pool_peak_used_segments = peak_used_;
    debloat_.Fill(latency_.events.Summarize(), out_);  // events: --events' or debloating's
    if (f_.latency) latency_.Report(out_);
    return Status::Ok();
  }

 private:
  void OnRecord(const shuffle::RecordReader::Item& item) {
    const std::span<const uint8_t> rec = item.data;
    debloat_.OnRecord(rec.size());
    ++w_.records;
    w_.bytes += rec.size();
    if (rec.size() >= kSeqBytes) {
      uint64_t seq;
      std::memcpy(&seq, rec.data(), kSeqBytes);
      uint64_t& want = expected_[item.channel];
      if (seq != want) ++out_->order_errors;
      want = seq + 1;
    }
    if (f_.in_place_fill && !RecordSource::FilledAfterStamp(rec, f_.latency)) {
      ++out_->fill_errors;
    }
    if (f_.latency && w_.warm && !w_.stopped) latency_.OnRecord(rec, &w_.tick_latency_ns);
  }

  shuffle::InputGate* const gate_;
  const buffer::NetworkBufferPool& pool_;
  const BenchFlags& f_;
  const std::function<void()> stop_producer_;
  RunResult* const out_;
  shuffle::RecordReader reader_;
  ConsumeWindow w_;
  std::vector<uint64_t> expected_;
  ConsumeLatency latency_;
  uint32_t peak_used_;
  uint32_t since_check_ = 0;
  DebloatConsumer debloat_;
};

// Reads to the end of input on this thread: warm-up, then the measured window, then stops the
// producer and drains. One interval line per second.
Status Consume(shuffle::InputGate* gate, const buffer::NetworkBufferPool& pool, const BenchFlags& f,
               const std::function<void()>& stop_producer, RunResult* out) {
  RecordConsumer consumer(gate, pool, f, stop_producer, Clock::now(), out);
  while (true) {
    Result<shuffle::RecordReader::Item> item =
        consumer.reader().Next(std::chrono::milliseconds(100));
    if (!item.ok()) return item.status();
    Result<bool> end = consumer.Take(*item);
    if (!end.ok()) return end.status();
    if (*end) break;
  }
  return consumer.Finish();
}

// --consume-on io: the same work in the gate's push mode. The listener drains the gate on the
// IO thread each time it has something; this thread only waits for the end (or an error).
class PushConsumer {
 public:
  PushConsumer(const buffer::NetworkBufferPool& pool, const BenchFlags& f,
               std::function<void()> stop_producer, RunResult* out)
      : pool_(pool), f_(f), stop_producer_(std::move(stop_producer)), out_(out) {}

  // The gate's listener (IO thread): drains what is queued.
  void OnAvailable(shuffle::InputGate& gate) {
    if (finished_) return;  // the end or an error was seen; Close follows
    if (!consumer_) {
      consumer_.emplace(&gate, pool_, f_, stop_producer_, t0_, out_);
    }
    while (true) {
      Result<shuffle::RecordReader::Item> item = consumer_->reader().Next({});
      Result<bool> end = item.ok() ? consumer_->Take(*item) : Result<bool>(item.status());
      if (!end.ok() || *end) return Done(end.ok() ? consumer_->Finish() : end.status());
      if (item->kind == shuffle::RecordReader::Kind::kTimeout) return;  // drained
    }
  }

  // Waits for the end of input, at most the run's length plus the drain limit and a margin.
  Status Wait() {
    const auto limit = std::chrono::duration<double>(f_.WarmupWallSeconds() +
                                                     f_.MeasuredWallSeconds()) +
                       kDrainLimit +
                       std::chrono::seconds(10);
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, limit, [&] { return done_; })) {
      return TimeoutError("push mode: no end of input within " +
                          std::to_string(static_cast<int>(limit.count())) + " s (--consume-on io)");
    }
    return status_;
  }

 private:
  void Done(Status status) {
    finished_ = true;
    std::lock_guard lock(mu_);
    done_ = true;
    status_ = std::move(status);
    cv_.notify_all();
  }

  const buffer::NetworkBufferPool& pool_;
  const BenchFlags& f_;
  const std::function<void()> stop_producer_;
  RunResult* const out_;
  const Clock::time_point t0_ = Clock::now();
  std::optional<RecordConsumer> consumer_;  // IO thread (made at the first call)
  bool finished_ = false;                   // IO thread
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // GUARDED_BY(mu_)
  Status status_;      // GUARDED_BY(mu_)
};

// The bench gate, in push mode (its listener feeding `push`) when `push` is set.
Result<std::unique_ptr<shuffle::InputGate>> CreateBenchGate(
    ShuffleEnvironment& env, const std::vector<shuffle::ChannelSpec>& specs,
    std::optional<PushConsumer>& push) {
  if (!push) return env.CreateInputGate("bench", specs);
  return env.CreateInputGate("bench", specs,
                             [&push](shuffle::InputGate& g) { push->OnAvailable(g); });
}

int64_t LeakedSegments(const ShuffleEnvironment& env) {
  return static_cast<int64_t>(env.pool()->total_segments()) -
         static_cast<int64_t>(env.pool()->available_segments());
}

// Sends `r` to the parent with `error` set; returns the child's exit code.
int Report(int to_parent, RunResult& r, const Status& error) {
  if (!error.ok()) SetMessage(r.error, error.ToString());
  return WritePod(to_parent, r) && error.ok() ? 0 : 1;
}

// --- local: one process, producer thread and consumer thread over local channels ----------

int RunLocalChild(const BenchFlags& f, int to_parent) {
  RunResult r;
  r.network_memory_bytes = NetworkMemoryFor(f);
  Status error;
  {
    auto env = ShuffleEnvironment::Start(ConfigFor(f, "bench-local", false));
    if (!env.ok()) return Report(to_parent, r, env.status());
    auto part = (*env)->CreatePartition("p0", f.channels);
    if (!part.ok()) return Report(to_parent, r, part.status());
    std::vector<shuffle::ChannelSpec> specs;
    for (uint32_t c = 0; c < f.channels; ++c) specs.push_back({"p0", c, std::nullopt});
    std::atomic<bool> stop{false};
    const std::function<void()> stop_producer = [&] { stop = true; };
    std::optional<PushConsumer> push;  // --consume-on io
    if (f.consume_on_io) push.emplace(*(*env)->pool(), f, stop_producer, &r);
    auto gate = CreateBenchGate(**env, specs, push);
    if (!gate.ok()) return Report(to_parent, r, gate.status());
    Status produced;
    std::optional<ProducerSampler> sampler;
    if (ProducerSampler::Wanted(f)) sampler.emplace(DebloatProbe::Shared(), *part);
    std::thread producer([&, partition = *part] {
      shuffle::RecordWriter writer(partition, std::make_unique<shuffle::RoundRobinPartitioner>());
      produced = Produce(writer, f, stop);
      if (!produced.ok()) partition->Fail(produced);
    });
    error = push ? push->Wait() : Consume(gate->get(), *(*env)->pool(), f, stop_producer, &r);
    stop = true;
    if (!error.ok()) (*part)->Cancel();
    producer.join();
    sampler.reset();
    if (error.ok() && !produced.ok()) error = produced;
    r.backpressure_ms = static_cast<double>((*part)->Stats().backpressure_ns) / 1e6;
    (*gate)->Close();
    gate->reset();
    push.reset();  // its reader holds the last buffer it read from
    part->reset();
    (*env)->ReleasePartition("p0");
    (*env)->Stop();
    r.leaked_segments = LeakedSegments(**env);
  }
  r.consumer_peak_rss_bytes = r.peak_rss_bytes = PeakRssBytes();
  return Report(to_parent, r, error);
}

// --- remote: the producer is a forked child serving its partition over loopback TCP --------

// --idle-gates N (issue 14): partitions i1..iN of --channels subpartitions each, which get no
// records until the end, and one gate per partition in the consumer, sharing its pool with the
// busy gate. Their channels are requested (exclusive buffers, a floating pool each) but idle.
using PartitionPtr = std::shared_ptr<shuffle::ResultPartition>;
using GatePtr = std::unique_ptr<shuffle::InputGate>;

std::string IdleName(uint32_t i) {
  std::string name = std::to_string(i + 1);
  name.insert(name.begin(), 'i');  // not "i" + ...: GCC 12's -Wrestrict false positive
  return name;
}

Result<std::vector<PartitionPtr>> CreateIdlePartitions(ShuffleEnvironment& env, const BenchFlags& f,
                                                       const std::string& token) {
  std::vector<PartitionPtr> parts;
  for (uint32_t i = 0; i < f.idle_gates; ++i) {
    auto part = env.CreatePartition(IdleName(i), f.channels, token);
    if (!part.ok()) return part.status();
    parts.push_back(std::move(*part));
  }
  return parts;
}

void FinishIdlePartitions(const std::vector<PartitionPtr>& parts) {
  for (const PartitionPtr& p : parts) {
    if (Status s = p->Finish(); !s.ok()) p->Fail(s);
  }
}

void ReleaseIdlePartitions(ShuffleEnvironment& env, std::vector<PartitionPtr>& parts) {
  for (uint32_t i = 0; i < parts.size(); ++i) env.ReleasePartition(IdleName(i));
  parts.clear();
}

Result<std::vector<GatePtr>> CreateIdleGates(ShuffleEnvironment& env, const BenchFlags& f,
                                             uint16_t port, const std::string& token) {
  std::vector<GatePtr> gates;
  for (uint32_t i = 0; i < f.idle_gates; ++i) {
    std::vector<shuffle::ChannelSpec> specs;
    for (uint32_t c = 0; c < f.channels; ++c) {
      specs.push_back({IdleName(i), c, transport::Endpoint{"127.0.0.1", port}, token});
    }
    std::string name = IdleName(i);
    name.insert(0, "idle-");
    auto gate = env.CreateInputGate(name, specs);
    if (!gate.ok()) return gate.status();
    gates.push_back(std::move(*gate));
  }
  return gates;
}

// Reads every idle gate to its end (the producer finishes their partitions when it stops).
Status DrainIdleGates(std::vector<GatePtr>& gates) {
  const Clock::time_point limit = Clock::now() + kDrainLimit;
  for (GatePtr& g : gates) {
    shuffle::RecordReader reader(g.get());
    while (true) {
      Result<shuffle::RecordReader::Item> item = reader.Next(std::chrono::milliseconds(100));
      if (!item.ok()) return item.status();
      if (item->kind == shuffle::RecordReader::Kind::kEndOfInput) break;
      if (Clock::now() > limit) return TimeoutError("an idle gate did not end within 30 s");
    }
  }
  return Status::Ok();
}

struct ProducerReport {
  int64_t leaked_segments = 0;
  uint64_t peak_rss_bytes = 0;
  double credit_stall_ms = 0;
  double backpressure_ms = 0;
  uint64_t frames_out = 0;
  uint64_t direct_writes = 0;
  uint64_t direct_read_frames = 0;
  uint64_t notifications_posted = 0;
  uint64_t backlog_announcements = 0;
  char error[512] = {};
};

int RunRemoteProducer(const BenchFlags& f, const std::string& token, int from_consumer,
                      int to_consumer) {
  ProducerReport report;
  Status error;
  {
    auto env = ShuffleEnvironment::Start(ConfigFor(f, "bench-producer", true));
    if (!env.ok()) Die(env.status().ToString());
    auto part = (*env)->CreatePartition("p0", f.channels, token);
    if (!part.ok()) Die(part.status().ToString());
    auto idle = CreateIdlePartitions(**env, f, token);
    if (!idle.ok()) Die(idle.status().ToString());
    const uint16_t port = (*env)->port();
    if (!WritePod(to_consumer, port)) return 1;
    std::atomic<bool> stop{false};
    std::optional<ProducerSampler> sampler;
    if (ProducerSampler::Wanted(f)) sampler.emplace(DebloatProbe::Shared(), *part);
    // The consumer writes one byte when it has measured enough (or exits: EOF).
    std::thread watcher([&] {
      char b;
      (void)read(from_consumer, &b, 1);
      stop = true;
    });
    {
      shuffle::RecordWriter writer(*part, std::make_unique<shuffle::RoundRobinPartitioner>());
      error = Produce(writer, f, stop);
      if (!error.ok()) (*part)->Fail(error);
    }
    watcher.join();
    FinishIdlePartitions(*idle);
    sampler.reset();
    // The consumer closes its connection once it has read everything.
    const Clock::time_point limit = Clock::now() + kDrainLimit;
    while ((*env)->server()->connection_count() > 0 && Clock::now() < limit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    report.credit_stall_ms = static_cast<double>((*env)->server()->stats().credit_stall_ns) / 1e6;
    report.backpressure_ms = static_cast<double>((*part)->Stats().backpressure_ns) / 1e6;
    const transport::TransportMetrics& m = *(*env)->server()->metrics();
    report.frames_out = m.frames_out.load();
    report.direct_writes = m.direct_writes.load();
    report.direct_read_frames = m.direct_read_frames.load();
    report.notifications_posted = (*env)->server()->stats().notifications_posted.load();
    report.backlog_announcements = (*env)->server()->stats().backlog_announcements.load();
    part->reset();
    (*env)->ReleasePartition("p0");
    ReleaseIdlePartitions(**env, *idle);
    (*env)->Stop();
    report.leaked_segments = LeakedSegments(**env);
  }
  report.peak_rss_bytes = PeakRssBytes();
  if (!error.ok()) SetMessage(report.error, error.ToString());
  return WritePod(to_consumer, report) ? 0 : 1;
}

int RunRemoteConsumer(const BenchFlags& f, int to_parent) {
  RunResult r;
  r.network_memory_bytes = NetworkMemoryFor(f);
  // The partition's job token: made before the fork, so both sides hold it.
  const std::string token = f.auth ? shuffle::auth::MakeJobToken() : "";
  // Fork the producer before this process starts any thread.
  Child producer = ForkChild([&](int from_consumer, int to_consumer) {
    return RunRemoteProducer(f, token, from_consumer, to_consumer);
  });
  uint16_t port = 0;
  if (!ReadPod(producer.from_child, &port)) {
    return Report(to_parent, r, InternalError("the producer process did not start"));
  }
  Status error;
  {
    auto env = ShuffleEnvironment::Start(ConfigFor(f, "bench-consumer", false));
    if (!env.ok()) return Report(to_parent, r, env.status());
    std::vector<shuffle::ChannelSpec> specs;
    for (uint32_t c = 0; c < f.channels; ++c) {
      specs.push_back({"p0", c, transport::Endpoint{"127.0.0.1", port}, token});
    }
    auto stop_producer = [&] {
      const char b = 's';
      WriteAll(producer.to_child, &b, 1);
    };
    std::optional<PushConsumer> push;  // --consume-on io
    if (f.consume_on_io) push.emplace(*(*env)->pool(), f, stop_producer, &r);
    auto gate = CreateBenchGate(**env, specs, push);
    std::vector<shuffle::ChannelSpec>().swap(specs);  // ~200 bytes a channel, not needed now
    if (!gate.ok()) return Report(to_parent, r, gate.status());
    auto idle = CreateIdleGates(**env, f, port, token);
    if (!idle.ok()) return Report(to_parent, r, idle.status());
    error = push ? push->Wait() : Consume(gate->get(), *(*env)->pool(), f, stop_producer, &r);
    stop_producer();
    if (error.ok()) error = DrainIdleGates(*idle);
    for (auto& g : *idle) g->Close();
    idle->clear();
    (*gate)->Close();
    gate->reset();
    push.reset();             // its reader holds the last buffer it read from
    (*env)->client().Stop();  // closes the connection: the producer tears down
    r.client_frames_out = (*env)->client().metrics()->frames_out.load();
    (*env)->Stop();
    r.leaked_segments = LeakedSegments(**env);
  }
  ProducerReport pr;
  if (!ReadPod(producer.from_child, &pr)) {
    if (error.ok()) error = InternalError("the producer process did not report");
  } else if (pr.error[0] != 0 && error.ok()) {
    error = InternalError(std::string("producer: ") + pr.error);
  }
  WaitChild(producer);
  r.leaked_segments += pr.leaked_segments;
  r.credit_stall_ms = pr.credit_stall_ms;
  r.backpressure_ms = pr.backpressure_ms;
  r.server_frames_out = pr.frames_out;
  r.server_direct_writes = pr.direct_writes;
  r.server_direct_read_frames = pr.direct_read_frames;
  r.server_notifications_posted = pr.notifications_posted;
  r.server_backlog_announcements = pr.backlog_announcements;
  r.producer_peak_rss_bytes = pr.peak_rss_bytes;
  r.consumer_peak_rss_bytes = PeakRssBytes();
  r.peak_rss_bytes = std::max(r.producer_peak_rss_bytes, r.consumer_peak_rss_bytes);
  return Report(to_parent, r, error);
}

}  // namespace

uint64_t NetworkMemoryFor(const BenchFlags& f) {
  if (f.network_memory > 0) return f.network_memory;
  buffer::CreditOptions credit;
  credit.segment_size = f.segment_size;
  credit.buffers_per_channel = f.buffers_per_channel;
  credit.floating_per_gate = f.floating_per_gate;
  credit.wide_threshold = f.wide_threshold;
  credit.wide_gate_buffers = f.wide_gate_buffers;
  buffer::Topology producer;
  producer.partitions.push_back({"p0", f.channels});
  buffer::Topology consumer;
  buffer::GateSpec gate{"bench", 0, 0};
  (f.mode == "local" ? gate.local_channels : gate.remote_channels) = f.channels;
  consumer.gates.push_back(gate);
  for (uint32_t i = 0; i < (f.mode == "local" ? 0 : f.idle_gates); ++i) {
    consumer.gates.push_back({"idle", f.channels, 0});
    producer.partitions.push_back({"idle", f.channels});
  }
  if (f.mode == "local") consumer.partitions.push_back({"p0", f.channels});
  const uint64_t need = std::max(buffer::EstimateNetworkMemory(producer, credit).recommended_bytes,
                                 buffer::EstimateNetworkMemory(consumer, credit).recommended_bytes);
  return std::max<uint64_t>(need, 4u << 20);
}

RunResult RunDataPath(const BenchFlags& f) {
  if (DebloatProbe* probe = DebloatProbe::Shared()) probe->Reset();  // before the fork
  Child child = ForkChild([&](int, int to_parent) {
    return f.mode == "local" ? RunLocalChild(f, to_parent) : RunRemoteConsumer(f, to_parent);
  });
  RunResult r;
  if (!ReadPod(child.from_child, &r)) SetMessage(r.error, "the benchmark process died");
  const int rc = WaitChild(child);
  if (rc != 0 && r.error[0] == 0) SetMessage(r.error, "the benchmark process failed");
  return r;
}

}  // namespace sluice::bench
