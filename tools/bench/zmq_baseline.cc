#include "tools/bench/zmq_baseline.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "tools/bench/child_process.h"
#include "tools/bench/turn_board.h"

#ifdef SLUICE_BENCH_HAVE_ZMQ
#include <zmq.h>
#endif

namespace sluice::bench {

#ifndef SLUICE_BENCH_HAVE_ZMQ

bool ZmqAvailable() { return false; }

ZmqLatencyResult RunZmqLatency(const RawLatencyOptions&) {
  ZmqLatencyResult r;
  SetMessage(r.error, "built without libzmq");
  return r;
}

ZmqThroughputResult RunZmqThroughput(const ZmqThroughputOptions&) {
  ZmqThroughputResult r;
  SetMessage(r.error, "built without libzmq");
  return r;
}

#else  // SLUICE_BENCH_HAVE_ZMQ

namespace {

// A receiver that hears nothing this long gives up (the sender died).
constexpr int kReceiveTimeoutMs = 30000;
// What the sender waits at the end for its queued messages to leave.
constexpr int kLingerMs = 30000;
// Latency messages: the scheduled send time, then a kind, then (when the message has room) the
// time the sender actually handed it to zmq_send.
enum : uint64_t { kMeasured = 0, kWarmup = 1, kEnd = 2 };
constexpr size_t kLatencyHeader = 16;
constexpr size_t kActualStampEnd = 24;

std::string ZmqError(const char* what) {
  return std::string("zeromq: ") + what + ": " + zmq_strerror(zmq_errno());
}

// A context and one socket of `type`, closed (lingering up to kLingerMs) on destruction.
class ZmqSocket {
 public:
  explicit ZmqSocket(int type) : ctx_(zmq_ctx_new()) {
    if (ctx_ != nullptr) socket_ = zmq_socket(ctx_, type);
    if (socket_ != nullptr) {
      zmq_setsockopt(socket_, ZMQ_LINGER, &kLingerMs, sizeof(kLingerMs));
      zmq_setsockopt(socket_, ZMQ_RCVTIMEO, &kReceiveTimeoutMs, sizeof(kReceiveTimeoutMs));
    }
  }
  ~ZmqSocket() {
    if (socket_ != nullptr) zmq_close(socket_);
    if (ctx_ != nullptr) zmq_ctx_term(ctx_);
  }
  ZmqSocket(const ZmqSocket&) = delete;
  ZmqSocket& operator=(const ZmqSocket&) = delete;

  void* get() const { return socket_; }

  // Binds to an ephemeral loopback port and returns it (0 on failure).
  uint16_t BindLoopback() {
    if (socket_ == nullptr || zmq_bind(socket_, "tcp://127.0.0.1:*") != 0) return 0;
    char endpoint[256] = {};
    size_t len = sizeof(endpoint);
    if (zmq_getsockopt(socket_, ZMQ_LAST_ENDPOINT, endpoint, &len) != 0) return 0;
    const char* colon = std::strrchr(endpoint, ':');
    return colon == nullptr ? 0 : static_cast<uint16_t>(std::atoi(colon + 1));
  }
  bool Connect(uint16_t port) {
    const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    return socket_ != nullptr && zmq_connect(socket_, endpoint.c_str()) == 0;
  }

