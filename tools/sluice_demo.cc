// sluice-demo: a producer and a consumer passing buffers through a deliberately tiny pool, so
// that backpressure is visible: the producer blocks whenever the consumer holds every buffer.
// Prints pool usage as it goes and ends with the leak check. Exit status 0 only when every
// record arrived in order and every segment went back.
//   sluice-demo [--records N] [--segment-size SIZE] [--segments N] [--help] [--version]
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "buffer/local_buffer_pool.h"
#include "buffer/network_buffer_pool.h"
#include "tools/common/cli.h"

namespace {

using sluice::buffer::Buffer;

struct Args {
  uint64_t records = 2'000'000;
  uint32_t segment_size = 4096;
  uint32_t segments = 16;
};

// Parses the flags (tools/common/cli.h conventions). Returns -1 to go on, else the exit code.
int ParseArgs(int argc, char** argv, Args* a) {
  CLI::App app("A producer and a consumer passing buffers through a deliberately tiny pool, "
               "so that backpressure is visible; ends with the leak check.",
               "sluice-demo");
  sluice::tools::AddVersionFlag(app, "sluice-demo");
  app.add_option("--records", a->records, "records of 8 bytes to pass")->capture_default_str();
  app.add_option("--segment-size", a->segment_size, "bytes per segment (k/m/g), e.g. 4k")
      ->transform(sluice::tools::SizeValue())
      ->capture_default_str();
  app.add_option("--segments", a->segments, "segments in the global pool")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  return sluice::tools::ParseOrExit(app, argc, argv);
}

// A bounded hand-off between the two threads (the demo's stand-in for a channel).
class Handoff {
 public:
  void Push(Buffer b) {
    std::lock_guard lock(mu_);
    q_.push_back(std::move(b));
    cv_.notify_one();
  }
  Buffer Pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty(); });
    Buffer b = std::move(q_.front());
    q_.pop_front();
    return b;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Buffer> q_;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (const int exit_code = ParseArgs(argc, argv, &args); exit_code >= 0) return exit_code;
  sluice::buffer::NetworkBufferPoolOptions o;
  o.segment_size = args.segment_size;
  o.network_memory = static_cast<uint64_t>(args.segments) * args.segment_size;
  auto global = sluice::buffer::NetworkBufferPool::Create(o);
  if (!global.ok()) {
    std::fprintf(stderr, "sluice-demo: %s\n", global.status().ToString().c_str());
    return 2;
  }
  sluice::buffer::LocalBufferPoolOptions lo;
  lo.name = "demo-output";
  lo.min_segments = 2;
  lo.max_segments = 4;
  auto pool = (*global)->CreateLocalBufferPool(lo);
  if (!pool.ok()) {
    std::fprintf(stderr, "sluice-demo: %s\n", pool.status().ToString().c_str());
    return 2;
  }
  std::printf("sluice-demo: %llu records of 8 bytes through a pool of min %u / max %u segments "
              "of %u bytes (%s)\n",
              static_cast<unsigned long long>(args.records), lo.min_segments, lo.max_segments,
              args.segment_size, (*global)->DebugString().c_str());

  const uint32_t per_buffer = args.segment_size / 8;
  Handoff handoff;
  uint64_t blocked = 0;
  const auto start = std::chrono::steady_clock::now();
  std::thread producer([&] {
    uint64_t next = 0;
    while (next < args.records) {
      Buffer b = (*pool)->RequestBuffer();
      if (!b) {
        ++blocked;  // backpressure: wait for the consumer to give one back
        auto r = (*pool)->RequestBufferBlocking(-1, std::chrono::seconds(10));
        if (!r.ok()) {
          std::fprintf(stderr, "sluice-demo: %s\n", r.status().ToString().c_str());
          std::exit(1);
        }
        b = std::move(*r);
      }
      uint32_t n = 0;
      for (; n < per_buffer && next < args.records; ++n, ++next) {
        std::memcpy(b.data() + n * 8, &next, 8);
      }
      b.SetSize(n * 8);
      handoff.Push(std::move(b));
    }
    handoff.Push(Buffer());  // end marker
  });

  uint64_t expected = 0;
  bool in_order = true;
  uint64_t buffers = 0;
  while (Buffer b = handoff.Pop()) {
    for (uint32_t off = 0; off < b.size(); off += 8) {
      uint64_t v;
      std::memcpy(&v, b.data() + off, 8);
      in_order &= v == expected++;
    }
    if (++buffers % 20000 == 0) {
      const auto s = (*pool)->Stats();
      std::printf("  %8llu buffers  pool size %u, lent %u, queued %u\n",
                  static_cast<unsigned long long>(buffers), s.size, s.lent, s.queued);
    }
  }
  producer.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  (*pool)->Destroy();
  const uint32_t available = (*global)->available_segments();
  const uint32_t total = (*global)->total_segments();
  const bool ok = in_order && expected == args.records && available == total;
  std::printf("records %llu in order: %s; buffers %llu; producer blocked %llu times; %.2f s "
              "(%.1f M records/s)\nleak check: %u of %u segments back in the global pool: %s\n",
              static_cast<unsigned long long>(expected), in_order ? "yes" : "NO",
              static_cast<unsigned long long>(buffers), static_cast<unsigned long long>(blocked),
              secs, expected / secs / 1e6, available, total, available == total ? "ok" : "LEAK");
  return ok ? 0 : 1;
}
