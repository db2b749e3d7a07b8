#include "client/local_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

namespace sluice::client::local {

namespace {

void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }  // little-endian hosts only
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
void Put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
uint16_t Get16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
static_assert(std::endian::native == std::endian::little,
              "the local writer protocol is little-endian; port Put32/Get32 first");

void PutHeader(uint8_t* p, LocalType type, uint32_t body) {
  Put32(p, body);
  p[4] = static_cast<uint8_t>(type);
  p[5] = p[6] = p[7] = 0;
}

Status Malformed(std::string_view message, std::string_view what) {
  return ProtocolError("malformed local " + std::string(message) + " message: " +
                       std::string(what));
}

std::string_view CutText(std::string_view text, size_t max) {
  return text.size() <= max ? text : text.substr(0, max);
}

}  // namespace

std::string_view LocalTypeName(uint8_t type) {
  switch (type) {
    case 64: return "Hello";
    case 65: return "HelloAck";
    case 66: return "AuthResponse";
    case 67: return "OpenWriter";
    case 68: return "Grant";
    case 69: return "Filled";
    case 70: return "Credit";
    case 71: return "Commit";
    case 72: return "CommitAck";
    case 73: return "Abort";
    case 74: return "Error";
    default: return "Unknown";
  }
}

std::vector<uint8_t> EncodeFrame(LocalType type, std::span<const uint8_t> body) {
  std::vector<uint8_t> out(kLocalHeaderBytes + body.size());
  PutHeader(out.data(), type, static_cast<uint32_t>(body.size()));
  if (!body.empty()) std::memcpy(out.data() + kLocalHeaderBytes, body.data(), body.size());
  return out;
}

// OpenWriter body: partition u32, attempt u32, subpartitions u32, mode u8, 3 zero bytes,
// credit u32, job length u16, token length u16, job bytes, token bytes, then (optional)
// retention seconds u32: sent only when not 0, so a body without it means the daemon's default.
std::vector<uint8_t> EncodeOpenWriter(const OpenWriterMsg& m) {
  const std::string_view job = CutText(m.job, 0xFFFF);
  const std::string_view token = CutText(m.token, 0xFFFF);
  const size_t tail = m.retention_s != 0 ? 4 : 0;
  std::vector<uint8_t> body(24 + job.size() + token.size() + tail, 0);
  uint8_t* p = body.data();
  Put32(p, m.partition);
  Put32(p + 4, m.attempt);
  Put32(p + 8, m.subpartitions);
  p[12] = static_cast<uint8_t>(m.mode);
  Put32(p + 16, m.credit);
  Put16(p + 20, static_cast<uint16_t>(job.size()));
  Put16(p + 22, static_cast<uint16_t>(token.size()));
  std::memcpy(p + 24, job.data(), job.size());
  std::memcpy(p + 24 + job.size(), token.data(), token.size());
  if (tail != 0) Put32(p + 24 + job.size() + token.size(), m.retention_s);
  return EncodeFrame(LocalType::kOpenWriter, body);
}

Result<OpenWriterMsg> ParseOpenWriter(std::span<const uint8_t> body) {
  if (body.size() < 24) return Malformed("OpenWriter", "shorter than its 24 fixed bytes");
  const uint8_t* p = body.data();
  OpenWriterMsg m;
  m.partition = Get32(p);
  m.attempt = Get32(p + 4);
  m.subpartitions = Get32(p + 8);
  if (p[12] > 1) {
    return Malformed("OpenWriter", "mode " + std::to_string(p[12]) +
                                       " (0 = pipelined, 1 = blocking)");
  }
  if (p[13] != 0 || p[14] != 0 || p[15] != 0) return Malformed("OpenWriter", "padding not zero");
  m.mode = static_cast<WireMode>(p[12]);
  m.credit = Get32(p + 16);
  const size_t job_len = Get16(p + 20);
  const size_t token_len = Get16(p + 22);
  const size_t fixed = 24 + job_len + token_len;
  if (fixed != body.size() && fixed + 4 != body.size()) {
    return Malformed("OpenWriter", "job and token lengths do not match the body size");
  }
  if (fixed + 4 == body.size()) {
    m.retention_s = Get32(p + fixed);
    if (m.retention_s == 0 || m.retention_s > kMaxRetentionSeconds) {
      return Malformed("OpenWriter", "retention of " + std::to_string(m.retention_s) +
                                         " s (1.." + std::to_string(kMaxRetentionSeconds) +
                                         "; leave it out for the daemon's retention)");
    }
  }
  if (job_len == 0 || job_len > kMaxJobIdLength) {
    return Malformed("OpenWriter", "job id of " + std::to_string(job_len) +
                                       " bytes (1.." + std::to_string(kMaxJobIdLength) + ")");
  }
  if (token_len > kMaxTokenLength) {
    return Malformed("OpenWriter", "token of " + std::to_string(token_len) + " bytes (at most " +
                                       std::to_string(kMaxTokenLength) + ")");
  }
  if (m.subpartitions == 0 || m.subpartitions > kMaxSubpartitions) {
    return Malformed("OpenWriter", "subpartitions " + std::to_string(m.subpartitions) +
                                       " (1.." + std::to_string(kMaxSubpartitions) + ")");
  }
  if (m.credit > kMaxWriterCredit) {
    return Malformed("OpenWriter", "credit " + std::to_string(m.credit) + " (at most " +
                                       std::to_string(kMaxWriterCredit) + ")");
  }
  m.job.assign(reinterpret_cast<const char*>(p + 24), job_len);
  m.token.assign(reinterpret_cast<const char*>(p + 24 + job_len), token_len);
  return m;
}

