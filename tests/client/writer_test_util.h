// Test helpers (not API) for the local write path: a WriterSink that records what it is given
// (and can hold buffers to apply backpressure), and a raw local-protocol client for hostile
// frames.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "client/local_protocol.h"
#include "schema/messages.h"
#include "shuffle/handshake.h"
#include "shuffle/record_serializer.h"
#include "tools/daemon/local_writer_service.h"

namespace sluice::testutil {

inline constexpr char kWriterSecret[] = "local-writer-test-secret-0123456789";
// A job token the service takes (at least shuffle::auth::kMinJobTokenLength), one per job.
inline std::string TokenOf(const std::string& job) {
  return "token-of-" + job + "-" + std::string(32, 't');
}

// Records every writer's records per subpartition (decoded with RecordDeserializer), its
// commit or abort reason. With hold(true) buffers are kept (the writer runs out of credit)
// until Release().
class RecordingSink final : public daemon::WriterSink {
 public:
  struct Output {
    store::WriterSpec spec;
    std::vector<std::vector<std::string>> records;  // per subpartition
    uint64_t counted = 0;  // records the service counted (Append's `records`)
    uint64_t buffers = 0;
    bool committed = false;
    bool aborted = false;
    std::string reason;
  };
  struct State {
    Output out;
    std::vector<shuffle::RecordDeserializer> readers;
    std::vector<std::pair<uint32_t, buffer::Buffer>> held;
  };

  Result<store::WriterId> OpenWriter(const store::WriterSpec& spec) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!deny_token_.empty() && spec.token == deny_token_) {
      return Status(StatusCode::kPermissionDenied, "job " + spec.job + ": wrong token");
    }
    const store::WriterId id = next_++;
    State& st = outputs_[id];
    st.out.spec = spec;
    st.out.records.resize(spec.subpartitions);
    st.readers.resize(spec.subpartitions);
    return id;
  }
  Status Append(store::WriterId writer, uint32_t subpartition, buffer::Buffer filled,
                uint32_t records) override {
    std::lock_guard<std::mutex> lock(mu_);
    State& st = outputs_.at(writer);
    st.out.counted += records;
    ++st.out.buffers;
    if (hold_) {
      st.held.emplace_back(subpartition, std::move(filled));
      return Status::Ok();
    }
    Decode(st, subpartition, std::move(filled));
    return Status::Ok();
  }
  Result<client::MapOutput> Commit(store::WriterId writer) override {
    std::lock_guard<std::mutex> lock(mu_);
    Output& o = outputs_.at(writer).out;
    o.committed = true;
    uint64_t n = 0, bytes = 0;
    for (auto& sub : o.records) {
      n += sub.size();
      for (auto& r : sub) bytes += r.size();
    }
    return client::MapOutput{"test-node:1", o.spec.job, o.spec.partition, o.spec.attempt,
                             o.spec.subpartitions, bytes, n};
  }
  void Abort(store::WriterId writer, std::string reason) override {
    std::lock_guard<std::mutex> lock(mu_);
    State& st = outputs_.at(writer);
    st.out.aborted = true;
    st.out.reason = std::move(reason);
    st.held.clear();
    for (auto& r : st.readers) r.Clear();
  }

  void WriterWaiting(store::WriterId) override { ++waiting_calls_; }
  int waiting_calls() const { return waiting_calls_.load(); }

  void hold(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = on;
  }
  void deny_token(std::string token) {
    std::lock_guard<std::mutex> lock(mu_);
    deny_token_ = std::move(token);
  }
  // Decodes and releases every held buffer (in order); hold stays as it is.
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, st] : outputs_) {
      auto held = std::move(st.held);
      st.held.clear();
      for (auto& [sub, b] : held) Decode(st, sub, std::move(b));
    }
  }
  size_t held() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (auto& [id, st] : outputs_) n += st.held.size();
    return n;
  }
  // A copy of every output so far.
  std::map<store::WriterId, Output> outputs() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<store::WriterId, Output> copy;
    for (auto& [id, st] : outputs_) copy[id] = st.out;
    return copy;
  }
  // Drops every buffer still held (the end of a test).
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, st] : outputs_) {
      st.held.clear();
      for (auto& r : st.readers) r.Clear();
    }
  }

 private:
  static void Decode(State& st, uint32_t sub, buffer::Buffer b) {
    Output& o = st.out;
    shuffle::RecordDeserializer& d = st.readers[sub];
    d.SetNextBuffer(std::move(b));
    std::span<const uint8_t> rec;
    while (true) {
      auto next = d.GetNext(&rec);
      ASSERT_TRUE(next.ok()) << next.status().ToString();
      if (*next == shuffle::RecordDeserializer::Next::kNeedMoreData) break;
      o.records[sub].emplace_back(reinterpret_cast<const char*>(rec.data()), rec.size());
    }
  }

  mutable std::mutex mu_;
  std::atomic<int> waiting_calls_{0};
  bool hold_ = false;
  std::string deny_token_;
  store::WriterId next_ = 1;
  std::map<store::WriterId, State> outputs_;
};

