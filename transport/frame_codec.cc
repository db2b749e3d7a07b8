#include "transport/frame_codec.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

namespace sluice::transport {
namespace {

uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
uint16_t LoadBe16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
void StoreBe32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
void StoreBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

// Error texts are built only when a frame is refused.
Rejection Reject(FrameError reason, const char* format, ...) __attribute__((format(printf, 2, 3)));
Rejection Reject(FrameError reason, const char* format, ...) {
  char text[256];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof(text), format, args);
  va_end(args);
  return Rejection{reason, ProtocolError(text)};
}

}  // namespace

std::string_view FrameErrorName(FrameError error) {
  switch (error) {
    case FrameError::kBadMagic:
      return "BadMagic";
    case FrameError::kUnsupportedVersion:
      return "UnsupportedVersion";
    case FrameError::kUnknownType:
      return "UnknownType";
    case FrameError::kFrameTooShort:
      return "FrameTooShort";
    case FrameError::kFrameTooLong:
      return "FrameTooLong";
    case FrameError::kMetadataOverrun:
      return "MetadataOverrun";
    case FrameError::kUnexpectedPayload:
      return "UnexpectedPayload";
    case FrameError::kPayloadTooLarge:
      return "PayloadTooLarge";
    case FrameError::kInvalidMessage:
      return "InvalidMessage";
    case FrameError::kInvalidField:
      return "InvalidField";
    case FrameError::kNoBufferForPayload:
      return "NoBufferForPayload";
    case FrameError::kBufferTooSmall:
      return "BufferTooSmall";
    case FrameError::kPayloadRejected:
      return "PayloadRejected";
    case FrameError::kTruncatedFrame:
      return "TruncatedFrame";
  }
  return "Unknown";
}

void EncodeFrameHeader(std::span<uint8_t, kFrameHeaderSize> out, uint8_t type,
                       uint16_t metadata_len, uint32_t payload_len) {
  constexpr uint64_t kMaxLength = std::numeric_limits<uint32_t>::max();
  const uint64_t length = kFrameHeaderSize + uint64_t{metadata_len} + payload_len;
  SLUICE_CHECK(length <= kMaxLength, "frame length does not fit the u32 length field");
  StoreBe32(&out[0], static_cast<uint32_t>(length));
  StoreBe32(&out[4], kMagic);
  out[8] = kProtocolVersion;
  out[9] = type;
  StoreBe16(&out[10], metadata_len);
}

bool FrameDecoder::LooksLikeHttp() const {
  if (state_ != State::kFailed || error_ != FrameError::kBadMagic || frames_ != 0) return false;
  static constexpr std::string_view kMethods[] = {"GET ", "POST", "HEAD", "PUT ", "DELE",
                                                  "OPTI", "PATC", "CONN", "TRAC"};
  const std::string_view start(reinterpret_cast<const char*>(header_bytes_), 4);
  for (std::string_view m : kMethods) {
    if (start == m) return true;
  }
  return false;
}

FrameHeader DecodeFrameHeader(std::span<const uint8_t, kFrameHeaderSize> in) {
  FrameHeader h;
  h.frame_length = LoadBe32(&in[0]);
  h.magic = LoadBe32(&in[4]);
  h.version = in[8];
  h.type = in[9];
  h.metadata_length = LoadBe16(&in[10]);
  return h;
}

std::optional<Rejection> CheckFrameHeader(const FrameHeader& h, const FrameLimits& limits) {
  if (h.magic != kMagic) {
    return Reject(FrameError::kBadMagic,
                  "bad magic 0x%08" PRIX32 " (expected 0x%08" PRIX32
                  " \"SLUC\"): the peer does not speak the Sluice protocol (wrong port?) or "
                  "the stream lost sync",
                  h.magic, kMagic);
  }
  if (h.version != kProtocolVersion) {
    return Reject(FrameError::kUnsupportedVersion,
                  "protocol version %u is not supported (this side speaks %u): run the same "
                  "Sluice version on both sides",
                  unsigned{h.version}, unsigned{kProtocolVersion});
  }
  if (!limits.known_types.test(h.type)) {
    return Reject(FrameError::kUnknownType, "unknown message type %u", unsigned{h.type});
  }
  if (h.frame_length < kFrameHeaderSize) {
    return Reject(FrameError::kFrameTooShort,
                  "frame length %" PRIu32 " is shorter than the %zu-byte frame header",
                  h.frame_length, kFrameHeaderSize);
  }
  const uint64_t max_frame = MaxFrameLength(limits.max_payload);
  if (h.frame_length > max_frame) {
    return Reject(FrameError::kFrameTooLong,
                  "frame length %" PRIu32 " exceeds the maximum %" PRIu64 " (segment size %" PRIu32
                  " + 64 KiB): does the peer use a larger segment size?",
                  h.frame_length, max_frame, limits.max_payload);
  }
  if (h.metadata_length > h.frame_length - kFrameHeaderSize) {
    return Reject(FrameError::kMetadataOverrun,
                  "metadata length %u overruns the frame (frame length %" PRIu32
                  " leaves %zu bytes after the header)",
                  unsigned{h.metadata_length}, h.frame_length,
                  size_t{h.frame_length - kFrameHeaderSize});
  }
  const uint32_t payload = h.payload_length();
  if (payload > 0 && !limits.payload_types.test(h.type)) {
    return Reject(FrameError::kUnexpectedPayload,
                  "message type %u carries no payload, but the frame has %" PRIu32 " payload bytes",
                  unsigned{h.type}, payload);
  }
  if (payload > limits.max_payload) {
    return Reject(FrameError::kPayloadTooLarge,
                  "payload of %" PRIu32
                  " bytes (message type %u) exceeds the segment size %" PRIu32,
                  payload, unsigned{h.type}, limits.max_payload);
  }
  return std::nullopt;
}

