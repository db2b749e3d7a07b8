#include "tools/control/control_client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "schema/control.h"
#include "schema/messages.h"
#include "shuffle/auth.h"
#include "shuffle/handshake.h"
#include "tools/control/control_codec.h"
#include "tools/common/fd_io.h"
#include "transport/frame_codec.h"

namespace sluice::control {
namespace {

using schema::MessageType;

Status IoFailure(const std::string& address, const std::string& what) {
  return Status(StatusCode::kIoError, "daemon " + address + ": " + what);
}

using tools::ReadAll;
using tools::WriteAll;

Result<int> ConnectSocket(const std::string& host, uint16_t port,
                          std::chrono::milliseconds timeout, const std::string& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) return IoFailure(address, std::string("cannot resolve: ") + gai_strerror(rc));
  std::string last = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
    if (fd < 0) continue;
    int err = 0;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int pr = ::poll(&p, 1, static_cast<int>(timeout.count()));
        socklen_t len = sizeof(err);
        if (pr <= 0) {
          err = ETIMEDOUT;
        } else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err != 0) {
      last = std::strerror(err);
      ::close(fd);
      continue;
    }
    // Blocking from here on, every call bounded by the timeout.
    timeval tv{};
    tv.tv_sec = timeout.count() / 1000;
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // Clear O_NONBLOCK.
    const int cur = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, cur & ~O_NONBLOCK);
    ::freeaddrinfo(res);
    return fd;
  }
  ::freeaddrinfo(res);
  return IoFailure(address, "cannot connect: " + last + "; is sluiced running there?");
}

}  // namespace

struct ControlClient::Reply {
  uint8_t type = 0;
  std::vector<uint8_t> message;
};

namespace {

// The largest frame any daemon may send (its segment size is at most kMaxSegmentSize).
constexpr uint64_t kMaxReplyFrame = transport::MaxFrameLength(schema::kMaxSegmentSize);

// Reads and drops `len` bytes through a small stack buffer: nothing is allocated for them.
bool SkipBytes(int fd, uint64_t len) {
  uint8_t sink[4096];
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, sizeof(sink)));
    if (!ReadAll(fd, sink, n)) return false;
    len -= n;
  }
  return true;
}

Status SendFrame(int fd, uint8_t type, const uint8_t* msg, size_t len,
                 const std::string& address) {
  std::vector<uint8_t> frame(transport::kFrameHeaderSize + len);
  transport::EncodeFrameHeader(std::span<uint8_t, transport::kFrameHeaderSize>(frame.data(),
                                                                               transport::kFrameHeaderSize),
                               type, static_cast<uint16_t>(len), 0);
  std::memcpy(frame.data() + transport::kFrameHeaderSize, msg, len);
  if (!WriteAll(fd, frame.data(), frame.size())) {
    return IoFailure(address, std::string("send failed: ") + std::strerror(errno));
  }
  return Status::Ok();
}

// Reads frames until one that is not a Heartbeat, for at most `timeout` in all (a daemon that
// sends only heartbeats cannot hold the call). An ErrorResponse becomes the error it says.
Result<std::pair<uint8_t, std::vector<uint8_t>>> ReadFrame(
    int fd, const std::string& address,
    std::chrono::milliseconds timeout = ControlClientOptions{}.timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (std::chrono::steady_clock::now() > deadline) {
      return IoFailure(address, "no answer but heartbeats within " +
                                    std::to_string(timeout.count()) + " ms");
    }
    uint8_t head[transport::kFrameHeaderSize];
    if (!ReadAll(fd, head, sizeof(head))) {
      return IoFailure(address, errno == EAGAIN || errno == EWOULDBLOCK
                                    ? "no answer before the timeout"
                                    : "the daemon closed the connection");
    }
    const transport::FrameHeader h =
        transport::DecodeFrameHeader(std::span<const uint8_t, transport::kFrameHeaderSize>(head, 12));
    if (h.magic != transport::kMagic || h.frame_length < transport::kFrameHeaderSize + h.metadata_length) {
      return Status(StatusCode::kProtocolError,
                    "daemon " + address + " sent a malformed frame header; is this a sluiced port?");
    }
    if (h.frame_length > kMaxReplyFrame) {
      return Status(StatusCode::kProtocolError,
                    "daemon " + address + " announced a frame of " +
                        std::to_string(h.frame_length) + " bytes, above the " +
                        std::to_string(kMaxReplyFrame) + "-byte frame limit; refused unread");
    }
    // At most kMaxMetadataLength (the header's u16), whatever the daemon says.
    std::vector<uint8_t> meta(h.metadata_length);
    if (!ReadAll(fd, meta.data(), meta.size())) return IoFailure(address, "connection lost mid-frame");
    // Control replies carry no payload; one that does is read through and dropped.
    if (!SkipBytes(fd, h.payload_length())) return IoFailure(address, "connection lost mid-frame");
    const auto type = static_cast<MessageType>(h.type);
    if (type == MessageType::kHeartbeat) continue;
    if (type == MessageType::kErrorResponse) {
      auto e = schema::ParseErrorResponse(meta);
      if (!e.ok()) return e.status();
      const std::string text = (*e)->message() ? (*e)->message()->str() : "";
      const StatusCode code = (*e)->code() == fb::ErrorCode::AuthenticationFailed
                                  ? StatusCode::kPermissionDenied
                                  : StatusCode::kIoError;
      return Status(code, "daemon " + address + " refused: " + text);
    }
    return std::make_pair(h.type, std::move(meta));
  }
}