std::vector<uint8_t> EncodeGrant(const GrantMsg& m) {
  uint8_t body[8];
  Put32(body, m.segment_size);
  Put32(body + 4, m.slots);
  return EncodeFrame(LocalType::kGrant, body);
}

Result<GrantMsg> ParseGrant(std::span<const uint8_t> body) {
  if (body.size() != 8) return Malformed("Grant", "body is not 8 bytes");
  GrantMsg m{Get32(body.data()), Get32(body.data() + 4)};
  if (m.slots == 0 || m.slots > kMaxWriterCredit) return Malformed("Grant", "slot count");
  if (m.segment_size < 4096 || m.segment_size > (1u << 20) ||
      (m.segment_size & (m.segment_size - 1)) != 0) {
    return Malformed("Grant", "segment size " + std::to_string(m.segment_size));
  }
  return m;
}

void EncodeFilled(const FilledMsg& m, uint8_t out[kFilledFrameBytes]) {
  PutHeader(out, LocalType::kFilled, 12);
  Put32(out + 8, m.subpartition);
  Put32(out + 12, m.slot);
  Put32(out + 16, m.size);
}

Result<FilledMsg> ParseFilled(std::span<const uint8_t> body) {
  if (body.size() != 12) return Malformed("Filled", "body is not 12 bytes");
  return FilledMsg{Get32(body.data()), Get32(body.data() + 4), Get32(body.data() + 8)};
}

std::vector<uint8_t> EncodeCredit(std::span<const uint32_t> slots) {
  std::vector<uint8_t> out;
  EncodeCreditInto(slots, &out);
  return out;
}

void EncodeCreditInto(std::span<const uint32_t> slots, std::vector<uint8_t>* out) {
  out->resize(kLocalHeaderBytes + 4 + 4 * slots.size());
  uint8_t* p = out->data();
  PutHeader(p, LocalType::kCredit, static_cast<uint32_t>(out->size() - kLocalHeaderBytes));
  Put32(p + kLocalHeaderBytes, static_cast<uint32_t>(slots.size()));
  for (size_t i = 0; i < slots.size(); ++i) Put32(p + kLocalHeaderBytes + 4 + 4 * i, slots[i]);
}

Result<std::vector<uint32_t>> ParseCredit(std::span<const uint8_t> body) {
  std::vector<uint32_t> slots;
  if (Status s = ParseCreditInto(body, &slots); !s.ok()) return s;
  return slots;
}

Status ParseCreditInto(std::span<const uint8_t> body, std::vector<uint32_t>* out) {
  if (body.size() < 4) return Malformed("Credit", "no count");
  const uint32_t n = Get32(body.data());
  if (n == 0 || n > kMaxWriterCredit || body.size() != 4 + size_t{n} * 4) {
    return Malformed("Credit", "count " + std::to_string(n) + " does not match the body");
  }
  out->resize(n);
  for (uint32_t i = 0; i < n; ++i) (*out)[i] = Get32(body.data() + 4 + 4 * i);
  return Status::Ok();
}