// ---- FrameDecoder ----

FrameDecoder::FrameDecoder(FrameSink* sink, const FrameLimits& limits)
    : sink_(sink), limits_(limits) {
  SLUICE_CHECK(sink_ != nullptr, "FrameDecoder needs a sink");
}

FrameDecoder::~FrameDecoder() = default;

Status FrameDecoder::Feed(std::span<const uint8_t> bytes, size_t* consumed) {
  SLUICE_CHECK(!in_sink_, "FrameSink called back into its FrameDecoder");
  size_t pos = 0;
  while (state_ != State::kFailed) {
    const size_t left = bytes.size() - pos;
    // A part with zero bytes left to read completes in the same step that starts it, so an
    // empty input only stops the loop here.
    if (left == 0) break;
    const uint8_t* in = bytes.data() + pos;
    size_t n = 0;
    switch (state_) {
      case State::kHeader:
        if (have_ == 0) frame_start_ = stream_offset_;
        n = std::min(left, kFrameHeaderSize - have_);
        std::memcpy(header_bytes_ + have_, in, n);
        break;
      case State::kMetadata:
        n = std::min<size_t>(left, header_.metadata_length - have_);
        std::memcpy(metadata_.get() + have_, in, n);
        break;
      case State::kPayload:
        n = std::min<size_t>(left, payload_length_ - have_);
        std::memcpy(target_.data() + have_, in, n);
        break;
      case State::kDiscard:
        n = std::min<size_t>(left, payload_length_ - have_);
        break;
      case State::kFailed:
        break;
    }
    pos += n;
    have_ += static_cast<uint32_t>(n);
    stream_offset_ += n;
    switch (state_) {
      case State::kHeader:
        if (have_ == kFrameHeaderSize) OnHeaderComplete();
        break;
      case State::kMetadata:
        if (have_ == header_.metadata_length) OnMetadataComplete();
        break;
      case State::kPayload:
        if (have_ == payload_length_) CompletePayload();
        break;
      case State::kDiscard:
        if (have_ == payload_length_) EndFrame();
        break;
      case State::kFailed:
        break;
    }
  }
  if (consumed != nullptr) *consumed = pos;
  return status_;
}

std::span<uint8_t> FrameDecoder::PayloadWindow() const {
  if (state_ != State::kPayload) return {};
  return {target_.data() + have_, payload_length_ - have_};
}

Status FrameDecoder::CommitPayload(size_t n) {
  SLUICE_CHECK(!in_sink_, "FrameSink called back into its FrameDecoder");
  if (n == 0) return status_;
  SLUICE_CHECK(state_ == State::kPayload && n <= payload_length_ - have_,
               "CommitPayload beyond the payload window");
  have_ += static_cast<uint32_t>(n);
  stream_offset_ += n;
  if (have_ == payload_length_) CompletePayload();
  return status_;
}

size_t FrameDecoder::FeedBytesWanted() const {
  switch (state_) {
    case State::kHeader:
      return kFrameHeaderSize - have_;
    case State::kMetadata:
      return header_.metadata_length - have_;
    case State::kDiscard:
      return payload_length_ - have_;
    case State::kPayload:
    case State::kFailed:
      return 0;
  }
  return 0;
}

