#include "tools/bench/raw_pump.h"

#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tools/bench/child_process.h"

namespace sluice::bench {
namespace {

void Check(int rc, const char* what) {
  if (rc != 0) Die(std::string("raw pump: ") + what + ": " + uv_strerror(rc));
}

struct Receiver {
  uv_loop_t loop;
  uv_tcp_t server;
  uv_tcp_t client;
  std::vector<char> buf = std::vector<char>(64 * 1024);
  uint64_t bytes = 0;
  uint64_t first_ns = 0;
  uint64_t last_ns = 0;
};

void OnReceiverRead(uv_stream_t* c, ssize_t n, const uv_buf_t*) {
  auto* r = static_cast<Receiver*>(c->loop->data);
  if (n > 0) {
    if (r->bytes == 0) r->first_ns = uv_hrtime();
    r->bytes += static_cast<uint64_t>(n);
    return;
  }
  if (n == 0) return;
  r->last_ns = uv_hrtime();
  uv_close(reinterpret_cast<uv_handle_t*>(c), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&r->server), nullptr);
}

void OnReceiverConnection(uv_stream_t* server, int status) {
  Check(status, "accept");
  auto* r = static_cast<Receiver*>(server->loop->data);
  uv_tcp_init(server->loop, &r->client);
  Check(uv_accept(server, reinterpret_cast<uv_stream_t*>(&r->client)), "accept");
  uv_tcp_nodelay(&r->client, 1);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&r->client),
      [](uv_handle_t* h, size_t, uv_buf_t* b) {
        auto* r2 = static_cast<Receiver*>(h->loop->data);
        *b = uv_buf_init(r2->buf.data(), static_cast<unsigned>(r2->buf.size()));
      },
      OnReceiverRead);
}

// Child: listens, sends its port, counts until EOF, sends the PumpResult.
int RunReceiver(int to_parent) {
  auto r = std::make_unique<Receiver>();
  Check(uv_loop_init(&r->loop), "uv_loop_init");
  r->loop.data = r.get();
  uv_tcp_init(&r->loop, &r->server);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", 0, &addr);
  Check(uv_tcp_bind(&r->server, reinterpret_cast<sockaddr*>(&addr), 0), "bind");
  Check(uv_listen(reinterpret_cast<uv_stream_t*>(&r->server), 1, OnReceiverConnection), "listen");
  int len = sizeof(addr);
  uv_tcp_getsockname(&r->server, reinterpret_cast<sockaddr*>(&addr), &len);
  const uint16_t port = ntohs(addr.sin_port);
  if (!WritePod(to_parent, port)) return 1;
  uv_run(&r->loop, UV_RUN_DEFAULT);
  uv_loop_close(&r->loop);
  PumpResult out;
  out.bytes = r->bytes;
  out.seconds = static_cast<double>(r->last_ns - r->first_ns) / 1e9;
  return WritePod(to_parent, out) ? 0 : 1;
}

struct Sender {
  uv_loop_t loop;
  uv_tcp_t tcp;
  uv_connect_t connect;
  std::vector<char> data;
  std::vector<uv_buf_t> bufs;
  std::vector<uv_write_t> writes;
  uint64_t duration_ns = 0;
  uint64_t end_ns = 0;
  int inflight = 0;
  bool closing = false;
};

void WriteOne(Sender* s, uv_write_t* req);

void OnWritten(uv_write_t* req, int status) {
  auto* s = static_cast<Sender*>(req->handle->loop->data);
  --s->inflight;
  Check(status, "write");
  if (uv_hrtime() < s->end_ns) {
    WriteOne(s, req);
  } else if (s->inflight == 0 && !s->closing) {
    s->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&s->tcp), nullptr);
  }
}

void WriteOne(Sender* s, uv_write_t* req) {
  ++s->inflight;
  Check(uv_write(req, reinterpret_cast<uv_stream_t*>(&s->tcp), s->bufs.data(),
                 static_cast<unsigned>(s->bufs.size()), OnWritten),
        "uv_write");
}

void RunSender(uint16_t port, const RawPumpOptions& o) {
  auto s = std::make_unique<Sender>();
  s->data.resize(o.block_size);
  for (size_t i = 0; i < s->data.size(); ++i) s->data[i] = static_cast<char>(i * 7);
  s->bufs.assign(static_cast<size_t>(std::max(1, o.bufs_per_write)),
                 uv_buf_init(s->data.data(), static_cast<unsigned>(s->data.size())));
  s->writes.resize(static_cast<size_t>(std::max(1, o.inflight)));
  s->duration_ns = static_cast<uint64_t>(o.seconds * 1e9);
  Check(uv_loop_init(&s->loop), "uv_loop_init");
  s->loop.data = s.get();
  uv_tcp_init(&s->loop, &s->tcp);
  uv_tcp_nodelay(&s->tcp, 1);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", port, &addr);
  Check(uv_tcp_connect(&s->connect, &s->tcp, reinterpret_cast<sockaddr*>(&addr),
                       [](uv_connect_t* c, int status) {
                         Check(status, "connect");
                         auto* s2 = static_cast<Sender*>(c->handle->loop->data);
                         s2->end_ns = uv_hrtime() + s2->duration_ns;
                         for (uv_write_t& w : s2->writes) WriteOne(s2, &w);
                       }),
        "connect");
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
}

}  // namespace

PumpResult RunRawPump(const RawPumpOptions& options) {
  Child child = ForkChild([](int, int to_parent) { return RunReceiver(to_parent); });
  uint16_t port = 0;
  if (!ReadPod(child.from_child, &port)) Die("raw pump receiver did not start");
  RunSender(port, options);
  PumpResult out;
  if (!ReadPod(child.from_child, &out)) Die("raw pump receiver failed");
  WaitChild(child);
  return out;
}

PumpResult RunMemcpy(double seconds, uint32_t piece, uint64_t working_set) {
  piece = std::max<uint32_t>(piece, 1);
  const uint64_t block = std::max<uint64_t>(piece, 32 * 1024);
  working_set = std::max<uint64_t>(working_set, 2 * block);
  std::vector<uint8_t> src(block);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 13);
  std::vector<uint8_t> dst(working_set);
  const uint64_t per_block = block / piece;
  const uint64_t blocks = working_set / block;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  uint64_t bytes = 0;
  uint64_t b = 0;
  uint8_t sink = 0;
  while (Clock::now() < end) {
    for (int round = 0; round < 16; ++round) {
      uint8_t* out = dst.data() + (b % blocks) * block;
      for (uint64_t k = 0; k < per_block; ++k) std::memcpy(out + k * piece, src.data() + k * piece, piece);
      sink ^= out[b % block];
      bytes += per_block * piece;
      ++b;
    }
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  // Keep the copies observable so they cannot be optimized away.
  if (sink == 0x5A && bytes == 1) std::fputs("", stderr);
  return PumpResult{bytes, secs};
}

}  // namespace sluice::bench
