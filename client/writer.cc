#include "client/writer.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "client/local_protocol.h"
#include "schema/messages.h"
#include "shuffle/auth.h"
#include "shuffle/handshake.h"

namespace sluice::client {

using local::LocalType;

Result<WriteMode> ParseWriteMode(std::string_view text) {
  if (text == "pipelined") return WriteMode::kPipelined;
  if (text == "blocking") return WriteMode::kBlocking;
  return InvalidArgument("partition mode '" + std::string(text) +
                         "' is unknown: use pipelined or blocking");
}

std::string LocalSocketPath(const std::string& state_dir, uint32_t port) {
  return state_dir + "/sluiced-" + std::to_string(port) + ".sock";
}

namespace {

Result<int> ConnectUnix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("local socket path " + path + " is longer than " +
                           std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return IoError(std::string("socket(AF_UNIX): ") + std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    ::close(fd);
    return IoError("cannot connect to the sluiced local socket " + path + ": " +
                   std::strerror(e) + " (is sluiced running with this state directory?)");
  }
  return fd;
}

}  // namespace

Writer::Writer(const WriterOptions& options, std::string path, int fd)
    : options_(options), path_(std::move(path)), fd_(fd),
      reader_(std::make_unique<local::FrameReader>(fd, path_, /*accept_fds=*/true)) {}

Result<std::unique_ptr<Writer>> Writer::Open(const WriterOptions& options) {
  if (options.job.empty()) return InvalidArgument("Writer::Open: job is empty");
  if (options.subpartitions == 0 || options.subpartitions > local::kMaxSubpartitions) {
    return InvalidArgument("Writer::Open: subpartitions must be 1.." +
                           std::to_string(local::kMaxSubpartitions));
  }
  std::string path = options.socket_path;
  if (path.empty()) {
    if (options.state_dir.empty()) {
      return InvalidArgument("Writer::Open: give the daemon's socket_path or its state_dir");
    }
    path = LocalSocketPath(options.state_dir, options.port);
  }
  std::string secret = options.secret;
  if (secret.empty()) {
    if (options.state_dir.empty()) {
      return InvalidArgument("Writer::Open: no secret: give the cluster's secret or the "
                             "daemon's state_dir");
    }
    auto s = shuffle::auth::LoadStateSecret(options.state_dir, /*create=*/false);
    if (!s.ok()) return s.status();
    secret = std::move(*s);
  }
  auto fd = ConnectUnix(path);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<Writer> w(new Writer(options, path, *fd));
  if (Status s = w->Handshake(secret); !s.ok()) return s;
  if (Status s = w->OpenRemote(); !s.ok()) return s;
  return w;
}

Status Writer::Handshake(const std::string& secret) {
  shuffle::auth::AuthConfig auth{secret, false};
  shuffle::ClientHandshake hs(auth, shuffle::kControlOnlySegmentSize,
                              "writer-" + std::to_string(::getpid()), path_, "daemon");
  schema::MessageBuilder mb;
  auto hello = local::EncodeFrame(LocalType::kHello, mb.Hello(hs.Hello()));
  if (Status s = local::SendFrame(fd_, hello, path_); !s.ok()) return s;
  auto frame = reader_->Next(/*wait=*/true);
  if (!frame.ok()) return frame.status();
  const uint8_t type = (*frame)->type;
  const std::span<const uint8_t> body = (*frame)->body;
  if (type == static_cast<uint8_t>(LocalType::kError)) {
    auto e = local::ParseError(body);
    return e.ok() ? local::ToStatus(*e) : e.status();
  }
  if (type != static_cast<uint8_t>(LocalType::kHelloAck)) {
    return ProtocolError("daemon " + path_ + " answered the Hello with " +
                         std::string(local::LocalTypeName(type)));
  }
  auto ack = schema::ParseHelloAck(body);
  if (!ack.ok()) return ack.status();
  std::optional<shuffle::auth::Proof> proof;
  if (auto err = hs.OnHelloAck(**ack, &proof)) return shuffle::HandshakeStatus(*err);
  if (proof) {
    auto resp = local::EncodeFrame(LocalType::kAuthResponse, mb.AuthResponse(*proof));
    if (Status s = local::SendFrame(fd_, resp, path_); !s.ok()) return s;
  }
  return Status::Ok();
}

Status Writer::OpenRemote() {
  local::OpenWriterMsg m{options_.job,      options_.token,
                         options_.partition, options_.attempt,
                         options_.subpartitions, static_cast<local::WireMode>(options_.mode),
                         options_.credit, static_cast<uint32_t>(options_.retention.count())};
  if (Status s = local::SendFrame(fd_, local::EncodeOpenWriter(m), path_); !s.ok()) return s;
  auto frame = reader_->Next(/*wait=*/true);
  if (!frame.ok()) return frame.status();
  if ((*frame)->type == static_cast<uint8_t>(LocalType::kError)) {
    auto e = local::ParseError((*frame)->body);
    return e.ok() ? local::ToStatus(*e) : e.status();
  }
  if ((*frame)->type != static_cast<uint8_t>(LocalType::kGrant)) {
    return ProtocolError("daemon " + path_ + " answered OpenWriter with " +
                         std::string(local::LocalTypeName((*frame)->type)));
  }
  auto grant = local::ParseGrant((*frame)->body);
  if (!grant.ok()) return grant.status();
  const int memfd = reader_->TakeFd();
  if (memfd < 0) return ProtocolError("daemon " + path_ + " sent a Grant without its arena");
  const size_t bytes = size_t{grant->slots} * grant->segment_size;
  struct stat st{};
  if (::fstat(memfd, &st) != 0 || static_cast<size_t>(st.st_size) < bytes) {
    ::close(memfd);
    return ProtocolError("daemon " + path_ + " granted an arena smaller than its Grant");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  ::close(memfd);
  if (p == MAP_FAILED) return IoError(std::string("mmap of the granted arena: ") + std::strerror(errno));
  base_ = static_cast<uint8_t*>(p);
  segment_size_ = grant->segment_size;
  slots_ = grant->slots;
  arena_ = std::make_unique<buffer::SegmentArena>(base_, slots_, segment_size_, &listener_);
  for (uint32_t i = slots_; i > 0; --i) free_.push_back(i - 1);
  at_daemon_.assign(slots_, 0);
  current_.resize(options_.subpartitions);
  pending_.reserve(local::kFilledFrameBytes * slots_);
  return Status::Ok();
}

Writer::~Writer() {
  if (state_ == State::kOpen) (void)Abort("writer destroyed before Commit");
  for (buffer::Buffer& b : current_) b.Release();
  arena_.reset();
  if (base_ != nullptr) ::munmap(base_, size_t{slots_} * segment_size_);
  if (fd_ >= 0) ::close(fd_);
}

Status Writer::Fail(Status status) {
  if (state_ == State::kOpen) {
    state_ = State::kFailed;
    error_ = std::move(status);
  }
  return error_;
}

Status Writer::CheckUsable(uint32_t subpartition) const {
  if (state_ == State::kFailed) return error_;
  if (state_ != State::kOpen) {
    return InvalidArgument("writer of job " + options_.job + " partition " +
                           std::to_string(options_.partition) + " is already " +
                           (state_ == State::kCommitted ? "committed" : "aborted"));
  }
  if (subpartition >= options_.subpartitions) {
    return InvalidArgument("subpartition " + std::to_string(subpartition) + " of " +
                           std::to_string(options_.subpartitions));
  }
  if (claimed_) return InvalidArgument("a Claim is open: CommitClaim it first");
  return Status::Ok();
}

Status Writer::Write(uint32_t subpartition, std::span<const uint8_t> record) {
  if (Status s = CheckUsable(subpartition); !s.ok()) return s;
  if (Status s = shuffle::RecordSerializer::CheckSize(record.size()); !s.ok()) return s;
  serializer_.BeginChecked(record);
  buffer::Buffer& b = current_[subpartition];
  while (true) {
    if (!b) {
      if (Status s = AcquireSlot(subpartition); !s.ok()) {
        serializer_ = shuffle::RecordSerializer();
        return s;
      }
    }
    const auto progress = serializer_.CopyTo(b);
    if (progress == shuffle::RecordSerializer::Progress::kRecordDoneBufferHasRoom) break;
    HandOver(subpartition);
    if (progress == shuffle::RecordSerializer::Progress::kRecordDoneBufferFull) break;
  }
  ++stats_.records;
  stats_.bytes += record.size();
  return Status::Ok();
}

Result<std::span<uint8_t>> Writer::ClaimSlow(uint32_t subpartition, uint32_t size) {
  if (Status s = CheckUsable(subpartition); !s.ok()) return s;
  if (size > max_claim()) {
    return InvalidArgument("Claim of " + std::to_string(size) + " bytes: at most " +
                           std::to_string(max_claim()) + " (a segment minus the length "
                           "prefix); use Write for larger records");
  }
  buffer::Buffer& b = current_[subpartition];
  if (b && b.capacity() - b.size() < shuffle::kRecordLengthBytes + size) HandOver(subpartition);
  if (!b) {
    if (Status s = AcquireSlot(subpartition); !s.ok()) return s;
  }
  return StartClaim(b, subpartition, size);
}

Status Writer::CommitClaimError(uint32_t used) const {
  if (!claimed_) return InvalidArgument("CommitClaim without a Claim");
  return InvalidArgument("CommitClaim of " + std::to_string(used) + " bytes after a Claim of " +
                         std::to_string(claim_size_));
}

Status Writer::AcquireSlot(uint32_t subpartition) {
  if (free_.empty()) {
    if (Status s = ReadMessages(/*wait=*/false); !s.ok()) return Fail(s);
  }
  if (free_.empty()) {
    // Every segment is either at the daemon or partly filled by another subpartition: hand the
    // partly filled ones over so that credit can come back (else writers of many subpartitions
    // could hold all their credit half full and wait forever).
    for (size_t i = 0; i < open_.size();) {
      const uint32_t sub = open_[i];
      if (sub != subpartition && current_[sub] && current_[sub].size() > 0) {
        HandOver(sub);  // removes sub from open_
      } else {
        ++i;
      }
    }
    ++stats_.credit_waits;
  }
  while (free_.empty()) {
    if (Status s = SendFilled(); !s.ok()) return Fail(s);
    if (Status s = ReadMessages(/*wait=*/true); !s.ok()) return Fail(s);
  }
  const uint32_t slot = free_.back();
  free_.pop_back();
  current_[subpartition] = arena_->Wrap(slot, 0);
  open_.push_back(subpartition);
  return Status::Ok();
}

void Writer::HandOver(uint32_t subpartition) {
  buffer::Buffer& b = current_[subpartition];
  const uint32_t slot = static_cast<uint32_t>(b.segment()->tag());
  const uint32_t size = b.size();
  b.Release();
  for (size_t i = 0; i < open_.size(); ++i) {
    if (open_[i] == subpartition) {
      open_[i] = open_.back();
      open_.pop_back();
      break;
    }
  }
  if (size == 0) {
    free_.push_back(slot);
    return;
  }
  at_daemon_[slot] = 1;
  ++stats_.buffers;
  const size_t at = pending_.size();
  pending_.resize(at + local::kFilledFrameBytes);
  local::EncodeFilled({subpartition, slot, size}, pending_.data() + at);
  // Batch a few hand-overs per send, but never hold back more than a quarter of the credit.
  if (++pending_count_ >= std::max<uint32_t>(1, slots_ / 4)) (void)SendFilled();
}

Status Writer::SendFilled() {
  if (pending_.empty()) return Status::Ok();
  Status s = local::SendFrame(fd_, pending_, path_);
  pending_.clear();
  pending_count_ = 0;
  if (!s.ok()) return Fail(s);
  return Status::Ok();
}

Status Writer::ReadMessages(bool wait) {
  bool got_one = false;
  while (true) {
    const bool block = wait && !got_one;
    if (block && options_.credit_timeout.count() > 0) {
      pollfd pfd{fd_, POLLIN, 0};
      const int r = ::poll(&pfd, 1, static_cast<int>(options_.credit_timeout.count()));
      if (r == 0) {
        return TimeoutError("writer of job " + options_.job + " partition " +
                            std::to_string(options_.partition) + " waited " +
                            std::to_string(options_.credit_timeout.count()) +
                            " ms for write credit (no reader, or the store is full)");
      }
    }
    auto frame = reader_->Next(block);
    if (!frame.ok()) return frame.status();
    if (!frame->has_value()) return Status::Ok();
    got_one = true;
    const uint8_t type = (*frame)->type;
    if (type == static_cast<uint8_t>(LocalType::kCredit)) {
      if (Status s = OnCredit((*frame)->body); !s.ok()) return s;
    } else if (type == static_cast<uint8_t>(LocalType::kError)) {
      auto e = local::ParseError((*frame)->body);
      return e.ok() ? local::ToStatus(*e) : e.status();
    } else if (type == static_cast<uint8_t>(LocalType::kCommitAck) && committing_) {
      auto text = local::ParseText(LocalType::kCommitAck, (*frame)->body, local::kMaxReasonLength);
      if (!text.ok()) return text.status();
      auto out = DecodeMapOutput(*text);
      if (!out.ok()) return out.status();
      commit_ack_ = std::move(*out);
      return Status::Ok();
    } else {
      return ProtocolError("daemon " + path_ + " sent an unexpected " +
                           std::string(local::LocalTypeName(type)));
    }
  }
}

Status Writer::OnCredit(std::span<const uint8_t> body) {
  if (Status s = local::ParseCreditInto(body, &credit_scratch_); !s.ok()) return s;
  for (uint32_t slot : credit_scratch_) {
    if (slot >= slots_ || at_daemon_[slot] == 0) {
      return ProtocolError("daemon " + path_ + " returned slot " + std::to_string(slot) +
                           " that this writer did not hand over");
    }
    at_daemon_[slot] = 0;
    free_.push_back(slot);
  }
  return Status::Ok();
}

Result<MapOutput> Writer::Commit() {
  if (Status s = CheckUsable(0); !s.ok()) return s;
  while (!open_.empty()) HandOver(open_.back());
  if (Status s = SendFilled(); !s.ok()) return s;
  if (Status s = local::SendFrame(fd_, local::EncodeText(LocalType::kCommit, ""), path_); !s.ok()) {
    return Fail(s);
  }
  committing_ = true;
  while (!commit_ack_) {
    if (Status s = ReadMessages(/*wait=*/true); !s.ok()) return Fail(s);
  }
  state_ = State::kCommitted;
  return *commit_ack_;
}

Status Writer::Abort(std::string_view reason) {
  if (state_ == State::kAborted || state_ == State::kCommitted) return Status::Ok();
  const bool was_open = state_ == State::kOpen;
  state_ = State::kAborted;
  if (!was_open) return Status::Ok();  // failed: the daemon has failed the writer already
  return local::SendFrame(fd_, local::EncodeText(LocalType::kAbort, reason), path_);
}

}  // namespace sluice::client
