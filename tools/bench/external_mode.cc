#include "tools/bench/external_mode.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "client/local_protocol.h"
#include "client/writer.h"
#include "shuffle/auth.h"
#include "shuffle/result_partition.h"
#include "tools/bench/child_process.h"
#include "tools/common/report_util.h"
#include "tools/daemon/local_writer_service.h"

namespace sluice::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct SideResult {
  double seconds = 0;
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t credit_waits = 0;
  int64_t leaked_segments = 0;
  char error[256] = {};
  double records_per_second() const { return seconds > 0 ? records / seconds : 0; }
  double mib_per_second() const { return seconds > 0 ? bytes / seconds / (1 << 20) : 0; }
};

uint64_t NetworkMemory(const BenchFlags& f) {
  return f.network_memory != 0 ? f.network_memory : 64ull << 20;
}

uint32_t WriterCredit(const BenchFlags& f) {
  // At least the daemon's default writer_credit (16).
  return std::clamp<uint32_t>(f.channels * std::max<uint32_t>(1, f.buffers_per_channel), 16, 1024);
}

// Writes records for warmup + seconds with `emit(subpartition, count, first_seq)`; counts the
// measured window only.
template <typename Emit>
Status Drive(const BenchFlags& f, SideResult* r, Emit emit) {
  const uint32_t batch = f.EffectiveBatch();
  const auto start = Clock::now();
  const auto measure_from = start + std::chrono::duration<double>(f.warmup);
  const auto end = measure_from + std::chrono::duration<double>(f.seconds);
  uint64_t seq = 0, counted_from = 0;
  bool measuring = false;
  for (uint32_t sub = 0;; sub = (sub + 1) % f.channels) {
    if (Status s = emit(sub, batch, seq); !s.ok()) return s;
    seq += batch;
    if ((seq & 1023) < batch) {
      const auto now = Clock::now();
      if (!measuring && now >= measure_from) {
        measuring = true;
        counted_from = seq;
        r->seconds = -std::chrono::duration<double>(now - start).count();
      }
      if (now >= end) {
        r->seconds += std::chrono::duration<double>(now - start).count();
        r->records = seq - counted_from;
        r->bytes = r->records * f.record_min;
        return Status::Ok();
      }
    }
  }
}

// How the in-process side's consumer treats each buffer it takes.
enum class Consume {
  kDrop,   // releases it unread
  kCheck,  // walks its records' length prefixes first (RecordFraming::Check, as the daemon
           // checks every Filled segment of a local writer), so another core reads the data
};

// In-process: EmitInPlaceBatch into a ResultPartition; a consumer thread drains every view,
// dropping each buffer or checking its framing first (`consume`).
SideResult RunInProcess(const BenchFlags& f, Consume consume) {
  SideResult r;
  auto pool = buffer::NetworkBufferPool::Create({NetworkMemory(f), f.segment_size});
  if (!pool.ok()) {
    SetMessage(r.error, pool.status().ToString());
    return r;
  }
  shuffle::ShuffleOptions options;
  options.buffer_timeout = std::chrono::milliseconds(-1);  // only full buffers
  auto partition = shuffle::ResultPartition::Create("bench-inprocess", f.channels, *pool, options);
  if (!partition.ok()) {
    SetMessage(r.error, partition.status().ToString());
    return r;
  }
  std::vector<std::unique_ptr<shuffle::SubpartitionView>> views;
  for (uint32_t i = 0; i < f.channels; ++i) views.push_back((*partition)->CreateView(i, nullptr).value());
  std::atomic<bool> stop{false};
  // kCheck: the daemon's framing check, one per subpartition (a record may span buffers).
  std::vector<client::local::RecordFraming> framings(f.channels);
  Status checked = Status::Ok();  // the drain thread's, read after join()
  std::thread drain([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      bool any = false;
      for (uint32_t i = 0; i < views.size(); ++i) {
        while (true) {
          auto item = views[i]->PollNext();
          if (!item.ok() || !item->has_value()) break;
          any = true;
          if (consume == Consume::kDrop || (*item)->buffer.type() != buffer::DataType::kData) {
            continue;
          }
          Result<uint32_t> n = framings[i].Check((*item)->buffer.bytes());
          if (!n.ok() && checked.ok()) checked = n.status();
        }
      }
      if (!any) std::this_thread::yield();
    }
  });
  std::vector<uint32_t> sizes(f.EffectiveBatch(), f.record_min);
  const Status s = Drive(f, &r, [&](uint32_t sub, uint32_t n, uint64_t seq) {
    return (*partition)->EmitInPlaceBatch(
        sub, std::span<const uint32_t>(sizes.data(), n), [&](size_t i, std::span<uint8_t> rec) {
          const uint64_t v = seq + i;
          std::memcpy(rec.data(), &v, std::min<size_t>(8, rec.size()));
        });
  });
  stop = true;
  drain.join();
  if (!s.ok()) SetMessage(r.error, s.ToString());
  if (s.ok() && !checked.ok()) SetMessage(r.error, "framing check: " + checked.ToString());
  for (auto& v : views) v->Release();
  views.clear();
  (*partition)->Release();
  partition->reset();
  r.leaked_segments = (*pool)->total_segments() - (*pool)->available_segments();
  return r;
}