std::vector<uint8_t> EncodeText(LocalType type, std::string_view text) {
  const std::string_view t = CutText(text, kMaxReasonLength);
  return EncodeFrame(type, {reinterpret_cast<const uint8_t*>(t.data()), t.size()});
}

Result<std::string> ParseText(LocalType type, std::span<const uint8_t> body, size_t max_length) {
  if (body.size() > max_length) {
    return Malformed(LocalTypeName(static_cast<uint8_t>(type)),
                     "text of " + std::to_string(body.size()) + " bytes (at most " +
                         std::to_string(max_length) + ")");
  }
  return std::string(reinterpret_cast<const char*>(body.data()), body.size());
}

std::vector<uint8_t> EncodeError(const Status& status) {
  const std::string_view text = CutText(status.message(), kMaxReasonLength);
  std::vector<uint8_t> body(2 + text.size());
  Put16(body.data(), static_cast<uint16_t>(status.code()));
  std::memcpy(body.data() + 2, text.data(), text.size());
  return EncodeFrame(LocalType::kError, body);
}

Result<ErrorMsg> ParseError(std::span<const uint8_t> body) {
  if (body.size() < 2 || body.size() > 2 + kMaxReasonLength) return Malformed("Error", "size");
  const uint16_t code = Get16(body.data());
  if (code == 0 || code > static_cast<uint16_t>(StatusCode::kPermissionDenied)) {
    return Malformed("Error", "status code " + std::to_string(code));
  }
  return ErrorMsg{static_cast<StatusCode>(code),
                  std::string(reinterpret_cast<const char*>(body.data() + 2), body.size() - 2)};
}

Status ToStatus(const ErrorMsg& m) { return Status(m.code, m.message); }

namespace {
uint32_t LoadBigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
}  // namespace

Status RecordFraming::TooLong(uint32_t len, size_t offset) const {
  return ProtocolError("record length prefix " + std::to_string(len) + " at offset " +
                       std::to_string(offset) + " is over the limit of " +
                       std::to_string(max_record_) + " bytes (records must be framed as "
                       "RecordSerializer frames them)");
}

Result<uint32_t> RecordFraming::Check(std::span<const uint8_t> buffer) {
  const uint8_t* const p = buffer.data();
  const size_t size = buffer.size();
  size_t pos = 0;
  uint32_t records = 0;
  if (have_ > 0) {  // a length prefix split across buffers
    while (have_ < 4 && pos < size) prefix_[have_++] = p[pos++];
    if (have_ < 4) return records;
    have_ = 0;
    const uint32_t len = LoadBigEndian32(prefix_);
    if (len > max_record_) return TooLong(len, 0);
    ++records;
    need_ = len;
  }
  if (need_ > 0) {  // the rest of a record that began in an earlier buffer
    const size_t n = std::min<uint64_t>(need_, size - pos);
    pos += n;
    need_ -= n;
    if (need_ > 0) return records;
  }
  // Whole prefixes: one step per record. The next position depends on each length read, so
  // prefetch ahead: the lines (just written on the writer's core) then arrive in parallel.
  for (size_t ahead = pos; ahead < std::min<size_t>(size, pos + 1024); ahead += 64) {
    __builtin_prefetch(p + ahead);
  }
  while (size - pos >= 4) {
    __builtin_prefetch(p + pos + 1024);
    const uint32_t len = LoadBigEndian32(p + pos);
    if (len > max_record_) return TooLong(len, pos);
    ++records;
    const uint64_t end = pos + 4 + uint64_t{len};
    if (end > size) {
      need_ = end - size;
      return records;
    }
    pos = end;
  }
  while (pos < size && have_ < 4) prefix_[have_++] = p[pos++];  // 1..3 bytes of a prefix
  return records;
}

std::span<uint8_t> LocalFrameParser::WritableTail(size_t min) {
  if (start_ == used_) start_ = used_ = 0;
  if (buf_.size() - used_ < min) {
    if (start_ > 0) {  // move the partial frame to the front first
      std::memmove(buf_.data(), buf_.data() + start_, used_ - start_);
      used_ -= start_;
      start_ = 0;
    }
    if (buf_.size() - used_ < min) buf_.resize(used_ + min);
  }
  return {buf_.data() + used_, buf_.size() - used_};
}

