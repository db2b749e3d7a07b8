// Throughput of the transport between two processes over loopback TCP, next to a raw libuv
// socket pump of the same bytes between the same two processes, in the same run.
//
//   sluice_transport_bench [--seconds 2.5] [--segment-size 32768] [--rounds 3]
//                          [--window-mib 4] [--raw-inflight 4] [--metadata 24] [--only
//                          raw|transport]
//
// Each transport round spawns this binary again as the receiver (--receiver transport), which
// prints its port, counts what arrives until EOF and prints the bytes and the seconds from its
// first byte to EOF. The sender pushes for --seconds and closes.
//   raw:       tools/bench/raw_pump.h (shared with sluice-bench): uv_write of segment-size
//              buffers back to back, --raw-inflight writes in flight, into a forked receiver
//              that reads into one 64 KiB buffer and counts. --raw-bufs-per-write N gathers N
//              such buffers per uv_write: a stricter baseline with the transport's write
//              pattern (the transport sends up to 256 frames per uv_write).
//   transport: TcpClient -> TcpServer; frames of --metadata bytes plus one full segment of
//              payload; the sender keeps about --window-mib queued (refilled in OnWritable and
//              after every loop iteration) and reuses 8 segments (Buffer::Share); the receiver
//              reads each payload straight into a segment of its NetworkBufferPool.
// GB/s counts payload bytes (10^9 bytes per second); the median of the rounds is reported with
// the ratio transport/raw (target >= 0.9).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "buffer/buffer.h"
#include "buffer/network_buffer_pool.h"
#include "transport/connection.h"
#include "transport/event_loop.h"
#include "transport/tcp.h"
#include "tools/bench/raw_pump.h"

namespace sluice::transport {
namespace {

constexpr uint8_t kDataFrame = 2;

struct Flags {
  double seconds = 2.5;
  uint32_t segment_size = 32 * 1024;
  int rounds = 3;
  size_t window_bytes = 4u << 20;
  int raw_inflight = 4;
  int raw_bufs_per_write = 1;  // >1: a stricter baseline, gathered like the transport's writes
  uint32_t metadata = 24;
  std::string only;      // "", "raw" or "transport"
  std::string receiver;  // child mode
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "sluice_transport_bench: %s\n", what.c_str());
  std::exit(2);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--seconds") {
      f.seconds = std::stod(next());
    } else if (a == "--segment-size") {
      f.segment_size = static_cast<uint32_t>(std::stoul(next()));
    } else if (a == "--rounds") {
      f.rounds = std::stoi(next());
    } else if (a == "--window-mib") {
      f.window_bytes = static_cast<size_t>(std::stod(next()) * (1u << 20));
    } else if (a == "--raw-inflight") {
      f.raw_inflight = std::stoi(next());
    } else if (a == "--raw-bufs-per-write") {
      f.raw_bufs_per_write = std::max(1, std::stoi(next()));
    } else if (a == "--metadata") {
      f.metadata = static_cast<uint32_t>(std::stoul(next()));
    } else if (a == "--only") {
      f.only = next();
    } else if (a == "--receiver") {
      f.receiver = next();
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "sluice_transport_bench [--seconds S] [--segment-size B] [--rounds N] [--window-mib M]\n"
          "                       [--raw-inflight N] [--raw-bufs-per-write N] [--metadata B]\n"
          "                       [--only raw|transport]\n");
      std::exit(0);
    } else {
      Die("unknown flag '" + a + "' (see --help)");
    }
  }
  if (f.segment_size < 4096 || f.segment_size > (1u << 20) ||
      (f.segment_size & (f.segment_size - 1)) != 0) {
    Die("--segment-size must be a power of two from 4096 to 1048576");
  }
  return f;
}

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// Receiver (child process). Prints "PORT <n>", then "RESULT <bytes> <seconds> <cpu seconds>".

struct ReceiverResult {
  uint64_t payload_bytes = 0;
  uint64_t first_ns = 0;
  uint64_t last_ns = 0;
};

// Takes each payload into a pool segment and lets it go at once (a consumer that keeps up).
class CountingHandler : public ConnectionHandler {
 public:
  CountingHandler(buffer::NetworkBufferPool* pool, std::promise<ReceiverResult>* done)
      : pool_(pool), done_(done) {}
  Admission OnFrame(const FrameHeader& h, std::span<const uint8_t>) override {
    if (result_.first_ns == 0) result_.first_ns = uv_hrtime();
    if (h.payload_length() == 0) return {};
    buffer::MemorySegment* seg = pool_->TryRequestSegment();
    if (seg == nullptr) return {};  // refused: NoBufferForPayload (cannot happen here)
    return buffer::Buffer::Wrap(seg, pool_->direct_recycler());
  }
  Status OnPayload(buffer::Buffer payload) override {
    result_.payload_bytes += payload.size();
    return {};
  }
  void OnClosed(const Status&) override {
    result_.last_ns = uv_hrtime();
    done_->set_value(result_);
  }

 private:
  buffer::NetworkBufferPool* const pool_;
  std::promise<ReceiverResult>* const done_;
  ReceiverResult result_;
};