// Hello, HelloAck and, when the daemon asks for it, the shared-secret proof (shuffle/handshake.h).
// *proved: an AuthResponse went out (the daemon does not answer it).
// A control-only Hello (segment_size 0): the daemon answers its own segment size, kept in
// *segment_size.
Status Handshake(int fd, const std::string& address, const ControlClientOptions& options,
                 bool* proved, uint32_t* segment_size) {
  *proved = false;
  const shuffle::auth::AuthConfig auth{options.secret.value_or(""), !options.secret};
  shuffle::ClientHandshake handshake(auth, shuffle::kControlOnlySegmentSize, options.client_name,
                                     address, "daemon");
  schema::MessageBuilder builder;
  auto hello = builder.Hello(handshake.Hello());
  if (Status st = SendFrame(fd, static_cast<uint8_t>(MessageType::kHello), hello.data(),
                            hello.size(), address);
      !st.ok()) {
    return st;
  }
  // ReadFrame skips heartbeats and turns an ErrorResponse into the error it says.
  auto ack_frame = ReadFrame(fd, address);
  if (!ack_frame.ok()) return ack_frame.status();
  const auto type = static_cast<MessageType>(ack_frame->first);
  if (auto refused = handshake.Admit(type)) return shuffle::HandshakeStatus(*refused);
  if (type != MessageType::kHelloAck) {
    return Status(StatusCode::kProtocolError, "daemon " + address + " answered Hello with " +
                                                  std::string(schema::MessageTypeName(type)));
  }
  auto ack = schema::ParseHelloAck(ack_frame->second);
  if (!ack.ok()) return ack.status();
  std::optional<shuffle::auth::Proof> response;
  if (auto refused = handshake.OnHelloAck(**ack, &response)) {
    return shuffle::HandshakeStatus(*refused);
  }
  *segment_size = handshake.server_segment_size();
  if (!response) return Status::Ok();
  auto resp = builder.AuthResponse(*response);
  if (Status st = SendFrame(fd, static_cast<uint8_t>(MessageType::kAuthResponse), resp.data(),
                            resp.size(), address);
      !st.ok()) {
    return st;
  }
  *proved = true;
  return Status::Ok();
}

}  // namespace

ControlClient::ControlClient(int fd, std::string address, ControlClientOptions options)
    : fd_(fd), address_(std::move(address)), options_(std::move(options)) {}

ControlClient::~ControlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& host,
                                                              uint16_t port,
                                                              const ControlClientOptions& options) {
  const std::string address = host + ":" + std::to_string(port);
  auto fd = ConnectSocket(host, port, options.timeout, address);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<ControlClient> c(new ControlClient(*fd, address, options));

  bool proved = false;
  if (Status st = Handshake(*fd, address, options, &proved, &c->segment_size_); !st.ok()) {
    return st;
  }
  if (proved) {
    // The daemon says nothing on success; one request proves it accepted the proof.
    auto stats = c->GetStats();
    if (!stats.ok()) return stats.status();
  }
  return c;
}

Result<ControlClient::Reply> ControlClient::Call(uint8_t type, const uint8_t* msg, size_t len,
                                                 uint8_t expect_type) {
  if (fd_ < 0) return Status(StatusCode::kClosed, "control connection to " + address_ + " is closed");
  Status st = SendFrame(fd_, type, msg, len, address_);
  if (st.ok()) {
    auto frame = ReadFrame(fd_, address_, options_.timeout);
    if (frame.ok()) {
      if (frame->first == expect_type) return Reply{frame->first, std::move(frame->second)};
      if (frame->first == static_cast<uint8_t>(MessageType::kControlResult)) {
        auto r = schema::ParseControlResult(frame->second);
        if (!r.ok()) return r.status();
        Status err = DecodeControlResult(**r);
        if (!err.ok()) return err;
      }
      st = Status(StatusCode::kProtocolError,
                  "daemon " + address_ + " answered with an unexpected " +
                      std::string(schema::MessageTypeName(static_cast<MessageType>(frame->first))));
    } else {
      st = frame.status();
    }
  }
  // After a failed call the stream position is unknown: the connection is done.
  ::close(fd_);
  fd_ = -1;
  return st;
}

