// Sluice protocol messages: type numbers, checked parsing of received messages, and a reusable
// builder for sent ones. The tables themselves are in schema/messages.fbs; their generated C++
// (namespace sluice::fb) comes with this header.
//
// Parsing never trusts the peer: every Parse function runs the FlatBuffers Verifier with tight
// limits and then checks what the 2.0.8 Verifier lets through (enum values out of range,
// negative or zero counts, missing or oversized strings, oversized payloads). A failure is a
// ProtocolError whose message names the message, the field and the value. The returned pointer
// points into the given bytes and is valid only while they are.
//
// Thread-safety: the free functions are thread-safe; MessageBuilder is thread-compatible (one
// per thread or connection).
#pragma once

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "buffer/buffer.h"
#include "buffer/status.h"
#include "flatbuffers/flatbuffers.h"
#include "schema/messages_generated.h"

namespace sluice::schema {

// The message type byte of the frame header. 1..11 are the shuffle protocol; 32..63 are daemon
// control messages (schema/control.fbs, parsed by schema/control.h); the rest is unassigned.
enum class MessageType : uint8_t {
  kHello = 1,
  kHelloAck = 2,
  kPartitionRequest = 3,
  kAddCredit = 4,
  kBufferResponse = 5,
  kBacklogAnnouncement = 6,
  kCancelPartitionRequest = 7,
  kCloseRequest = 8,
  kErrorResponse = 9,
  kHeartbeat = 10,
  kAuthResponse = 11,
  // Buffer debloating (issue 14): client -> server, the buffer size a receiver asks for.
  kBufferSizeAnnouncement = 12,
  // Daemon control (schema/control.fbs).
  kSubmitJob = 32,
  kJobStatusRequest = 33,
  kJobStatusResponse = 34,
  kCancelJob = 35,
  kStatsRequest = 36,
  kStatsResponse = 37,
  kCutConnections = 38,
  kControlResult = 39,
  kListJobsRequest = 40,
  kListJobsResponse = 41,
  // The external shuffle store (issue 13): 42..47.
  kExtReleaseJob = 42,
  kExtRegisterReadSet = 43,
  kExtReadSetResponse = 44,
  kExtListRequest = 45,
  kExtListResponse = 46,
};
inline constexpr uint8_t kFirstControlMessageType = 32;
inline constexpr uint8_t kLastControlMessageType = 63;

// True for the types above.
bool IsKnownMessageType(uint8_t type);
// True for the daemon control types (32..63 that are defined).
bool IsControlMessageType(uint8_t type);
// True only for BufferResponse: the one message followed by payload bytes.
bool CarriesPayload(MessageType type);
// "AddCredit" etc., or "Unknown".
std::string_view MessageTypeName(MessageType type);
// For transport::FrameLimits: bit t is set when type t is known / carries a payload.
std::bitset<256> KnownMessageTypes();
std::bitset<256> PayloadMessageTypes();

// Limits enforced on received messages.
inline constexpr size_t kMaxPartitionIdLength = 256;
inline constexpr size_t kMaxNodeNameLength = 256;
inline constexpr size_t kMaxNonceLength = 64;
inline constexpr size_t kMaxAuthProofLength = 64;
// Nonces and proofs we send: 32 random bytes, and an HMAC-SHA256 (32 bytes).
inline constexpr size_t kNonceLength = 32;
inline constexpr size_t kMaxErrorMessageLength = 4096;
// Segment sizes a Hello may announce: a power of two in this range (DESIGN.md "Memory model").
inline constexpr uint32_t kMinSegmentSize = 4 * 1024;
inline constexpr uint32_t kMaxSegmentSize = 1024 * 1024;
// The smallest buffer a BufferSizeAnnouncement can make the sender cut (smaller values are
// raised to it): below this, frame headers and per-buffer work outweigh the data.
inline constexpr uint32_t kMinDebloatBufferSize = 1024;

// BufferResponse.flags bits. Compressed is reserved: protocol version 1 has no compression,
// so a set bit is a protocol error (a receiver would otherwise hand compressed bytes to the
// consumer as records), like any bit outside kKnownFlags.
inline constexpr uint8_t kFlagCompressed = 1u << 0;
inline constexpr uint8_t kFlagChecksummed = 1u << 1;
inline constexpr uint8_t kKnownFlags = kFlagChecksummed;

// The wire DataType and buffer::DataType have the same values (checked at compile time).
inline fb::DataType ToWire(buffer::DataType t) { return static_cast<fb::DataType>(t); }
// REQUIRES: `t` came from a checked message (in range).
inline buffer::DataType FromWire(fb::DataType t) { return static_cast<buffer::DataType>(t); }

// Parse functions: Verifier + field checks. `metadata` is the FlatBuffers message of one frame.
Result<const fb::Hello*> ParseHello(std::span<const uint8_t> metadata);
Result<const fb::HelloAck*> ParseHelloAck(std::span<const uint8_t> metadata);
Result<const fb::PartitionRequest*> ParsePartitionRequest(std::span<const uint8_t> metadata);
Result<const fb::AddCredit*> ParseAddCredit(std::span<const uint8_t> metadata);
// Also rejects payload_size > max_payload. The caller still compares payload_size with the
// frame's payload length.
Result<const fb::BufferResponse*> ParseBufferResponse(std::span<const uint8_t> metadata,
                                                      uint32_t max_payload);
Result<const fb::BacklogAnnouncement*> ParseBacklogAnnouncement(std::span<const uint8_t> metadata);
Result<const fb::CancelPartitionRequest*> ParseCancelPartitionRequest(
    std::span<const uint8_t> metadata);
Result<const fb::CloseRequest*> ParseCloseRequest(std::span<const uint8_t> metadata);
Result<const fb::ErrorResponse*> ParseErrorResponse(std::span<const uint8_t> metadata);
Result<const fb::Heartbeat*> ParseHeartbeat(std::span<const uint8_t> metadata);
Result<const fb::AuthResponse*> ParseAuthResponse(std::span<const uint8_t> metadata);
// Rejects buffer_size 0 (kInvalidField); any other value passes (the server clamps it to
// [kMinDebloatBufferSize, its segment size]).
Result<const fb::BufferSizeAnnouncement*> ParseBufferSizeAnnouncement(
    std::span<const uint8_t> metadata);

// The Parse function of `type`, result dropped. ProtocolError for an unknown type. Control
// types are only verified here (schema/control.h checks their fields).
Status CheckMessage(MessageType type, std::span<const uint8_t> metadata, uint32_t max_payload);
// Only the structural part (the FlatBuffers Verifier). When CheckMessage fails but this passes,
// the message is well formed with a wrong field: lets a caller count the two apart.
Status VerifyMessage(MessageType type, std::span<const uint8_t> metadata);

// Fields shared by Hello and HelloAck.
struct HandshakeFields {
  uint8_t protocol_version = 1;
  uint32_t segment_size = 0;
  std::string_view node_name;
  std::span<const uint8_t> nonce;
  std::span<const uint8_t> auth_proof;
};

struct BufferResponseFields {
  uint64_t receiver_id = 0;
  int32_t sequence_number = 0;
  int32_t backlog = 0;
  buffer::DataType data_type = buffer::DataType::kData;
  uint8_t flags = 0;
  uint32_t payload_size = 0;
  uint32_t checksum = 0;
};

// Encodes messages into one reused FlatBufferBuilder: once it has grown to the largest message
// sent, encoding allocates nothing. Each method returns the finished message; the bytes are
// valid until the next call on this builder (copy them, or write them, before that).
// Values are encoded as given, not checked: the receiving side's Parse functions do that.
// Thread-compatible.
class MessageBuilder {
 public:
  // Reserves `initial_capacity` bytes now.
  explicit MessageBuilder(size_t initial_capacity = 1024);
  MessageBuilder(const MessageBuilder&) = delete;
  MessageBuilder& operator=(const MessageBuilder&) = delete;

