#include "schema/messages.h"

#include "schema/control.h"
#include "schema/verify.h"

#include <bit>
#include <cstdio>
#include <string>
#include <type_traits>

namespace sluice::schema {

static_assert(static_cast<uint8_t>(fb::DataType::Data) ==
              static_cast<uint8_t>(buffer::DataType::kData));
static_assert(static_cast<uint8_t>(fb::DataType::EndOfPartition) ==
              static_cast<uint8_t>(buffer::DataType::kEndOfPartition));
static_assert(static_cast<uint8_t>(fb::DataType::Event) ==
              static_cast<uint8_t>(buffer::DataType::kEvent));
static_assert(static_cast<uint8_t>(fb::DataType::MAX) == buffer::kMaxDataType);

namespace {

constexpr MessageType kAllTypes[] = {
    MessageType::kHello,
    MessageType::kHelloAck,
    MessageType::kPartitionRequest,
    MessageType::kAddCredit,
    MessageType::kBufferResponse,
    MessageType::kBacklogAnnouncement,
    MessageType::kCancelPartitionRequest,
    MessageType::kCloseRequest,
    MessageType::kErrorResponse,
    MessageType::kHeartbeat,
    MessageType::kAuthResponse,
    MessageType::kBufferSizeAnnouncement,
    MessageType::kSubmitJob,
    MessageType::kJobStatusRequest,
    MessageType::kJobStatusResponse,
    MessageType::kCancelJob,
    MessageType::kStatsRequest,
    MessageType::kStatsResponse,
    MessageType::kCutConnections,
    MessageType::kControlResult,
    MessageType::kListJobsRequest,
    MessageType::kListJobsResponse,
    MessageType::kExtReleaseJob,
    MessageType::kExtRegisterReadSet,
    MessageType::kExtReadSetResponse,
    MessageType::kExtListRequest,
    MessageType::kExtListResponse,
};

// Error messages are built only on the failure path; a small concatenation helper keeps them
// readable without iostreams.
void Append(std::string& s, std::string_view v) { s.append(v); }
void Append(std::string& s, const char* v) { s.append(v); }
struct Hex {
  uint32_t value;
};
void Append(std::string& s, Hex h) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%02X", h.value);
  s.append(text);
}
template <typename T>
requires std::is_integral_v<T>
void Append(std::string& s, T v) {
  if constexpr (sizeof(T) == 1) {
    s.append(std::to_string(static_cast<int>(v)));
  } else {
    s.append(std::to_string(v));
  }
}
template <typename... Args>
Status Invalid(const Args&... args) {
  std::string s;
  (Append(s, args), ...);
  return ProtocolError(std::move(s));
}

// Our messages are one flat table; the limits only need to be above that. They bound the work a
// hostile message can cause.
flatbuffers::Verifier::Options VerifierOptions() {
  flatbuffers::Verifier::Options o;
  o.max_depth = 4;
  o.max_tables = 4;
  o.check_alignment = true;
  o.check_nested_flatbuffers = false;
  return o;
}

template <typename T>
Result<const T*> Verify(std::span<const uint8_t> md, std::string_view name) {
  static const flatbuffers::Verifier::Options options = VerifierOptions();
  return internal::VerifyRoot<T>(md, name, options);
}

// A string that may be absent (treated as empty) but not longer than `max`.
Status CheckOptionalString(const flatbuffers::String* s, size_t max, std::string_view msg,
                           std::string_view field) {
  if (s != nullptr && s->size() > max) {
    return Invalid(msg, ": ", field, " is ", s->size(), " bytes, longer than the ", max,
                   " allowed");
  }
  return Status::Ok();
}

Status CheckBytes(const flatbuffers::Vector<uint8_t>* v, size_t max, std::string_view msg,
                  std::string_view field) {
  if (v != nullptr && v->size() > max) {
    return Invalid(msg, ": ", field, " is ", v->size(), " bytes, longer than the ", max,
                   " allowed");
  }
  return Status::Ok();
}

template <typename T>
Result<const T*> ParseHandshake(std::span<const uint8_t> md, std::string_view name) {
  auto r = Verify<T>(md, name);
  if (!r.ok()) return r;
  const T* m = r.value();
  if (m->protocol_version() == 0) {
    return Invalid(name, ": protocol_version 0 is not a version (versions start at 1)");
  }
  const uint32_t seg = m->segment_size();
  // A Hello with segment_size 0 comes from a control-only client (sluicectl, the harness's
  // control client): it learns the daemon's segment size from the HelloAck.
  constexpr bool kIsHello = std::is_same_v<T, fb::Hello>;
  if (kIsHello && seg == 0) {
    // control-only: checked below like any other Hello
  } else if (seg < kMinSegmentSize || seg > kMaxSegmentSize || !std::has_single_bit(seg)) {
    return Invalid(name, ": segment_size ", seg, " is not a power of two from ", kMinSegmentSize,
                   " to ", kMaxSegmentSize, " bytes");
  }
  Status s = CheckOptionalString(m->node_name(), kMaxNodeNameLength, name, "node_name");
  if (s.ok()) s = CheckBytes(m->nonce(), kMaxNonceLength, name, "nonce");
  if (s.ok()) s = CheckBytes(m->auth_proof(), kMaxAuthProofLength, name, "auth_proof");
  if (!s.ok()) return s;
  return m;
}

}  // namespace

