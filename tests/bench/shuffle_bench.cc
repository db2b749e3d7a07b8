// First figure for the shuffle data path: a producer process and a consumer process over one
// loopback connection, C channels (default 64), fixed-size records (default 100 bytes), next
// to the raw libuv pump between two processes measured in the same run (by running
// sluice_transport_bench --only raw from the same build directory).
//
//   sluice_shuffle_bench [--channels 64] [--record-size 100] [--seconds 3] [--rounds 3]
//                        [--segment-size 32768] [--buffer-timeout-ms 100]
//
// The full tool with modes, sweeps and JSON is sluice-bench (its own issue); this one prints
// records/s and MiB/s of record bytes (length prefixes excluded) and the ratio to the pump.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shuffle/record_reader.h"
#include "shuffle/shuffle_environment.h"

namespace sluice::shuffle {
namespace {

struct Flags {
  uint32_t channels = 64;
  uint32_t record_size = 100;
  double seconds = 3;
  int rounds = 3;
  uint32_t segment_size = 32 * 1024;
  int buffer_timeout_ms = 100;
};

[[noreturn]] void Die(const std::string& m) {
  std::fprintf(stderr, "sluice_shuffle_bench: %s\n", m.c_str());
  std::exit(2);
}

EnvironmentConfig Config(const Flags& f, const char* name) {
  EnvironmentConfig c;
  c.node_name = name;
  c.memory.segment_size = f.segment_size;
  c.memory.network_memory = 64u << 20;
  c.options.buffer_timeout = std::chrono::milliseconds(f.buffer_timeout_ms);
  return c;
}

// Child: serves partition "p0" and emits round-robin for `seconds`, then finishes.
[[noreturn]] void RunProducer(const Flags& f, int port_fd) {
  auto env = ShuffleEnvironment::Start(Config(f, "bench-producer"));
  if (!env.ok()) Die(env.status().ToString());
  auto part = (*env)->CreatePartition("p0", f.channels);
  if (!part.ok()) Die(part.status().ToString());
  const uint16_t port = (*env)->port();
  if (write(port_fd, &port, sizeof(port)) != sizeof(port)) Die("pipe");
  close(port_fd);
  std::vector<uint8_t> record(f.record_size, 0x5A);
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::duration<double>(f.seconds);
  uint64_t i = 0;
  while (true) {
    for (int k = 0; k < 1024; ++k, ++i) {
      std::memcpy(record.data(), &i, std::min<size_t>(8, record.size()));
      if (!(*part)->Emit(record, static_cast<uint32_t>(i % f.channels)).ok()) _exit(3);
    }
    if (std::chrono::steady_clock::now() >= end) break;
  }
  if (!(*part)->Finish().ok()) _exit(4);
  // Wait until the consumer has everything and closes its connection, then leave.
  while ((*env)->server()->connection_count() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  (*env)->ReleasePartition("p0");
  (*env)->Stop();
  _exit(0);
}

struct Round {
  double records_per_s = 0;
  double mib_per_s = 0;
};

Round RunRound(const Flags& f) {
  int fds[2];
  if (pipe(fds) != 0) Die("pipe");
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    close(fds[0]);
    RunProducer(f, fds[1]);
  }
  close(fds[1]);
  uint16_t port = 0;
  if (read(fds[0], &port, sizeof(port)) != sizeof(port)) Die("producer did not start");
  close(fds[0]);
  auto env = ShuffleEnvironment::Start(Config(f, "bench-consumer"));
  if (!env.ok()) Die(env.status().ToString());
  std::vector<ChannelSpec> specs;
  for (uint32_t c = 0; c < f.channels; ++c) specs.push_back({"p0", c, transport::Endpoint{"127.0.0.1", port}});
  auto gate = (*env)->CreateInputGate("bench", specs);
  if (!gate.ok()) Die(gate.status().ToString());
  uint64_t records = 0;
  uint64_t bytes = 0;
  std::chrono::steady_clock::time_point first;
  {
    RecordReader reader(gate->get());
    while (true) {
      auto item = reader.Next(std::chrono::seconds(30));
      if (!item.ok()) Die(item.status().ToString());
      if (item->kind == RecordReader::Kind::kEndOfInput) break;
      if (item->kind == RecordReader::Kind::kTimeout) Die("consumer timed out");
      if (item->kind != RecordReader::Kind::kRecord) continue;
      if (records++ == 0) first = std::chrono::steady_clock::now();
      bytes += item->data.size();
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
  (*gate)->Close();
  (*env)->client().Stop();  // closes the connection: the producer process exits
  int status = 0;
  waitpid(child, &status, 0);
  const bool leak = (*env)->pool()->available_segments() != (*env)->pool()->total_segments();
  (*env)->Stop();
  if (leak) Die("consumer leaked segments");
  return {records / secs, bytes / secs / (1 << 20)};
}

double RawPumpMibPerSecond(const Flags& f) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return 0;
  self[n] = 0;
  std::string dir(self);
  dir = dir.substr(0, dir.rfind('/'));
  const std::string cmd = dir + "/sluice_transport_bench --only raw --rounds 1 --seconds " +
                          std::to_string(f.seconds) + " --segment-size " +
                          std::to_string(f.segment_size) + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return 0;
  char line[512];
  double gbps = 0;
  while (std::fgets(line, sizeof(line), p) != nullptr) {
    std::sscanf(line, "median raw libuv pump: %lf GB/s", &gbps);
  }
  pclose(p);
  return gbps * 1e9 / (1 << 20);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) Die("missing value after " + a);
    const std::string v = argv[++i];
    if (a == "--channels") f.channels = static_cast<uint32_t>(std::stoul(v));
    else if (a == "--record-size") f.record_size = static_cast<uint32_t>(std::stoul(v));
    else if (a == "--seconds") f.seconds = std::stod(v);
    else if (a == "--rounds") f.rounds = std::stoi(v);
    else if (a == "--segment-size") f.segment_size = static_cast<uint32_t>(std::stoul(v));
    else if (a == "--buffer-timeout-ms") f.buffer_timeout_ms = std::stoi(v);
    else Die("unknown flag " + a);
  }
  signal(SIGPIPE, SIG_IGN);
  std::printf("sluice_shuffle_bench: remote, %u channels, %u-byte records, %u-byte segments, "
              "%.1f s x %d rounds\n",
              f.channels, f.record_size, f.segment_size, f.seconds, f.rounds);
  std::vector<double> rps, mibs, pump;
  for (int r = 0; r < f.rounds; ++r) {
    const Round round = RunRound(f);
    const double p = RawPumpMibPerSecond(f);
    std::printf("round %d: %.2f M records/s, %.1f MiB/s; raw pump %.1f MiB/s\n", r + 1,
                round.records_per_s / 1e6, round.mib_per_s, p);
    rps.push_back(round.records_per_s);
    mibs.push_back(round.mib_per_s);
    pump.push_back(p);
  }
  const double m = Median(mibs);
  const double mp = Median(pump);
  std::printf("median: %.2f M records/s, %.1f MiB/s; raw pump %.1f MiB/s; ratio %.3f\n",
              Median(rps) / 1e6, m, mp, mp > 0 ? m / mp : 0.0);
  return 0;
}

}  // namespace
}  // namespace sluice::shuffle

int main(int argc, char** argv) { return sluice::shuffle::Main(argc, argv); }