TransportOptions BenchOptions(uint32_t segment_size) {
  TransportOptions o;
  o.limits.max_payload = segment_size;
  o.limits.known_types.set(kDataFrame);
  o.limits.payload_types.set(kDataFrame);
  o.heartbeat_interval = std::chrono::milliseconds(0);
  o.idle_timeout = std::chrono::milliseconds(0);
  o.handshake_timeout = std::chrono::milliseconds(0);
  return o;
}

int RunTransportReceiver(const Flags& f) {
  buffer::NetworkBufferPoolOptions po;
  po.segment_size = f.segment_size;
  po.network_memory = uint64_t{64} * f.segment_size;
  po.preallocate = true;
  auto pool = std::move(buffer::NetworkBufferPool::Create(po)).value();
  auto loop = std::move(EventLoop::Start("bench-recv")).value();
  std::promise<ReceiverResult> done;
  auto done_f = done.get_future();
  ServerOptions so;
  so.transport = BenchOptions(f.segment_size);
  so.max_connections = 1;
  auto server = TcpServer::Start(loop.get(), so, [&](Connection& c) {
    c.MarkEstablished();
    return std::make_unique<CountingHandler>(pool.get(), &done);
  });
  if (!server.ok()) Die(server.status().ToString());
  std::printf("PORT %u\n", server.value()->port());
  std::fflush(stdout);
  const double cpu0 = CpuSeconds();
  const ReceiverResult r = done_f.get();
  const double cpu = CpuSeconds() - cpu0;
  server.value()->Stop();
  server = Status(StatusCode::kCancelled, "done");
  loop->Stop();
  std::printf("RESULT %llu %.6f %.3f\n", static_cast<unsigned long long>(r.payload_bytes),
              static_cast<double>(r.last_ns - r.first_ns) / 1e9, cpu);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Sender (parent process).

// Keeps about `window` bytes queued on the connection, reusing a few segments.
class PumpHandler : public ConnectionHandler {
 public:
  PumpHandler(Connection& c, std::vector<buffer::Buffer> segments, std::vector<uint8_t> metadata,
              size_t window)
      : conn_(&c),
        segments_(std::move(segments)),
        metadata_(std::move(metadata)),
        window_(window) {}
  Admission OnFrame(const FrameHeader&, std::span<const uint8_t>) override { return {}; }
  Status OnPayload(buffer::Buffer) override { return {}; }
  void OnClosed(const Status&) override {
    stopped_ = true;
    closed_.set_value();
  }
  // Ready once the connection closed (after CloseAfterFlush wrote everything queued).
  std::future<void> ClosedFuture() { return closed_.get_future(); }
  void OnWritable() override { Refill(); }
  void Refill() {
    if (stopped_ || conn_->closing()) return;
    while (conn_->queued_bytes() < window_) {
      conn_->Send(OutFrame::Make(kDataFrame, metadata_, segments_[next_].Share()));
      next_ = (next_ + 1) % segments_.size();
    }
  }
  void Stop() { stopped_ = true; }

 private:
  Connection* const conn_;
  std::vector<buffer::Buffer> segments_;
  const std::vector<uint8_t> metadata_;
  const size_t window_;
  size_t next_ = 0;
  bool stopped_ = false;
  std::promise<void> closed_;
};

void RunTransportSender(uint16_t port, const Flags& f) {
  buffer::NetworkBufferPoolOptions po;
  po.segment_size = f.segment_size;
  po.network_memory = uint64_t{16} * f.segment_size;
  po.preallocate = true;
  auto pool = std::move(buffer::NetworkBufferPool::Create(po)).value();
  auto loop = std::move(EventLoop::Start("bench-send")).value();
  PumpHandler* pump = nullptr;  // loop thread
  TcpClient client(loop.get(), BenchOptions(f.segment_size), [&](Connection& c) {
    c.MarkEstablished();
    std::vector<buffer::Buffer> segs;
    for (int i = 0; i < 8; ++i) {
      buffer::Buffer b = buffer::Buffer::Wrap(pool->TryRequestSegment(), pool->direct_recycler());
      for (uint32_t k = 0; k < f.segment_size; ++k) b.data()[k] = static_cast<uint8_t>(k * 7);
      b.SetSize(f.segment_size);
      segs.push_back(std::move(b));
    }
    auto h = std::make_unique<PumpHandler>(c, std::move(segs), std::vector<uint8_t>(f.metadata, 1),
                                           f.window_bytes);
    pump = h.get();
    return h;
  });
  std::promise<Result<std::shared_ptr<Connection>>> connected;
  auto connected_f = connected.get_future();
  client.GetOrConnect({"127.0.0.1", port}, [&](Result<std::shared_ptr<Connection>> r) {
    connected.set_value(std::move(r));
  });
  auto conn = connected_f.get();
  if (!conn.ok()) Die(conn.status().ToString());
  // Top up after every loop iteration as well as in OnWritable, so the queue never runs dry.
  auto* check = new uv_check_t;
  loop->Post([&, check] {
    uv_check_init(loop->loop(), check);
    check->data = pump;
    uv_check_start(check, [](uv_check_t* c) { static_cast<PumpHandler*>(c->data)->Refill(); });
    pump->Refill();
  });
  std::this_thread::sleep_for(std::chrono::duration<double>(f.seconds));
  // Stop refilling and close once everything queued is written (TcpClient::Stop would cut the
  // queue short and leave the receiver a truncated frame).
  std::promise<std::future<void>> closing;
  loop->Post([&, check] {
    pump->Stop();
    uv_close(reinterpret_cast<uv_handle_t*>(check),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
    closing.set_value(pump->ClosedFuture());
    conn.value()->CloseAfterFlush(ClosedError("benchmark done"));
  });
  closing.get_future().get().wait();
  conn = Status(StatusCode::kCancelled, "done");
  client.Stop();
  loop->Stop();
}

// ---------------------------------------------------------------------------------------------
// Driver

struct RoundResult {
  double gbps = 0;
  double receiver_cpu = 0;  // fraction of one core
};

// The raw pump (tools/bench/raw_pump.h, shared with sluice-bench) forks its own receiver.
RoundResult RunRawRound(const Flags& f) {
  bench::RawPumpOptions o;
  o.seconds = f.seconds;
  o.block_size = f.segment_size;
  o.inflight = f.raw_inflight;
  o.bufs_per_write = f.raw_bufs_per_write;
  const bench::PumpResult p = bench::RunRawPump(o);
  RoundResult r;
  r.gbps = p.seconds > 0 ? static_cast<double>(p.bytes) / p.seconds / 1e9 : 0;
  std::printf("  %-9s %6.2f GB/s  (%.2f GB in %.2f s)\n", "raw", r.gbps,
              static_cast<double>(p.bytes) / 1e9, p.seconds);
  std::fflush(stdout);
  return r;
}

RoundResult RunTransportRound(const char* self, const Flags& f) {
  const std::string mode = "transport";
  int out[2];
  if (pipe(out) != 0) Die("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) Die("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the sender (kept across exec)
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    const std::string seg = std::to_string(f.segment_size);
    execl(self, self, "--receiver", mode.c_str(), "--segment-size", seg.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* in = fdopen(out[0], "r");
  unsigned port = 0;
  if (std::fscanf(in, "PORT %u", &port) != 1) Die("receiver did not start");
  const double cpu0 = CpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  RunTransportSender(static_cast<uint16_t>(port), f);
  const double sender_wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double sender_cpu = CpuSeconds() - cpu0;
  unsigned long long bytes = 0;
  double secs = 0;
  double rcpu = 0;
  if (std::fscanf(in, " RESULT %llu %lf %lf", &bytes, &secs, &rcpu) != 3) Die("receiver failed");
  fclose(in);
  int status = 0;
  waitpid(pid, &status, 0);
  RoundResult r;
  r.gbps = secs > 0 ? static_cast<double>(bytes) / secs / 1e9 : 0;
  r.receiver_cpu = secs > 0 ? rcpu / secs : 0;
  std::printf("  %-9s %6.2f GB/s  (%.2f GB in %.2f s; sender cpu %.0f%%, receiver cpu %.0f%%)\n",
              mode.c_str(), r.gbps, static_cast<double>(bytes) / 1e9, secs,
              100 * sender_cpu / sender_wall, 100 * r.receiver_cpu);
  std::fflush(stdout);
  return r;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  if (f.receiver == "transport") return RunTransportReceiver(f);
  if (!f.receiver.empty()) Die("--receiver must be transport");
  signal(SIGPIPE, SIG_IGN);
  const char* self = "/proc/self/exe";
  char path[4096];
  const ssize_t n = readlink(self, path, sizeof(path) - 1);
  if (n <= 0) Die("cannot find this executable");
  path[n] = 0;
  std::printf(
      "sluice_transport_bench: %u-byte segments, %.1f s x %d rounds, window %.1f MiB, "
      "raw in flight %d x %d buffers, metadata %u bytes\n",
      f.segment_size, f.seconds, f.rounds, static_cast<double>(f.window_bytes) / (1 << 20),
      f.raw_inflight, f.raw_bufs_per_write, f.metadata);
  std::vector<double> raw;
  std::vector<double> transport;
  for (int r = 0; r < f.rounds; ++r) {
    std::printf("round %d\n", r + 1);
    if (f.only != "transport") raw.push_back(RunRawRound(f).gbps);
    if (f.only != "raw") transport.push_back(RunTransportRound(path, f).gbps);
  }
  const double mr = Median(raw);
  const double mt = Median(transport);
  std::printf("median raw libuv pump: %.2f GB/s\n", mr);
  std::printf("median transport:      %.2f GB/s\n", mt);
  if (mr > 0 && mt > 0) std::printf("ratio transport/raw:   %.3f (target >= 0.9)\n", mt / mr);
  return 0;
}

}  // namespace
}  // namespace sluice::transport

int main(int argc, char** argv) { return sluice::transport::Main(argc, argv); }