 private:
  void* ctx_;
  void* socket_ = nullptr;
};

// Runs `receiver` in a forked child that binds a PULL socket and reports a Result over the
// pipe, and `sender` in a second child connected to it. Returns the receiver's Result.
template <typename Result, typename Receive, typename Send>
Result RunPair(Receive receiver, Send sender) {
  Child rx = ForkChild([&](int, int to_parent) {
    Result r;
    {
      ZmqSocket pull(ZMQ_PULL);
      const uint16_t port = pull.BindLoopback();
      if (!WritePod(to_parent, port)) return 1;
      if (port == 0) {
        SetMessage(r.error, ZmqError("bind a PULL socket to 127.0.0.1"));
      } else {
        receiver(pull.get(), &r);
      }
    }
    return WritePod(to_parent, r) ? 0 : 1;
  });
  Result r;
  uint16_t port = 0;
  if (!ReadPod(rx.from_child, &port) || port == 0) {
    if (!ReadPod(rx.from_child, &r)) SetMessage(r.error, "zeromq: the receiver did not start");
    WaitChild(rx);
    return r;
  }
  Child tx = ForkChild([&](int, int) {
    ZmqSocket push(ZMQ_PUSH);
    if (!push.Connect(port)) Die(ZmqError("connect a PUSH socket"));
    return sender(push.get()) ? 0 : 1;
  });
  const int tx_rc = WaitChild(tx);
  if (!ReadPod(rx.from_child, &r)) SetMessage(r.error, "zeromq: the receiver did not report");
  WaitChild(rx);
  if (tx_rc != 0 && r.error[0] == 0) SetMessage(r.error, "zeromq: the sender failed");
  return r;
}

}  // namespace

bool ZmqAvailable() { return true; }

ZmqLatencyResult RunZmqLatency(const RawLatencyOptions& o) {
  const size_t size = std::max<size_t>(o.message_size, kLatencyHeader);
  const uint32_t rate = std::max<uint32_t>(o.rate, 1);
  const uint64_t warmup = std::max<uint64_t>(1, static_cast<uint64_t>(o.warmup * rate));
  const uint64_t measured = static_cast<uint64_t>(o.seconds * rate);
  auto receive = [&](void* pull, ZmqLatencyResult* r) {
    std::vector<uint8_t> message(size);
    LatencyRecorder latencies, from_actual;
    latencies.Reserve(measured);
    if (size >= kActualStampEnd) from_actual.Reserve(measured);
    while (true) {
      const int n = zmq_recv(pull, message.data(), message.size(), 0);
      const uint64_t now = MonotonicNowNs();
      if (n < static_cast<int>(kLatencyHeader)) {
        SetMessage(r->error, n < 0 ? ZmqError("receive") : "zeromq: a short message");
        return;
      }
      uint64_t scheduled, kind;
      std::memcpy(&scheduled, message.data(), 8);
      std::memcpy(&kind, message.data() + 8, 8);
      if (kind == kEnd) break;
      if (kind != kMeasured) continue;
      latencies.Record(scheduled, now);
      if (size >= kActualStampEnd) {
        uint64_t actual;
        std::memcpy(&actual, message.data() + kLatencyHeader, 8);
        from_actual.Record(actual, now);
      }
    }
    r->latency = latencies.Summarize();
    r->from_actual = from_actual.Summarize();
  };
  auto send = [&](void* push) {
    std::vector<uint8_t> message(size, 0x5A);
    Pacer pacer = StartPacer(rate);  // in its turns with --interleave-ms
    for (uint64_t i = 0; i < warmup + measured + 1; ++i) {
      // The scheduled time, not the actual one: a blocked send delays the next messages and
      // their latency shows it.
      const uint64_t scheduled = pacer.Next();
      const uint64_t kind = i < warmup ? kWarmup : i < warmup + measured ? kMeasured : kEnd;
      std::memcpy(message.data(), &scheduled, 8);
      std::memcpy(message.data() + 8, &kind, 8);
      if (size >= kActualStampEnd) {
        const uint64_t actual = MonotonicNowNs();
        std::memcpy(message.data() + kLatencyHeader, &actual, 8);
      }
      if (zmq_send(push, message.data(), message.size(), 0) < 0) return false;
    }
    return true;
  };
  return RunPair<ZmqLatencyResult>(receive, send);
}

namespace {

// Walks the records of one throughput message: [u32 length][record] ..., each record starting
// with its sequence number.
void CountRecords(const uint8_t* p, size_t size, uint64_t* expected_seq, ZmqThroughputResult* r,
                  bool measure) {
  size_t at = 0;
  while (at + 4 <= size) {
    uint32_t len;
    std::memcpy(&len, p + at, 4);
    at += 4;
    if (len < 8 || at + len > size) {
      ++r->order_errors;
      return;
    }
    uint64_t seq;
    std::memcpy(&seq, p + at, 8);
    if (seq != *expected_seq) ++r->order_errors;
    *expected_seq = seq + 1;
    at += len;
    if (measure) {
      ++r->records;
      r->bytes += len;
    }
  }
}

}  // namespace

ZmqThroughputResult RunZmqThroughput(const ZmqThroughputOptions& o) {
  const uint32_t record = std::max<uint32_t>(o.record_size, 8);
  const uint32_t per_message = std::max<uint32_t>(1, o.message_size / (record + 4));
  const size_t message_bytes = static_cast<size_t>(per_message) * (record + 4);
  auto receive = [&](void* pull, ZmqThroughputResult* r) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    uint64_t expected = 0;
    uint64_t first = 0, warm_at = 0, last = 0;
    while (true) {
      if (zmq_msg_recv(&msg, pull, 0) < 0) {
        SetMessage(r->error, ZmqError("receive"));
        break;
      }
      last = MonotonicNowNs();
      const size_t n = zmq_msg_size(&msg);
      if (n == 0) break;  // the end
      if (first == 0) first = last;
      const bool measure = last - first >= static_cast<uint64_t>(o.warmup * 1e9);
      if (measure && warm_at == 0) warm_at = last;
      if (measure) ++r->messages;
      CountRecords(static_cast<const uint8_t*>(zmq_msg_data(&msg)), n, &expected, r, measure);
    }
    zmq_msg_close(&msg);
    r->seconds = warm_at == 0 ? 0 : static_cast<double>(last - warm_at) / 1e9;
  };
  auto send = [&](void* push) {
    // The records' bytes, copied into each message as a producer copies records into a buffer.
    std::vector<uint8_t> source(record);
    for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<uint8_t>(i * 7 + 1);
    const uint64_t end = MonotonicNowNs() + static_cast<uint64_t>((o.seconds + o.warmup) * 1e9);
    uint64_t seq = 0;
    while (MonotonicNowNs() < end) {
      zmq_msg_t msg;
      if (zmq_msg_init_size(&msg, message_bytes) != 0) return false;
      auto* p = static_cast<uint8_t*>(zmq_msg_data(&msg));
      for (uint32_t i = 0; i < per_message; ++i, p += record + 4) {
        std::memcpy(p, &record, 4);
        std::memcpy(p + 4, source.data(), record);
        std::memcpy(p + 4, &seq, 8);
        ++seq;
      }
      if (zmq_msg_send(&msg, push, 0) < 0) {
        zmq_msg_close(&msg);
        return false;
      }
    }
    return zmq_send(push, nullptr, 0, 0) == 0;
  };
  return RunPair<ZmqThroughputResult>(receive, send);
}

#endif  // SLUICE_BENCH_HAVE_ZMQ

}  // namespace sluice::bench