bool IsKnownMessageType(uint8_t type) {
  for (MessageType t : kAllTypes) {
    if (static_cast<uint8_t>(t) == type) return true;
  }
  return false;
}

bool IsControlMessageType(uint8_t type) {
  return type >= kFirstControlMessageType && type <= kLastControlMessageType &&
         IsKnownMessageType(type);
}

bool CarriesPayload(MessageType type) { return type == MessageType::kBufferResponse; }

std::string_view MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "Hello";
    case MessageType::kHelloAck:
      return "HelloAck";
    case MessageType::kPartitionRequest:
      return "PartitionRequest";
    case MessageType::kAddCredit:
      return "AddCredit";
    case MessageType::kBufferResponse:
      return "BufferResponse";
    case MessageType::kBacklogAnnouncement:
      return "BacklogAnnouncement";
    case MessageType::kCancelPartitionRequest:
      return "CancelPartitionRequest";
    case MessageType::kCloseRequest:
      return "CloseRequest";
    case MessageType::kErrorResponse:
      return "ErrorResponse";
    case MessageType::kHeartbeat:
      return "Heartbeat";
    case MessageType::kAuthResponse:
      return "AuthResponse";
    case MessageType::kBufferSizeAnnouncement:
      return "BufferSizeAnnouncement";
    case MessageType::kSubmitJob:
      return "SubmitJob";
    case MessageType::kJobStatusRequest:
      return "JobStatusRequest";
    case MessageType::kJobStatusResponse:
      return "JobStatusResponse";
    case MessageType::kCancelJob:
      return "CancelJob";
    case MessageType::kStatsRequest:
      return "StatsRequest";
    case MessageType::kStatsResponse:
      return "StatsResponse";
    case MessageType::kCutConnections:
      return "CutConnections";
    case MessageType::kControlResult:
      return "ControlResult";
    case MessageType::kListJobsRequest:
      return "ListJobsRequest";
    case MessageType::kListJobsResponse:
      return "ListJobsResponse";
    case MessageType::kExtReleaseJob:
      return "ExtReleaseJob";
    case MessageType::kExtRegisterReadSet:
      return "ExtRegisterReadSet";
    case MessageType::kExtReadSetResponse:
      return "ExtReadSetResponse";
    case MessageType::kExtListRequest:
      return "ExtListRequest";
    case MessageType::kExtListResponse:
      return "ExtListResponse";
  }
  return "Unknown";
}

