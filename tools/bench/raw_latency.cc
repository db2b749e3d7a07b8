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
#include "tools/bench/turn_board.h"

namespace sluice::bench {
namespace {

// A message is [scheduled send time][actual write time, when the message has room].
constexpr size_t kActualStampEnd = 2 * sizeof(uint64_t);

void CheckSys(bool ok, const char* what) {
  if (!ok) Die(std::string("raw latency: ") + what + ": " + std::strerror(errno));
}

// Child: accepts one connection, reads whole messages until EOF, stamps each on arrival but the
// first `warmup` ones.
int RunReceiver(int listen_fd, uint32_t message_size, uint64_t warmup, int to_parent) {
  const int fd = ::accept(listen_fd, nullptr, nullptr);
  if (fd < 0) return 1;
  std::vector<uint8_t> message(message_size);
  LatencyRecorder latencies, from_actual;
  const bool actual_stamped = message_size >= kActualStampEnd;
  for (uint64_t i = 0; ReadAll(fd, message.data(), message.size()); ++i) {
    const uint64_t now = MonotonicNowNs();
    if (i < warmup) continue;
    uint64_t scheduled;
    std::memcpy(&scheduled, message.data(), sizeof(scheduled));
    latencies.Record(scheduled, now);
    if (actual_stamped) {
      uint64_t actual;
      std::memcpy(&actual, message.data() + sizeof(scheduled), sizeof(actual));
      from_actual.Record(actual, now);
    }
  }
  ::close(fd);
  const RawLatencyResult r{latencies.Summarize(), from_actual.Summarize()};
  return WritePod(to_parent, r) ? 0 : 1;
}

}  // namespace

RawLatencyResult RunRawLatency(const RawLatencyOptions& o) {
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
  const uint32_t rate = std::max<uint32_t>(o.rate, 1);
  const auto warmup = static_cast<uint64_t>(o.warmup * rate);
  Child child = ForkChild(
      [&](int, int to_parent) { return RunReceiver(listen_fd, size, warmup, to_parent); });
  ::close(listen_fd);

  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CheckSys(fd >= 0, "socket");
  CheckSys(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "connect");
  const int one = 1;
  CheckSys(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0, "TCP_NODELAY");
  std::vector<uint8_t> message(size, 0x5A);
  const uint64_t count = warmup + static_cast<uint64_t>(o.seconds * rate);
  Pacer pacer = StartPacer(rate);  // in its turns with --interleave-ms
  for (uint64_t i = 0; i < count; ++i) {
    // The scheduled time, not the actual one: a write that blocked delays the next messages
    // and their latency shows it.
    const uint64_t scheduled = pacer.Next();
    std::memcpy(message.data(), &scheduled, sizeof(scheduled));
    if (size >= kActualStampEnd) {
      const uint64_t actual = MonotonicNowNs();
      std::memcpy(message.data() + sizeof(scheduled), &actual, sizeof(actual));
    }
    CheckSys(WriteAll(fd, message.data(), message.size()), "write");
  }
  ::close(fd);
  RawLatencyResult out;
  if (!ReadPod(child.from_child, &out)) Die("raw latency receiver failed");
  WaitChild(child);
  return out;
}

}  // namespace sluice::bench