Result<std::optional<LocalFrameParser::Frame>> LocalFrameParser::Next() {
  const size_t have = used_ - start_;
  if (have < kLocalHeaderBytes) return std::optional<Frame>();
  const uint8_t* p = buf_.data() + start_;
  const uint32_t body = Get32(p);
  const uint8_t type = p[4];
  if (type < kFirstLocalType || type > kLastLocalType) {
    return ProtocolError("local writer frame of unknown type " + std::to_string(type) +
                         " (expected " + std::to_string(kFirstLocalType) + ".." +
                         std::to_string(kLastLocalType) + ")");
  }
  if (body > kMaxLocalBody) {
    return ProtocolError("local writer frame " + std::string(LocalTypeName(type)) + " of " +
                         std::to_string(body) + " bytes (at most " +
                         std::to_string(kMaxLocalBody) + ")");
  }
  if (have < kLocalHeaderBytes + body) return std::optional<Frame>();
  start_ += kLocalHeaderBytes + body;
  return std::optional<Frame>(Frame{type, {p + kLocalHeaderBytes, body}});
}

namespace {

Status SendFrameWaiting(int fd, std::span<const uint8_t> frame, const std::string& peer,
                        int pass_fd, int wait_ms) {
  size_t off = 0;
  bool fd_sent = pass_fd < 0;
  while (off < frame.size()) {
    iovec iov{const_cast<uint8_t*>(frame.data() + off), frame.size() - off};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    if (!fd_sent) {
      std::memset(control, 0, sizeof(control));
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait_ms == 0) {
          return ResourceExhausted("local writer socket " + peer + ": the peer does not read "
                                   "what it was sent (its socket has no room for " +
                                   std::to_string(frame.size() - off) + " more bytes)");
        }
        // A non-blocking socket whose peer does not read: wait for room (bounded by the peer).
        pollfd pfd{fd, POLLOUT, 0};
        if (::poll(&pfd, 1, wait_ms) <= 0) {
          return IoError("local writer socket " + peer + ": the peer reads nothing for " +
                         std::to_string(wait_ms / 1000) + " s");
        }
        continue;
      }
      return IoError("local writer socket " + peer + ": send failed: " + std::strerror(errno));
    }
    fd_sent = true;
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Status SendFrame(int fd, std::span<const uint8_t> frame, const std::string& peer, int pass_fd) {
  return SendFrameWaiting(fd, frame, peer, pass_fd, 10000);
}

Status SendFrameNoWait(int fd, std::span<const uint8_t> frame, const std::string& peer,
                       int pass_fd) {
  return SendFrameWaiting(fd, frame, peer, pass_fd, 0);
}

FrameReader::FrameReader(int fd, std::string peer, bool accept_fds)
    : fd_(fd), peer_(std::move(peer)), accept_fds_(accept_fds) {}

FrameReader::~FrameReader() {
  for (int f : fds_) ::close(f);
}

int FrameReader::TakeFd() {
  if (fds_.empty()) return -1;
  const int f = fds_.front();
  fds_.erase(fds_.begin());
  return f;
}

Result<size_t> FrameReader::ReceiveSome(bool wait) {
  const std::span<uint8_t> tail = parser_.WritableTail();
  iovec iov{tail.data(), tail.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return size_t{0};
    if (errno == ECONNRESET) {
      return ClosedError("local writer socket " + peer_ + ": the peer reset the connection");
    }
    return IoError("local writer socket " + peer_ + ": receive failed: " + std::strerror(errno));
  }
  bool stray = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (accept_fds_ && fds_.size() < 4) {
        fds_.push_back(f);
      } else {
        ::close(f);
        stray = true;
      }
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) stray = true;
  if (stray && !accept_fds_) {
    return ProtocolError("local writer socket " + peer_ +
                         ": the peer passed a file descriptor (writers never send one)");
  }
  if (n == 0) return ClosedError("local writer socket " + peer_ + ": the peer closed the connection");
  parser_.Commit(static_cast<size_t>(n));
  return static_cast<size_t>(n);
}

Result<std::optional<FrameReader::Frame>> FrameReader::Next(bool wait) {
  while (true) {
    auto frame = parser_.Next();
    if (!frame.ok()) {
      return ProtocolError("local writer socket " + peer_ + ": " + frame.status().message());
    }
    if (frame->has_value()) {
      return std::optional<Frame>(Frame{(*frame)->type, (*frame)->body});
    }
    auto got = ReceiveSome(wait);
    if (!got.ok()) return got.status();
    if (*got == 0) return std::optional<Frame>();
  }
}

}  // namespace sluice::client::local
