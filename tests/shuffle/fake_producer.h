// A fake shuffle server for client tests (not API): listens on loopback, accepts one
// ShuffleClient connection, answers its handshake (with the shared-secret proof) and then lets
// the test speak frames by hand: well-formed, corrupt or hostile. Blocking; thread-compatible
// (one test thread drives it).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "schema/messages.h"
#include "shuffle/auth.h"
#include "testutil/loopback.h"
#include "transport/frame_bytes.h"

namespace sluice::shuffle::testing {

using transport::testutil::Bytes;

inline Bytes ToBytes(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

class FakeProducer {
 public:
  struct Frame {
    schema::MessageType type;
    Bytes metadata;
    Bytes payload;
  };
  struct Request {
    std::string partition_id;
    uint32_t subpartition = 0;
    uint64_t receiver_id = 0;
    int32_t initial_credit = 0;
    Bytes access_proof;
  };

  FakeProducer() { listen_fd_ = ::sluice::testutil::ListenOnLoopback(16, &port_); }
  ~FakeProducer() {
    CloseConnection();
    ::close(listen_fd_);
  }
  FakeProducer(const FakeProducer&) = delete;
  FakeProducer& operator=(const FakeProducer&) = delete;

  uint16_t port() const { return port_; }
  // What the client calls this server: "127.0.0.1:port".
  std::string name() const { return "127.0.0.1:" + std::to_string(port_); }

  // Accepts the next connection (closing the previous one).
  bool Accept(std::chrono::milliseconds timeout) {
    CloseConnection();
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    fd_ = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    peer_closed_ = false;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd_ >= 0;
  }
  void CloseConnection() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Reads the client's Hello, answers with HelloAck (proving `secret`), reads its
  // AuthResponse. False when any step fails.
  bool Handshake(uint32_t segment_size, const std::string& secret) {
    auto hello = ReadFrame(std::chrono::seconds(5));
    if (!hello || hello->type != schema::MessageType::kHello) return false;
    auto h = schema::ParseHello(hello->metadata);
    if (!h.ok()) return false;
    Bytes client_nonce;
    if ((*h)->nonce() != nullptr) client_nonce.assign((*h)->nonce()->begin(), (*h)->nonce()->end());
    const auth::Nonce nonce = auth::MakeNonce();
    const auth::Proof proof = auth::MakeProof(secret, auth::kServerRole, client_nonce, nonce);
    schema::HandshakeFields f;
    f.segment_size = segment_size;
    f.node_name = "fake-producer";
    f.nonce = nonce;
    f.auth_proof = proof;
    if (!Send(schema::MessageType::kHelloAck, builder_.HelloAck(f))) return false;
    auto resp = ReadFrame(std::chrono::seconds(5));
    if (!resp || resp->type != schema::MessageType::kAuthResponse) return false;
    auto r = schema::ParseAuthResponse(resp->metadata);
    if (!r.ok() || (*r)->auth_proof() == nullptr) return false;
    const auth::Proof want = auth::MakeProof(secret, auth::kClientRole, nonce, client_nonce);
    return auth::ProofMatches(want, {(*r)->auth_proof()->data(), (*r)->auth_proof()->size()});
  }

  // The next PartitionRequest (other frames before it go to `others`).
  std::optional<Request> ReadRequest(std::chrono::milliseconds timeout,
                                     std::vector<Frame>* others = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      auto f = ReadFrame(Left(deadline));
      if (!f) return std::nullopt;
      if (f->type != schema::MessageType::kPartitionRequest) {
        if (others != nullptr) others->push_back(std::move(*f));
        continue;
      }
      auto m = schema::ParsePartitionRequest(f->metadata);
      if (!m.ok()) return std::nullopt;
      Request r;
      r.partition_id = (*m)->partition_id()->str();
      r.subpartition = (*m)->subpartition();
      r.receiver_id = (*m)->receiver_id();
      r.initial_credit = (*m)->initial_credit();
      if ((*m)->access_proof() != nullptr) {
        r.access_proof.assign((*m)->access_proof()->begin(), (*m)->access_proof()->end());
      }
      return r;
    }
  }

  bool SendBuffer(uint64_t receiver, int32_t sequence, int32_t backlog, const Bytes& payload,
                  buffer::DataType type = buffer::DataType::kData,
                  std::optional<uint32_t> checksum = std::nullopt) {
    schema::BufferResponseFields f;
    f.receiver_id = receiver;
    f.sequence_number = sequence;
    f.backlog = backlog;
    f.data_type = type;
    f.payload_size = static_cast<uint32_t>(payload.size());
    if (checksum) {
      f.flags = schema::kFlagChecksummed;
      f.checksum = *checksum;
    }
    return Send(schema::MessageType::kBufferResponse, builder_.BufferResponse(f), payload);
  }
  bool Send(schema::MessageType type, std::span<const uint8_t> metadata, const Bytes& payload = {}) {
    const Bytes frame =
        transport::testutil::EncodeFrame(static_cast<uint8_t>(type), ToBytes(metadata), payload);
    size_t off = 0;
    while (off < frame.size()) {
      const ssize_t n = ::send(fd_, frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // The next frame other than a Heartbeat; nullopt on timeout, end of stream or error. The
  // timeout bounds the wait for a frame to start: once its first byte is here, the frame is read
  // whole (up to kFrameCompletion more), so a short timeout never splits a frame and leaves the
  // stream out of step (which a loaded machine made happen).
  std::optional<Frame> ReadFrame(std::chrono::milliseconds timeout) {
    const auto start_by = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (!WaitReadable(start_by)) return std::nullopt;
      const auto deadline = std::chrono::steady_clock::now() + kFrameCompletion;
      uint8_t head[transport::kFrameHeaderSize];
      if (!ReadExactly(head, sizeof(head), deadline)) return std::nullopt;
      const transport::FrameHeader h = transport::DecodeFrameHeader(
          std::span<const uint8_t, transport::kFrameHeaderSize>(head, sizeof(head)));
      Frame f;
      f.type = static_cast<schema::MessageType>(h.type);
      f.metadata.resize(h.metadata_length);
      f.payload.resize(h.payload_length());
      if (!ReadExactly(f.metadata.data(), f.metadata.size(), deadline) ||
          !ReadExactly(f.payload.data(), f.payload.size(), deadline)) {
        return std::nullopt;
      }
      if (f.type == schema::MessageType::kHeartbeat) continue;
      return f;
    }
  }
  // True once the client closed the connection (reads until EOF or the timeout).
  bool WaitClosed(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    uint8_t chunk[4096];
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(Left(deadline).count()) + 1) <= 0) continue;
      const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        peer_closed_ = true;
        return true;
      }
    }
    return false;
  }

  schema::MessageBuilder& builder() { return builder_; }
  // The client closed the connection (seen by a read).
  bool peer_closed() const { return peer_closed_; }

 private:
  static std::chrono::milliseconds Left(std::chrono::steady_clock::time_point deadline) {
    return std::max(std::chrono::milliseconds(0),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()));
  }
  static constexpr auto kFrameCompletion = std::chrono::seconds(10);
  // True once the socket is readable (data or end of stream) before `deadline`.
  bool WaitReadable(std::chrono::steady_clock::time_point deadline) {
    while (true) {
      const auto left = Left(deadline);
      pollfd pfd{fd_, POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (r > 0) return true;
      if (r == 0 || left.count() <= 0) return false;
    }
  }
  bool ReadExactly(uint8_t* p, size_t n, std::chrono::steady_clock::time_point deadline) {
    while (n > 0) {
      const auto left = Left(deadline);
      if (left.count() <= 0) return false;
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      const ssize_t r = ::recv(fd_, p, n, 0);
      if (r <= 0) {
        peer_closed_ = true;
        return false;
      }
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  int listen_fd_ = -1;
  int fd_ = -1;
  bool peer_closed_ = false;
  uint16_t port_ = 0;
  schema::MessageBuilder builder_;
};

}  // namespace sluice::shuffle::testing
