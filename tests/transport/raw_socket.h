// A blocking loopback socket for tests whose peer misbehaves on purpose or speaks frames by
// hand (the transport tests and the daemon tests): raw bytes, whole frames, resets. Not API.
// Thread-compatible.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "frame_bytes.h"
#include "transport/frame_codec.h"

namespace sluice::transport::testutil {


class RawSocket {
 public:
  // Connects to 127.0.0.1:port. rcvbuf > 0 shrinks the receive buffer before connecting.
  explicit RawSocket(uint16_t port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  // Takes over an already connected socket (e.g. one bound to another local address first).
  struct AdoptFd {
    int fd;
  };
  explicit RawSocket(AdoptFd a) : fd_(a.fd), connected_(a.fd >= 0) {
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~RawSocket() { Close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }
  // "127.0.0.1:port" of this end: what the server calls its peer.
  std::string LocalName() const {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    char host[32];
    ::inet_ntop(AF_INET, &a.sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(a.sin_port));
  }
  bool Send(const Bytes& b) {
    size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  bool SendFrame(uint8_t type, const Bytes& metadata, const Bytes& payload = {}) {
    return Send(EncodeFrame(type, metadata, payload));
  }
  struct Frame {
    FrameHeader header;
    Bytes metadata;
    Bytes payload;
  };
  // The next whole frame within `timeout`, passing over frames of type `skip_type` (the upper
  // layer's heartbeats, say); nullopt when the stream ended, failed or timed out first.
  // The timeout bounds the wait for a frame to start; once its first byte is here it is read
  // whole (up to 10 s more), so a short timeout never splits a frame and desynchronises the
  // stream.
  std::optional<Frame> ReadFrame(std::chrono::milliseconds timeout,
                                 std::optional<uint8_t> skip_type = std::nullopt) {
    const auto start_by = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (!WaitReadable(start_by)) return std::nullopt;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      uint8_t head[kFrameHeaderSize];
      if (!ReadExactly(head, sizeof(head), deadline)) return std::nullopt;
      Frame f;
      f.header = DecodeFrameHeader(std::span<const uint8_t, kFrameHeaderSize>(head, sizeof(head)));
      f.metadata.resize(f.header.metadata_length);
      f.payload.resize(f.header.payload_length());
      if (!ReadExactly(f.metadata.data(), f.metadata.size(), deadline) ||
          !ReadExactly(f.payload.data(), f.payload.size(), deadline)) {
        return std::nullopt;
      }
      if (skip_type && f.header.type == *skip_type) continue;
      return f;
    }
  }

  // Reads until EOF, an error or the timeout. Returns the bytes; *eof tells whether the stream
  // ended (FIN or reset).
  Bytes ReadUntilClosed(std::chrono::milliseconds timeout, bool* eof = nullptr) {
    Bytes out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    bool ended = false;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
      if (::poll(&p, 1, std::max(left, 1)) <= 0) continue;
      uint8_t chunk[65536];
      const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        ended = true;
        break;
      }
      out.insert(out.end(), chunk, chunk + n);
    }
    if (eof != nullptr) *eof = ended;
    return out;
  }
  // Discards what is readable now; returns bytes read, or -1 once the peer closed.
  ssize_t Drain() {
    ssize_t total = 0;
    uint8_t chunk[65536];
    while (true) {
      const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), MSG_DONTWAIT);
      if (n == 0) return -1;
      if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? total : -1;
      total += n;
    }
  }
  // Close with SO_LINGER 0: the peer sees a reset.
  void Reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    Close();
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  // True once the socket is readable (data or end of stream) before `deadline`.
  bool WaitReadable(std::chrono::steady_clock::time_point deadline) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd pfd{fd_, POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
      if (r > 0) return true;
      if (r == 0 || left.count() <= 0) return false;
    }
  }
  bool ReadExactly(uint8_t* p, size_t n, std::chrono::steady_clock::time_point deadline) {
    while (n > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      const ssize_t r = ::recv(fd_, p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace sluice::transport::testutil