Status FrameDecoder::Finish() {
  if (state_ == State::kFailed || at_frame_boundary()) return status_;
  char text[192];
  std::snprintf(text, sizeof(text),
                "the stream ended inside the frame at stream offset %" PRIu64 " (%" PRIu64
                " bytes of it received): the peer closed the connection mid-frame",
                frame_start_, stream_offset_ - frame_start_);
  Fail(FrameError::kTruncatedFrame, ProtocolError(text));
  return status_;
}

FrameError FrameDecoder::error() const {
  SLUICE_CHECK(failed(), "FrameDecoder::error() without a failure");
  return error_;
}

void FrameDecoder::OnHeaderComplete() {
  header_ = DecodeFrameHeader(header_bytes_);
  if (std::optional<Rejection> r = CheckFrameHeader(header_, limits_)) {
    char prefix[64];
    std::snprintf(prefix, sizeof(prefix), "frame at stream offset %" PRIu64 ": ", frame_start_);
    Fail(r->reason, Status(r->status.code(), prefix + r->status.message()));
    return;
  }
  if (header_.metadata_length > max_metadata_) {
    char text[192];
    std::snprintf(text, sizeof(text),
                  "frame at stream offset %" PRIu64
                  ": %u bytes of metadata, more than the %u "
                  "allowed before the handshake is complete",
                  frame_start_, unsigned{header_.metadata_length}, max_metadata_);
    Fail(FrameError::kFrameTooLong, ProtocolError(text));
    return;
  }
  payload_length_ = header_.payload_length();
  have_ = 0;
  if (header_.metadata_length > metadata_capacity_) {
    // Grows in powers of two up to kMaxMetadataLength: a few allocations per connection at
    // most, and none for a connection that only sends small messages.
    size_t cap = std::max<size_t>(metadata_capacity_, 256);
    while (cap < header_.metadata_length) cap *= 2;
    cap = std::min<size_t>(cap, kMaxMetadataLength);
    metadata_.reset(new uint8_t[cap]);
    metadata_capacity_ = static_cast<uint32_t>(cap);
  }
  if (header_.metadata_length > 0) {
    state_ = State::kMetadata;
  } else {
    OnMetadataComplete();
  }
}

void FrameDecoder::OnMetadataComplete() {
  in_sink_ = true;
  Admission a = sink_->OnFrame(header_, {metadata_.get(), header_.metadata_length});
  in_sink_ = false;
  if (a.rejection_.has_value()) {
    Rejection& r = *a.rejection_;
    if (r.status.ok()) {
      r.status = ProtocolError("frame rejected by the receiver (no reason given)");
    }
    Fail(r.reason, std::move(r.status));
    return;
  }
  have_ = 0;
  if (a.discard_) {
    if (payload_length_ == 0) {
      EndFrame();
    } else {
      state_ = State::kDiscard;
    }
    return;
  }
  if (!a.target_.valid()) {
    if (payload_length_ == 0) {
      EndFrame();
      return;
    }
    char text[160];
    std::snprintf(text, sizeof(text),
                  "frame at stream offset %" PRIu64 " (message type %u) has %" PRIu32
                  " payload bytes but the receiver supplied no buffer for them",
                  frame_start_, unsigned{header_.type}, payload_length_);
    Fail(FrameError::kNoBufferForPayload, ProtocolError(text));
    return;
  }
  if (a.target_.capacity() < payload_length_) {
    char text[160];
    std::snprintf(text, sizeof(text),
                  "frame at stream offset %" PRIu64 " (message type %u): payload of %" PRIu32
                  " bytes does not fit the receiver's buffer of %" PRIu32 " bytes",
                  frame_start_, unsigned{header_.type}, payload_length_, a.target_.capacity());
    Fail(FrameError::kBufferTooSmall, ProtocolError(text));
    return;  // `a` releases the buffer
  }
  target_ = std::move(a.target_);
  if (payload_length_ == 0) {
    CompletePayload();
  } else {
    state_ = State::kPayload;
  }
}

void FrameDecoder::CompletePayload() {
  target_.SetSize(payload_length_);
  buffer::Buffer payload = std::move(target_);
  EndFrame();
  in_sink_ = true;
  Status s = sink_->OnPayload(std::move(payload));
  in_sink_ = false;
  if (!s.ok()) Fail(FrameError::kPayloadRejected, std::move(s));
}

void FrameDecoder::EndFrame() {
  ++frames_;
  state_ = State::kHeader;
  have_ = 0;
  payload_length_ = 0;
}

void FrameDecoder::Fail(FrameError reason, Status status) {
  state_ = State::kFailed;
  error_ = reason;
  status_ = std::move(status);
  target_.Release();
}

}  // namespace sluice::transport