// A local-protocol client that sends whatever a test wants.
class RawLocalClient {
 public:
  explicit RawLocalClient(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    reader_ = std::make_unique<client::local::FrameReader>(fd_, path, true);
  }
  ~RawLocalClient() {
    reader_.reset();
    if (memfd_ >= 0) ::close(memfd_);
    ::close(fd_);
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_; }
  int memfd() const { return memfd_; }
  const client::local::GrantMsg& grant() const { return grant_; }

  Status Send(const std::vector<uint8_t>& frame, int pass_fd = -1) {
    return client::local::SendFrame(fd_, frame, path_, pass_fd);
  }
  // The handshake with `secret` ("" = none); Ok when the daemon accepted the proof.
  Status Handshake(const std::string& secret) {
    shuffle::auth::AuthConfig auth{secret, secret.empty()};
    auth_ = auth;
    shuffle::ClientHandshake hs(auth_, shuffle::kControlOnlySegmentSize, "raw", path_, "daemon");
    schema::MessageBuilder mb;
    if (Status s = Send(client::local::EncodeFrame(client::local::LocalType::kHello,
                                                   mb.Hello(hs.Hello())));
        !s.ok()) {
      return s;
    }
    auto frame = Next();
    if (!frame.ok()) return frame.status();
    if (frame->first == static_cast<uint8_t>(client::local::LocalType::kError)) {
      return ErrorOf(frame->second);
    }
    auto ack = schema::ParseHelloAck(frame->second);
    if (!ack.ok()) return ack.status();
    std::optional<shuffle::auth::Proof> proof;
    if (auto e = hs.OnHelloAck(**ack, &proof)) return shuffle::HandshakeStatus(*e);
    if (proof) {
      return Send(client::local::EncodeFrame(client::local::LocalType::kAuthResponse,
                                             mb.AuthResponse(*proof)));
    }
    return Status::Ok();
  }
  // OpenWriter; Ok when a Grant with its memfd came back.
  Status Open(const client::local::OpenWriterMsg& m) {
    if (Status s = Send(client::local::EncodeOpenWriter(m)); !s.ok()) return s;
    auto frame = Next();
    if (!frame.ok()) return frame.status();
    if (frame->first == static_cast<uint8_t>(client::local::LocalType::kError)) {
      return ErrorOf(frame->second);
    }
    auto g = client::local::ParseGrant(frame->second);
    if (!g.ok()) return g.status();
    grant_ = *g;
    memfd_ = reader_->TakeFd();
    return Status::Ok();
  }
  // The next frame (type, body copy).
  Result<std::pair<uint8_t, std::vector<uint8_t>>> Next() {
    auto f = reader_->Next(true);
    if (!f.ok()) return f.status();
    return std::make_pair((*f)->type, std::vector<uint8_t>((*f)->body.begin(), (*f)->body.end()));
  }
  // Reads until an Error frame (returned as its Status) or the end of the stream.
  Status ExpectError() {
    while (true) {
      auto f = Next();
      if (!f.ok()) return f.status();
      if (f->first == static_cast<uint8_t>(client::local::LocalType::kError)) {
        return ErrorOf(f->second);
      }
    }
  }
  // True when the daemon closed the connection (after an Error).
  bool ClosedByPeer() {
    while (true) {
      auto f = Next();
      if (!f.ok()) return f.status().code() == StatusCode::kClosed;
    }
  }

 private:
  static Status ErrorOf(const std::vector<uint8_t>& body) {
    auto e = client::local::ParseError(body);
    return e.ok() ? client::local::ToStatus(*e) : e.status();
  }
  std::string path_;
  int fd_ = -1;
  int memfd_ = -1;
  bool connected_ = false;
  shuffle::auth::AuthConfig auth_;
  std::unique_ptr<client::local::FrameReader> reader_;
  client::local::GrantMsg grant_;
};

}  // namespace sluice::testutil