Status ControlClient::Command(uint8_t type, const std::vector<uint8_t>& msg, uint32_t* count) {
  auto r = Call(type, msg.data(), msg.size(), static_cast<uint8_t>(MessageType::kControlResult));
  if (!r.ok()) return r.status();
  auto m = schema::ParseControlResult(r->message);
  if (!m.ok()) return m.status();
  return DecodeControlResult(**m, count);
}

Result<std::vector<uint8_t>> ControlClient::Request(uint8_t type,
                                                    const std::vector<uint8_t>& message,
                                                    uint8_t expect_type) {
  if (message.size() > kMaxControlMessageBytes) {
    return InvalidArgument("a " +
                           std::string(schema::MessageTypeName(static_cast<MessageType>(type))) +
                           " of " + std::to_string(message.size()) +
                           " bytes is more than a control message carries (64 KiB)");
  }
  auto r = Call(type, message.data(), message.size(), expect_type);
  if (!r.ok()) return r.status();
  if (expect_type == static_cast<uint8_t>(MessageType::kControlResult)) {
    auto m = schema::ParseControlResult(r->message);
    if (!m.ok()) return m.status();
    if (Status st = DecodeControlResult(**m); !st.ok()) return st;
  }
  return std::move(r->message);
}

Status ControlClient::SubmitJob(const JobSpec& spec, uint32_t node_index) {
  auto msg = EncodeSubmitJob(spec, node_index);
  if (msg.size() > kMaxControlMessageBytes) {
    return InvalidArgument("job '" + spec.job_id + "' spec is " + std::to_string(msg.size()) +
                           " bytes encoded, more than a control message carries (64 KiB)");
  }
  return Command(static_cast<uint8_t>(MessageType::kSubmitJob), msg, nullptr);
}

Status ControlClient::CancelJob(const std::string& job_id, const std::string& token,
                                const std::string& reason) {
  return Command(static_cast<uint8_t>(MessageType::kCancelJob),
                 EncodeCancelJob(job_id, reason, token), nullptr);
}

Result<uint32_t> ControlClient::CutConnections() {
  uint32_t count = 0;
  Status st = Command(static_cast<uint8_t>(MessageType::kCutConnections), EncodeCutConnections(),
                      &count);
  if (!st.ok()) return st;
  return count;
}

Result<JobStatus> ControlClient::GetJobStatus(const std::string& job_id,
                                              const std::string& token) {
  auto msg = EncodeJobStatusRequest(job_id, token);
  auto r = Call(static_cast<uint8_t>(MessageType::kJobStatusRequest), msg.data(), msg.size(),
                static_cast<uint8_t>(MessageType::kJobStatusResponse));
  if (!r.ok()) return r.status();
  auto m = schema::ParseJobStatusResponse(r->message);
  if (!m.ok()) return m.status();
  return DecodeJobStatus(**m);
}

Result<NodeStats> ControlClient::GetStats() {
  auto msg = EncodeStatsRequest();
  auto r = Call(static_cast<uint8_t>(MessageType::kStatsRequest), msg.data(), msg.size(),
                static_cast<uint8_t>(MessageType::kStatsResponse));
  if (!r.ok()) return r.status();
  auto m = schema::ParseStatsResponse(r->message);
  if (!m.ok()) return m.status();
  return DecodeStats(**m);
}

Result<JobList> ControlClient::ListJobs() {
  auto msg = EncodeListJobsRequest();
  auto r = Call(static_cast<uint8_t>(MessageType::kListJobsRequest), msg.data(), msg.size(),
                static_cast<uint8_t>(MessageType::kListJobsResponse));
  if (!r.ok()) return r.status();
  auto m = schema::ParseListJobsResponse(r->message);
  if (!m.ok()) return m.status();
  return DecodeJobList(**m);
}

}  // namespace sluice::control

namespace sluice::control {

Result<std::string> FindSecret(const SecretSource& source) {
  if (!source.auth_secret_file.empty()) {
    auto s = shuffle::auth::ReadSecretFile(source.auth_secret_file);
    if (s.ok() || s.status().code() == StatusCode::kPermissionDenied) return s;
    return InvalidArgument(s.status().message() +
                           " (from --auth-secret-file; or give the daemon's --state-dir)");
  }
  auto s = shuffle::auth::LoadStateSecret(shuffle::auth::StateDirOrDefault(source.state_dir),
                                         /*create=*/false);
  if (s.ok() || s.status().code() == StatusCode::kPermissionDenied) return s;
  return InvalidArgument("no auth secret: " + s.status().message() +
                         ". Give the daemon's secret with --auth-secret-file FILE, or its state "
                         "directory with --state-dir DIR (sluiced creates DIR/" +
                         std::string(shuffle::auth::kStateSecretFileName) +
                         " on first start; default " +
                         std::string(shuffle::auth::kDefaultStateDir) + ")");
}

}  // namespace sluice::control