class DropSink final : public daemon::WriterSink {
 public:
  Result<store::WriterId> OpenWriter(const store::WriterSpec&) override { return next_++; }
  Status Append(store::WriterId, uint32_t, buffer::Buffer, uint32_t) override {
    return Status::Ok();  // released here: the slot goes back as credit at once
  }
  Result<client::MapOutput> Commit(store::WriterId) override {
    return client::MapOutput{"bench:0", "bench", 0, 0, 1, 0, 0};
  }
  void Abort(store::WriterId, std::string) override {}

 private:
  store::WriterId next_ = 1;
};

// The daemon side: the service over a DropSink until the parent closes the pipe.
int ServeUntilClosed(const BenchFlags& f, const std::string& socket, int from_parent,
                     int to_parent) {
  auto pool = buffer::NetworkBufferPool::Create({NetworkMemory(f), f.segment_size});
  if (!pool.ok()) Die(pool.status().ToString());
  DropSink sink;
  daemon::LocalWriterServiceOptions o;
  o.socket_path = socket;
  o.auth.secret = f.secret.empty() ? std::string(32, 'x') : f.secret;
  o.writer_credit = WriterCredit(f);
  o.max_writer_credit = 1024;
  auto service = daemon::LocalWriterService::Start(o, *pool, &sink);
  if (!service.ok()) Die(service.status().ToString());
  const char ready = 1;
  WritePod(to_parent, ready);
  char done;
  (void)ReadPod(from_parent, &done);  // EOF when the parent is finished
  (*service)->Stop();
  int64_t leaked = (*pool)->total_segments() - (*pool)->available_segments();
  WritePod(to_parent, leaked);
  return 0;
}

// The writer process: Claim + CommitClaim (in place), Commit at the end.
SideResult WriteThroughService(const BenchFlags& f, const std::string& socket) {
  SideResult r;
  client::WriterOptions o;
  o.socket_path = socket;
  o.secret = f.secret.empty() ? std::string(32, 'x') : f.secret;
  o.job = "bench";
  o.token = shuffle::auth::MakeJobToken();
  o.subpartitions = f.channels;
  o.credit = WriterCredit(f);
  auto w = client::Writer::Open(o);
  if (!w.ok()) {
    SetMessage(r.error, w.status().ToString());
    return r;
  }
  const uint32_t size = f.record_min;
  // Records that fit a segment are filled in place (Claim); larger ones are copied (Write),
  // as EmitInPlace falls back to its scratch area for them.
  std::vector<uint8_t> large(size > (*w)->max_claim() ? size : 0);
  Status s = Drive(f, &r, [&](uint32_t sub, uint32_t n, uint64_t seq) {
    for (uint32_t i = 0; i < n && !large.empty(); ++i) {
      const uint64_t v = seq + i;
      std::memcpy(large.data(), &v, 8);
      if (Status c = (*w)->Write(sub, std::span<const uint8_t>(large)); !c.ok()) return c;
    }
    for (uint32_t i = 0; i < n && large.empty(); ++i) {
      auto span = (*w)->Claim(sub, size);
      if (!span.ok()) return span.status();
      const uint64_t v = seq + i;
      std::memcpy(span->data(), &v, std::min<size_t>(8, size));
      if (Status c = (*w)->CommitClaim(); !c.ok()) return c;
    }
    return Status::Ok();
  });
  if (s.ok()) s = (*w)->Commit().status();
  if (!s.ok()) SetMessage(r.error, s.ToString());
  r.credit_waits = (*w)->stats().credit_waits;
  return r;
}