std::bitset<256> KnownMessageTypes() {
  std::bitset<256> bits;
  for (MessageType t : kAllTypes) bits.set(static_cast<uint8_t>(t));
  return bits;
}

std::bitset<256> PayloadMessageTypes() {
  std::bitset<256> bits;
  for (MessageType t : kAllTypes) {
    if (CarriesPayload(t)) bits.set(static_cast<uint8_t>(t));
  }
  return bits;
}

Result<const fb::Hello*> ParseHello(std::span<const uint8_t> metadata) {
  return ParseHandshake<fb::Hello>(metadata, "Hello");
}

Result<const fb::HelloAck*> ParseHelloAck(std::span<const uint8_t> metadata) {
  return ParseHandshake<fb::HelloAck>(metadata, "HelloAck");
}

Result<const fb::PartitionRequest*> ParsePartitionRequest(std::span<const uint8_t> metadata) {
  auto r = Verify<fb::PartitionRequest>(metadata, "PartitionRequest");
  if (!r.ok()) return r;
  const fb::PartitionRequest* m = r.value();
  const flatbuffers::String* id = m->partition_id();
  if (id == nullptr || id->size() == 0) {
    return Invalid("PartitionRequest for receiver ", m->receiver_id(),
                   ": partition_id is missing or empty");
  }
  if (id->size() > kMaxPartitionIdLength) {
    return Invalid("PartitionRequest for receiver ", m->receiver_id(), ": partition_id is ",
                   id->size(), " bytes, longer than the ", kMaxPartitionIdLength, " allowed");
  }
  if (m->initial_credit() < 0) {
    return Invalid("PartitionRequest for receiver ", m->receiver_id(), ": initial_credit ",
                   m->initial_credit(), " is negative");
  }
  if (m->access_proof() != nullptr && m->access_proof()->size() > kMaxAuthProofLength) {
    return Invalid("PartitionRequest for receiver ", m->receiver_id(), ": access_proof is ",
                   m->access_proof()->size(), " bytes, longer than the ", kMaxAuthProofLength,
                   " allowed");
  }
  return m;
}

Result<const fb::AddCredit*> ParseAddCredit(std::span<const uint8_t> metadata) {
  auto r = Verify<fb::AddCredit>(metadata, "AddCredit");
  if (!r.ok()) return r;
  const fb::AddCredit* m = r.value();
  if (m->credit() <= 0) {
    return Invalid("AddCredit for receiver ", m->receiver_id(), ": credit ", m->credit(),
                   " is not positive (credit must be > 0)");
  }
  return m;
}

Result<const fb::BufferSizeAnnouncement*> ParseBufferSizeAnnouncement(
    std::span<const uint8_t> metadata) {
  auto r = Verify<fb::BufferSizeAnnouncement>(metadata, "BufferSizeAnnouncement");
  if (!r.ok()) return r;
  const fb::BufferSizeAnnouncement* m = r.value();
  if (m->buffer_size() == 0) {
    return Invalid("BufferSizeAnnouncement for receiver ", m->receiver_id(),
                   ": buffer_size 0 is not a size (sizes are > 0 bytes)");
  }
  return m;
}

