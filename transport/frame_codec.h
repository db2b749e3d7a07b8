// The frame layer of the Sluice wire protocol (DESIGN.md "Wire format", version 1): the 12-byte
// frame header, its checks, and FrameDecoder, which cuts a TCP byte stream into frames and
// reads payloads straight into Buffers that the upper layer supplies.
//
// Every frame, both directions (integers big-endian):
//
//   0          4          8     9     10      12               12+H                  length
//   +----------+----------+-----+-----+-------+----------------+---------------------+
//   |  length  |  magic   | ver |type |   H   | metadata       | payload             |
//   |   u32    |"SLUC" u32| u8  | u8  |  u16  | H bytes        | length - 12 - H     |
//   +----------+----------+-----+-----+-------+----------------+---------------------+
//   '----------- header: kFrameHeaderSize ----'  FlatBuffers     bytes of one Buffer
//                                                 message (opaque  (only for types in
//                                                 here; schema/)   payload_types)
//
// `length` counts the whole frame, header included. The transport treats the metadata as
// opaque bytes; which types exist and which carry a payload is configured by the upper layer in
// FrameLimits. Header checks run before a single metadata byte is read, so nothing a peer sends
// makes the decoder allocate.
//
// Thread-safety: free functions are thread-safe; FrameDecoder is thread-compatible (one per
// connection, used on that connection's loop thread).
#pragma once

#include <algorithm>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/status.h"

namespace sluice::transport {

inline constexpr uint32_t kMagic = 0x534C5543;  // "SLUC"
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kFrameHeaderSize = 12;
inline constexpr uint32_t kMaxMetadataLength = 0xFFFF;  // H is a u16

// The longest frame a peer may send when payloads are at most `segment_size` bytes: header plus
// the longest metadata plus one full segment, i.e. the segment size plus just over 64 KiB
// (12 + 65535 bytes) for everything else.
constexpr uint64_t MaxFrameLength(uint32_t segment_size) {
  return kFrameHeaderSize + kMaxMetadataLength + uint64_t{segment_size};
}

// Why a frame was refused. The connection keeps one counter per reason.
enum class FrameError : uint8_t {
  // Header checks, in the order they are made, before any metadata is read.
  kBadMagic = 0,        // not "SLUC": not our protocol, or the stream lost sync
  kUnsupportedVersion,  // version byte != kProtocolVersion
  kUnknownType,         // type not in FrameLimits::known_types
  kFrameTooShort,       // length < kFrameHeaderSize
  kFrameTooLong,        // length > MaxFrameLength(max_payload)
  kMetadataOverrun,     // H > length - kFrameHeaderSize
  kUnexpectedPayload,   // payload bytes on a type not in FrameLimits::payload_types
  kPayloadTooLarge,     // payload > FrameLimits::max_payload
  // Given by the FrameSink after it looked at the metadata.
  kInvalidMessage,      // the message fails the FlatBuffers Verifier
  kInvalidField,        // it verifies, but a field is wrong (enum, credit, receiver id, size)
  kNoBufferForPayload,  // the frame has a payload and the sink supplied no Buffer for it
  kBufferTooSmall,      // the sink's Buffer is smaller than the payload
  kPayloadRejected,     // FrameSink::OnPayload refused the completed payload
  // The stream itself.
  kTruncatedFrame,  // the stream ended inside a frame (see FrameDecoder::Finish)
};
inline constexpr size_t kFrameErrorCount = 14;
static_assert(static_cast<size_t>(FrameError::kTruncatedFrame) + 1 == kFrameErrorCount);
// "BadMagic", "UnknownType", ...: stable names for counters and logs.
std::string_view FrameErrorName(FrameError error);

// A refused frame: the reason to count and a ProtocolError (usually) for a person.
struct Rejection {
  FrameError reason = FrameError::kInvalidMessage;
  Status status;
};

// What the upper layer allows. Bit t of known_types: type t may arrive; bit t of payload_types:
// type t may carry payload bytes. Payloads are at most max_payload bytes (the segment size).
struct FrameLimits {
  uint32_t max_payload = 0;
  std::bitset<256> known_types;
  std::bitset<256> payload_types;
};

struct FrameHeader {
  uint32_t frame_length = 0;
  uint32_t magic = 0;
  uint8_t version = 0;
  uint8_t type = 0;
  uint16_t metadata_length = 0;

  // REQUIRES: frame_length >= kFrameHeaderSize + metadata_length (true once checked).
  uint32_t payload_length() const {
    return frame_length - static_cast<uint32_t>(kFrameHeaderSize) - metadata_length;
  }
};

// Writes a header for a frame of `type` with metadata_len bytes of metadata and payload_len
// bytes of payload. REQUIRES: the frame length fits in a u32 (checked).
void EncodeFrameHeader(std::span<uint8_t, kFrameHeaderSize> out, uint8_t type,
                       uint16_t metadata_len, uint32_t payload_len);
// Reads the fields of a header without checking them.
FrameHeader DecodeFrameHeader(std::span<const uint8_t, kFrameHeaderSize> in);
// The header checks above, in order; nullopt when the header is acceptable.
std::optional<Rejection> CheckFrameHeader(const FrameHeader& header, const FrameLimits& limits);

// A FrameSink's answer to one frame's metadata: accept it (with the Buffer its payload is read
// into), accept it but discard its payload, or reject it.
class Admission {
 public:
  // Accepts the frame. `target` receives the payload at offset 0; pass an empty Buffer when the
  // frame has no payload. A valid `target` always comes back through OnPayload.
  Admission(buffer::Buffer target = {}) : target_(std::move(target)) {}  // NOLINT
  // Rejects the frame; the decoder fails with this reason and status.
  Admission(Rejection rejection) : rejection_(std::move(rejection)) {}  // NOLINT
  // Accepts the frame and skips its payload without storing it, e.g. data still in flight for
  // a channel that was just cancelled.
  static Admission Discard() {
    Admission a;
    a.discard_ = true;
    return a;
  }

