#include "tools/bench/raw_latency.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "tools/bench/child_process.h"

namespace sluice::bench {
namespace {

uint64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void CheckSys(bool ok, const char* what) {
  if (!ok) Die(std::string("raw latency: ") + what + ": " + std::strerror(errno));
}

double Percentile(const std::vector<uint64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0;
  const size_t i = std::min(sorted_ns.size() - 1, static_cast<size_t>(q * sorted_ns.size()));
  return static_cast<double>(sorted_ns[i]) / 1000.0;
}

// Child: accepts one connection, reads whole messages until EOF, stamps each on arrival.
int RunReceiver(int listen_fd, uint32_t message_size, int to_parent) {
  const int fd = ::accept(listen_fd, nullptr, nullptr);
  if (fd < 0) return 1;
  std::vector<uint8_t> message(message_size);
  std::vector<uint64_t> latencies;
  while (ReadAll(fd, message.data(), message.size())) {
    const uint64_t now = NowNs();
    uint64_t sent;
    std::memcpy(&sent, message.data(), sizeof(sent));
    latencies.push_back(now > sent ? now - sent : 0);
  }
  ::close(fd);
  const LatencyResult r = SummarizeLatencies(latencies);
  return WritePod(to_parent, r) ? 0 : 1;
}

}  // namespace

LatencyResult SummarizeLatencies(std::vector<uint64_t>& latencies_ns) {
  std::sort(latencies_ns.begin(), latencies_ns.end());
  LatencyResult r;
  r.samples = latencies_ns.size();
  r.p50_us = Percentile(latencies_ns, 0.50);
  r.p99_us = Percentile(latencies_ns, 0.99);
  r.p999_us = Percentile(latencies_ns, 0.999);
  r.max_us = latencies_ns.empty() ? 0 : static_cast<double>(latencies_ns.back()) / 1000.0;
  return r;
}

LatencyResult RunRawLatency(const RawLatencyOptions& o) {
  const uint32_t size = std::max<uint32_t>(o.message_size, sizeof(uint64_t));
  const int listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CheckSys(listen_fd >= 0, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CheckSys(::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "bind");
  CheckSys(::listen(listen_fd, 1) == 0, "listen");
  socklen_t len = sizeof(addr);
  CheckSys(::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0,
           "getsockname");
  Child child = ForkChild([&](int, int to_parent) { return RunReceiver(listen_fd, size, to_parent); });
  ::close(listen_fd);

  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CheckSys(fd >= 0, "socket");
  CheckSys(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "connect");
  const int one = 1;
  CheckSys(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0, "TCP_NODELAY");
  std::vector<uint8_t> message(size, 0x5A);
  const uint64_t period = 1000000000ull / std::max<uint32_t>(o.rate, 1);
  const uint64_t count = static_cast<uint64_t>(o.seconds * std::max<uint32_t>(o.rate, 1));
  uint64_t next = NowNs();
  for (uint64_t i = 0; i < count; ++i) {
    next += period;
    const timespec at{static_cast<time_t>(next / 1000000000ull),
                      static_cast<long>(next % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, nullptr) != 0) {
    }
    const uint64_t stamp = NowNs();
    std::memcpy(message.data(), &stamp, sizeof(stamp));
    CheckSys(WriteAll(fd, message.data(), message.size()), "write");
  }
  ::close(fd);
  LatencyResult out;
  if (!ReadPod(child.from_child, &out)) Die("raw latency receiver failed");
  WaitChild(child);
  return out;
}

}  // namespace sluice::bench