Result<const fb::BufferResponse*> ParseBufferResponse(std::span<const uint8_t> metadata,
                                                      uint32_t max_payload) {
  auto r = Verify<fb::BufferResponse>(metadata, "BufferResponse");
  if (!r.ok()) return r;
  const fb::BufferResponse* m = r.value();
  const uint64_t id = m->receiver_id();
  if (m->sequence_number() < 0) {
    return Invalid("BufferResponse for receiver ", id, ": sequence_number ", m->sequence_number(),
                   " is negative");
  }
  if (m->backlog() < 0) {
    return Invalid("BufferResponse for receiver ", id, ": backlog ", m->backlog(), " is negative");
  }
  const auto type = static_cast<uint8_t>(m->data_type());
  if (type > static_cast<uint8_t>(fb::DataType::MAX)) {
    return Invalid("BufferResponse for receiver ", id, ": data_type ", type,
                   " is not a known DataType (0..", static_cast<uint8_t>(fb::DataType::MAX), ")");
  }
  if ((m->flags() & kFlagCompressed) != 0) {
    return Invalid("BufferResponse for receiver ", id, ": flags ", Hex{m->flags()},
                   " sets compressed (0x01), which protocol version 1 does not use");
  }
  if ((m->flags() & ~kKnownFlags) != 0) {
    return Invalid("BufferResponse for receiver ", id, ": flags ", Hex{m->flags()},
                   " has bits set other than checksummed (0x02)");
  }
  if (m->payload_size() > max_payload) {
    return Invalid("BufferResponse for receiver ", id, ": payload_size ", m->payload_size(),
                   " exceeds the segment size ", max_payload);
  }
  return m;
}

Result<const fb::BacklogAnnouncement*> ParseBacklogAnnouncement(std::span<const uint8_t> metadata) {
  auto r = Verify<fb::BacklogAnnouncement>(metadata, "BacklogAnnouncement");
  if (!r.ok()) return r;
  const fb::BacklogAnnouncement* m = r.value();
  if (m->backlog() < 0) {
    return Invalid("BacklogAnnouncement for receiver ", m->receiver_id(), ": backlog ",
                   m->backlog(), " is negative");
  }
  return m;
}

Result<const fb::CancelPartitionRequest*> ParseCancelPartitionRequest(
    std::span<const uint8_t> metadata) {
  return Verify<fb::CancelPartitionRequest>(metadata, "CancelPartitionRequest");
}

Result<const fb::CloseRequest*> ParseCloseRequest(std::span<const uint8_t> metadata) {
  return Verify<fb::CloseRequest>(metadata, "CloseRequest");
}

Result<const fb::ErrorResponse*> ParseErrorResponse(std::span<const uint8_t> metadata) {
  auto r = Verify<fb::ErrorResponse>(metadata, "ErrorResponse");
  if (!r.ok()) return r;
  const fb::ErrorResponse* m = r.value();
  const auto code = static_cast<uint16_t>(m->code());
  if (code > static_cast<uint16_t>(fb::ErrorCode::MAX)) {
    return Invalid("ErrorResponse: code ", code, " is not a known ErrorCode (0..",
                   static_cast<uint16_t>(fb::ErrorCode::MAX), ")");
  }
  Status s = CheckOptionalString(m->message(), kMaxErrorMessageLength, "ErrorResponse", "message");
  if (!s.ok()) return s;
  return m;
}

Result<const fb::Heartbeat*> ParseHeartbeat(std::span<const uint8_t> metadata) {
  return Verify<fb::Heartbeat>(metadata, "Heartbeat");
}

Result<const fb::AuthResponse*> ParseAuthResponse(std::span<const uint8_t> metadata) {
  auto r = Verify<fb::AuthResponse>(metadata, "AuthResponse");
  if (!r.ok()) return r;
  Status s = CheckBytes(r.value()->auth_proof(), kMaxAuthProofLength, "AuthResponse", "auth_proof");
  if (!s.ok()) return s;
  return r;
}