SideResult RunExternal(const BenchFlags& f) {
  char dir_template[] = "/tmp/sluice-bench-ext-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) Die("mkdtemp failed");
  const std::string socket = std::string(dir_template) + "/sluiced.sock";
  Child daemon = ForkChild([&](int from_parent, int to_parent) {
    return ServeUntilClosed(f, socket, from_parent, to_parent);
  });
  char ready = 0;
  if (!ReadPod(daemon.from_child, &ready)) Die("the bench's daemon child did not start");
  Child writer = ForkChild([&](int, int to_parent) {
    const SideResult r = WriteThroughService(f, socket);
    return WritePod(to_parent, r) ? 0 : 1;
  });
  SideResult r;
  if (!ReadPod(writer.from_child, &r)) SetMessage(r.error, "the writer child died");
  WaitChild(writer);
  ::close(daemon.to_child);
  daemon.to_child = -1;
  int64_t leaked = 0;
  if (ReadPod(daemon.from_child, &leaked)) r.leaked_segments = leaked;
  WaitChild(daemon);
  ::rmdir(dir_template);
  return r;
}

SideResult InChild(const std::function<SideResult()>& run) {
  Child c = ForkChild([&](int, int to_parent) { return WritePod(to_parent, run()) ? 0 : 1; });
  SideResult r;
  if (!ReadPod(c.from_child, &r)) SetMessage(r.error, "the measuring child died");
  WaitChild(c);
  return r;
}

}  // namespace

int RunExternalBench(const BenchFlags& f) {
  if (f.record_min != f.record_max || f.record_min < 8) {
    std::fprintf(stderr, "sluice-bench: --mode external wants one record size of at least 8 "
                         "bytes\n");
    return 2;
  }
  std::vector<double> in_process, checked, external, ratios, checked_ratios;
  bool healthy = true;
  for (int round = 0; round < f.rounds; ++round) {
    const SideResult a = InChild([&] { return RunInProcess(f, Consume::kDrop); });
    const SideResult c = InChild([&] { return RunInProcess(f, Consume::kCheck); });
    const SideResult b = RunExternal(f);
    for (const SideResult* s : {&a, &c, &b}) {
      if (s->error[0] != 0 || s->leaked_segments != 0 || s->records == 0) {
        std::fprintf(stderr, "sluice-bench external: %s (leaked %lld segments)\n", s->error,
                     static_cast<long long>(s->leaked_segments));
        healthy = false;
      }
    }
    auto ratio = [&b](const SideResult& base) {
      return base.records_per_second() > 0 ? b.records_per_second() / base.records_per_second()
                                           : 0;
    };
    in_process.push_back(a.records_per_second());
    checked.push_back(c.records_per_second());
    external.push_back(b.records_per_second());
    ratios.push_back(ratio(a));
    checked_ratios.push_back(ratio(c));
    if (!f.json) {
      std::printf("round %d: in-process EmitInPlace %.2f M records/s (%.1f MiB/s; its consumer "
                  "checking the framing %.2f M), local writer %.2f M records/s (%.1f MiB/s, %llu "
                  "credit waits), ratio %.2fx (%.2fx)\n",
                  round + 1, a.records_per_second() / 1e6, a.mib_per_second(),
                  c.records_per_second() / 1e6, b.records_per_second() / 1e6, b.mib_per_second(),
                  static_cast<unsigned long long>(b.credit_waits), ratios.back(),
                  checked_ratios.back());
    }
  }
  const double a = tools::Median(in_process), c = tools::Median(checked);
  const double b = tools::Median(external), q = tools::Median(ratios);
  const double qc = tools::Median(checked_ratios);
  if (f.json) {
    std::printf("{\"mode\":\"external\",\"record_size\":%u,\"channels\":%u,\"rounds\":%d,"
                "\"in_process_records_per_second\":%.0f,"
                "\"in_process_checked_records_per_second\":%.0f,"
                "\"external_records_per_second\":%.0f,\"ratio\":%.3f,\"ratio_to_checked\":%.3f,"
                "\"writer_credit\":%u,\"healthy\":%s}\n",
                f.record_min, f.channels, f.rounds, a, c, b, q, qc, WriterCredit(f),
                healthy ? "true" : "false");
  } else {
    std::printf("median of %d rounds: in-process %.2f M records/s, local writer %.2f M records/s, "
                "ratio %.2fx; against an in-process consumer that checks the framing as the "
                "daemon does (%.2f M records/s): %.2fx (writer credit %u segments; the sink "
                "releases at once)\n",
                f.rounds, a / 1e6, b / 1e6, q, c / 1e6, qc, WriterCredit(f));
  }
  return healthy ? 0 : 1;
}

}  // namespace sluice::bench