  std::span<const uint8_t> Hello(const HandshakeFields& fields);
  std::span<const uint8_t> HelloAck(const HandshakeFields& fields);
  std::span<const uint8_t> PartitionRequest(std::string_view partition_id, uint32_t subpartition,
                                            uint64_t receiver_id, int32_t initial_credit,
                                            std::span<const uint8_t> access_proof = {});
  std::span<const uint8_t> AddCredit(uint64_t receiver_id, int32_t credit);
  std::span<const uint8_t> BufferResponse(const BufferResponseFields& fields);
  std::span<const uint8_t> BacklogAnnouncement(uint64_t receiver_id, int32_t backlog);
  std::span<const uint8_t> CancelPartitionRequest(uint64_t receiver_id);
  std::span<const uint8_t> CloseRequest();
  // `message` is cut to kMaxErrorMessageLength bytes (at a UTF-8 character boundary).
  std::span<const uint8_t> ErrorResponse(fb::ErrorCode code, std::string_view message,
                                         std::optional<uint64_t> receiver_id = std::nullopt);
  std::span<const uint8_t> Heartbeat(uint64_t timestamp_ns);
  std::span<const uint8_t> AuthResponse(std::span<const uint8_t> auth_proof);
  std::span<const uint8_t> BufferSizeAnnouncement(uint64_t receiver_id, uint32_t buffer_size);

 private:
  template <typename T>
  std::span<const uint8_t> Finish(flatbuffers::Offset<T> root);

  flatbuffers::FlatBufferBuilder fbb_;
};

}  // namespace sluice::schema