Status CheckMessage(MessageType type, std::span<const uint8_t> metadata, uint32_t max_payload) {
  if (IsControlMessageType(static_cast<uint8_t>(type))) return VerifyMessage(type, metadata);
  switch (type) {
    case MessageType::kHello:
      return ParseHello(metadata).status();
    case MessageType::kHelloAck:
      return ParseHelloAck(metadata).status();
    case MessageType::kPartitionRequest:
      return ParsePartitionRequest(metadata).status();
    case MessageType::kAddCredit:
      return ParseAddCredit(metadata).status();
    case MessageType::kBufferResponse:
      return ParseBufferResponse(metadata, max_payload).status();
    case MessageType::kBacklogAnnouncement:
      return ParseBacklogAnnouncement(metadata).status();
    case MessageType::kCancelPartitionRequest:
      return ParseCancelPartitionRequest(metadata).status();
    case MessageType::kCloseRequest:
      return ParseCloseRequest(metadata).status();
    case MessageType::kErrorResponse:
      return ParseErrorResponse(metadata).status();
    case MessageType::kHeartbeat:
      return ParseHeartbeat(metadata).status();
    case MessageType::kAuthResponse:
      return ParseAuthResponse(metadata).status();
    case MessageType::kBufferSizeAnnouncement:
      return ParseBufferSizeAnnouncement(metadata).status();
    default:
      break;
  }
  return Invalid("message type ", static_cast<uint8_t>(type), " is not a known message type");
}

Status VerifyMessage(MessageType type, std::span<const uint8_t> metadata) {
  switch (type) {
    case MessageType::kHello:
      return Verify<fb::Hello>(metadata, "Hello").status();
    case MessageType::kHelloAck:
      return Verify<fb::HelloAck>(metadata, "HelloAck").status();
    case MessageType::kPartitionRequest:
      return Verify<fb::PartitionRequest>(metadata, "PartitionRequest").status();
    case MessageType::kAddCredit:
      return Verify<fb::AddCredit>(metadata, "AddCredit").status();
    case MessageType::kBufferResponse:
      return Verify<fb::BufferResponse>(metadata, "BufferResponse").status();
    case MessageType::kBacklogAnnouncement:
      return Verify<fb::BacklogAnnouncement>(metadata, "BacklogAnnouncement").status();
    case MessageType::kCancelPartitionRequest:
      return Verify<fb::CancelPartitionRequest>(metadata, "CancelPartitionRequest").status();
    case MessageType::kCloseRequest:
      return Verify<fb::CloseRequest>(metadata, "CloseRequest").status();
    case MessageType::kErrorResponse:
      return Verify<fb::ErrorResponse>(metadata, "ErrorResponse").status();
    case MessageType::kHeartbeat:
      return Verify<fb::Heartbeat>(metadata, "Heartbeat").status();
    case MessageType::kAuthResponse:
      return Verify<fb::AuthResponse>(metadata, "AuthResponse").status();
    case MessageType::kBufferSizeAnnouncement:
      return Verify<fb::BufferSizeAnnouncement>(metadata, "BufferSizeAnnouncement").status();
    default:
      if (IsControlMessageType(static_cast<uint8_t>(type))) {
        return VerifyControlMessage(type, metadata);
      }
      break;
  }
  return Invalid("message type ", static_cast<uint8_t>(type), " is not a known message type");
}

// ---- MessageBuilder ----

MessageBuilder::MessageBuilder(size_t initial_capacity) : fbb_(initial_capacity) {
  // The builder allocates lazily; encode one message now so the first real one does not.
  Finish(fb::CreateCloseRequest(fbb_));
}

template <typename T>
std::span<const uint8_t> MessageBuilder::Finish(flatbuffers::Offset<T> root) {
  fbb_.Finish(root);
  return {fbb_.GetBufferPointer(), fbb_.GetSize()};
}

std::span<const uint8_t> MessageBuilder::Hello(const HandshakeFields& f) {
  fbb_.Clear();
  auto name = fbb_.CreateString(f.node_name.data(), f.node_name.size());
  auto nonce = fbb_.CreateVector(f.nonce.data(), f.nonce.size());
  auto proof = fbb_.CreateVector(f.auth_proof.data(), f.auth_proof.size());
  return Finish(fb::CreateHello(fbb_, f.protocol_version, f.segment_size, name, nonce, proof));
}