 private:
  friend class FrameDecoder;
  buffer::Buffer target_;
  std::optional<Rejection> rejection_;
  bool discard_ = false;
};

// The upper layer's side of a FrameDecoder. Called on the decoder's thread from inside Feed()
// or CommitPayload(); it must not call back into the decoder.
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // A frame whose header passed the checks and whose metadata is complete. `metadata` is valid
  // only during the call; header.payload_length() payload bytes follow. Verify the message here
  // and return where the payload goes (see Admission). A rejection should name the reason
  // kInvalidMessage, kInvalidField or kNoBufferForPayload.
  virtual Admission OnFrame(const FrameHeader& header, std::span<const uint8_t> metadata) = 0;
  // The payload of the last accepted frame is complete: payload.size() is its length. Called
  // once for each valid Buffer OnFrame returned, also when the length is 0. A non-OK status
  // fails the decoder with kPayloadRejected.
  virtual Status OnPayload(buffer::Buffer payload) = 0;
};

// Cuts a byte stream into frames. Feed it any split of the stream, down to one byte at a time:
// it checks each header, collects the metadata in a buffer that grows (in powers of two, up to
// kMaxMetadataLength) only after a header within the limits asked for more, asks the sink where the
// payload goes, and fills that Buffer.
//
// Zero-copy reads: while a payload is pending, PayloadWindow() is the unfilled rest of the
// sink's Buffer; a socket may read straight into it and report the bytes with CommitPayload().
// Everything else (header, metadata, discarded payloads) goes through Feed(), and
// FeedBytesWanted() says how much of it the decoder needs before its next step, so the socket
// layer can size its staging reads.
//
// The first error fails the decoder for good (the connection is to be closed); a Buffer held
// for a partial payload is released at once. Thread-compatible.
class FrameDecoder {
 public:
  // `sink` must outlive the decoder.
  FrameDecoder(FrameSink* sink, const FrameLimits& limits);
  ~FrameDecoder();
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Consumes `bytes`. Returns OK when all were consumed, otherwise the first error; after that
  // every call returns the same error and consumes nothing. If `consumed` is given it receives
  // the number of bytes used (on error: up to the byte that completed the refused part).
  Status Feed(std::span<const uint8_t> bytes, size_t* consumed = nullptr);

  // The unfilled rest of the pending payload's Buffer; empty when no payload is pending.
  std::span<uint8_t> PayloadWindow() const;
  // Reports `n` bytes written at the start of PayloadWindow(); delivers the payload (OnPayload)
  // once it is complete. REQUIRES: n <= PayloadWindow().size() (checked in every build).
  Status CommitPayload(size_t n);

  // Bytes Feed() must get before the decoder's next step: the rest of the current header,
  // metadata or discarded payload. 0 while a payload window is open, and after failure.
  size_t FeedBytesWanted() const;

  // The peer closed the stream. Fails with kTruncatedFrame when that happened inside a frame.
  Status Finish();

  bool failed() const { return state_ == State::kFailed; }
  // The reason of the failure. REQUIRES: failed().
  FrameError error() const;
  // OK, or the failure.
  const Status& status() const { return status_; }
  // True between frames (no partial frame buffered).
  bool at_frame_boundary() const { return state_ == State::kHeader && have_ == 0; }
  // Stream bytes consumed so far (Feed and CommitPayload together).
  uint64_t bytes_consumed() const { return stream_offset_; }
  uint64_t frames_decoded() const { return frames_; }
  const FrameLimits& limits() const { return limits_; }
  // Frames with more metadata than this fail with kFrameTooLong (a connection keeps it small
  // until its handshake is done, so an unauthenticated peer cannot make it allocate 64 KiB).
  void set_max_metadata(uint32_t bytes) {
    max_metadata_ = std::min<uint32_t>(bytes, kMaxMetadataLength);
  }
  // Whether the decoder failed on the stream's first header and that header starts with an
  // HTTP method ("GET ", "POST", "HEAD", "PUT ", ...): a browser or a Prometheus scrape reached
  // the data port. The connection answers it in HTTP (Connection::HandleDecodeError).
  bool LooksLikeHttp() const;
  // Bytes held for metadata now (grows with the largest metadata received).
  size_t metadata_capacity() const { return metadata_capacity_; }

 private:
  enum class State : uint8_t { kHeader, kMetadata, kPayload, kDiscard, kFailed };

  void OnHeaderComplete();
  void OnMetadataComplete();
  void CompletePayload();
  void EndFrame();
  void Fail(FrameError reason, Status status);

  FrameSink* const sink_;
  const FrameLimits limits_;
  std::unique_ptr<uint8_t[]> metadata_;  // grown on demand, at most kMaxMetadataLength bytes
  uint32_t metadata_capacity_ = 0;
  uint32_t max_metadata_ = kMaxMetadataLength;

  State state_ = State::kHeader;
  bool in_sink_ = false;  // catches a sink calling back into the decoder
  uint8_t header_bytes_[kFrameHeaderSize] = {};
  FrameHeader header_;
  uint32_t have_ = 0;  // bytes of the current part (header, metadata, payload) received
  uint32_t payload_length_ = 0;
  buffer::Buffer target_;
  uint64_t frame_start_ = 0;  // stream offset of the current frame
  uint64_t stream_offset_ = 0;
  uint64_t frames_ = 0;
  FrameError error_ = FrameError::kBadMagic;
  Status status_;
};

}  // namespace sluice::transport