std::span<const uint8_t> MessageBuilder::HelloAck(const HandshakeFields& f) {
  fbb_.Clear();
  auto name = fbb_.CreateString(f.node_name.data(), f.node_name.size());
  auto nonce = fbb_.CreateVector(f.nonce.data(), f.nonce.size());
  auto proof = fbb_.CreateVector(f.auth_proof.data(), f.auth_proof.size());
  return Finish(fb::CreateHelloAck(fbb_, f.protocol_version, f.segment_size, name, nonce, proof));
}

std::span<const uint8_t> MessageBuilder::PartitionRequest(std::string_view partition_id,
                                                          uint32_t subpartition,
                                                          uint64_t receiver_id,
                                                          int32_t initial_credit,
                                                          std::span<const uint8_t> access_proof) {
  fbb_.Clear();
  auto id = fbb_.CreateString(partition_id.data(), partition_id.size());
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> proof;
  if (!access_proof.empty()) proof = fbb_.CreateVector(access_proof.data(), access_proof.size());
  return Finish(
      fb::CreatePartitionRequest(fbb_, id, subpartition, receiver_id, initial_credit, proof));
}

std::span<const uint8_t> MessageBuilder::AddCredit(uint64_t receiver_id, int32_t credit) {
  fbb_.Clear();
  return Finish(fb::CreateAddCredit(fbb_, receiver_id, credit));
}

std::span<const uint8_t> MessageBuilder::BufferResponse(const BufferResponseFields& f) {
  fbb_.Clear();
  return Finish(fb::CreateBufferResponse(fbb_, f.receiver_id, f.sequence_number, f.backlog,
                                         ToWire(f.data_type), f.flags, f.payload_size, f.checksum));
}

std::span<const uint8_t> MessageBuilder::BacklogAnnouncement(uint64_t receiver_id,
                                                             int32_t backlog) {
  fbb_.Clear();
  return Finish(fb::CreateBacklogAnnouncement(fbb_, receiver_id, backlog));
}

std::span<const uint8_t> MessageBuilder::CancelPartitionRequest(uint64_t receiver_id) {
  fbb_.Clear();
  return Finish(fb::CreateCancelPartitionRequest(fbb_, receiver_id));
}

std::span<const uint8_t> MessageBuilder::CloseRequest() {
  fbb_.Clear();
  return Finish(fb::CreateCloseRequest(fbb_));
}

std::span<const uint8_t> MessageBuilder::ErrorResponse(fb::ErrorCode code, std::string_view message,
                                                       std::optional<uint64_t> receiver_id) {
  if (message.size() > kMaxErrorMessageLength) {
    size_t n = kMaxErrorMessageLength;
    // Do not cut a UTF-8 sequence: back up over continuation bytes (10xxxxxx).
    while (n > 0 && (static_cast<uint8_t>(message[n]) & 0xC0) == 0x80) --n;
    message = message.substr(0, n);
  }
  fbb_.Clear();
  auto text = fbb_.CreateString(message.data(), message.size());
  flatbuffers::Optional<uint64_t> id = flatbuffers::nullopt;
  if (receiver_id.has_value()) id = *receiver_id;
  return Finish(fb::CreateErrorResponse(fbb_, code, text, id));
}

std::span<const uint8_t> MessageBuilder::Heartbeat(uint64_t timestamp_ns) {
  fbb_.Clear();
  return Finish(fb::CreateHeartbeat(fbb_, timestamp_ns));
}

std::span<const uint8_t> MessageBuilder::AuthResponse(std::span<const uint8_t> auth_proof) {
  fbb_.Clear();
  auto proof = fbb_.CreateVector(auth_proof.data(), auth_proof.size());
  return Finish(fb::CreateAuthResponse(fbb_, proof));
}

std::span<const uint8_t> MessageBuilder::BufferSizeAnnouncement(uint64_t receiver_id,
                                                                uint32_t buffer_size) {
  fbb_.Clear();
  return Finish(fb::CreateBufferSizeAnnouncement(fbb_, receiver_id, buffer_size));
}

}  // namespace sluice::schema
