#include "shuffle/protocol.h"

namespace sluice::shuffle {

transport::TransportOptions MakeTransportOptions(uint32_t segment_size,
                                                 const ConnectionTimeouts& timeouts,
                                                 const transport::FaultShim& faults) {
  transport::TransportOptions o;
  o.faults = faults;
  o.limits.max_payload = segment_size;
  o.limits.known_types = schema::KnownMessageTypes();
  o.limits.payload_types = schema::PayloadMessageTypes();
  o.heartbeat_interval = timeouts.heartbeat_interval;
  o.idle_timeout = timeouts.idle_timeout;
  o.handshake_timeout = timeouts.handshake_timeout;
  schema::MessageBuilder builder(64);
  transport::OutFrame hb = MakeFrame(schema::MessageType::kHeartbeat, builder.Heartbeat(0));
  o.heartbeat_frame.assign(hb.head().begin(), hb.head().end());
  return o;
}

transport::Rejection RejectMessage(schema::MessageType type, std::span<const uint8_t> message,
                                   Status status) {
  const transport::FrameError reason = schema::VerifyMessage(type, message).ok()
                                           ? transport::FrameError::kInvalidField
                                           : transport::FrameError::kInvalidMessage;
  return transport::Rejection{reason, std::move(status)};
}

Result<transport::OutFrame> TryMakeFrame(schema::MessageType type, std::span<const uint8_t> message,
                                         buffer::Buffer payload, uint32_t max_payload) {
  if (max_payload > 0 && payload && payload.size() > max_payload) {
    return InvalidArgument(std::string(schema::MessageTypeName(type)) + " with a payload of " +
                           std::to_string(payload.size()) +
                           " bytes cannot be sent: payloads are "
                           "at most one segment (" +
                           std::to_string(max_payload) + " bytes)");
  }
  auto frame =
      transport::OutFrame::TryMake(static_cast<uint8_t>(type), message, std::move(payload));
  if (!frame.ok()) {
    return InvalidArgument(std::string(schema::MessageTypeName(type)) + ": " +
                           frame.status().message());
  }
  return frame;
}

transport::OutFrame MakeFrame(schema::MessageType type, std::span<const uint8_t> message,
                              buffer::Buffer payload) {
  return transport::OutFrame::Make(static_cast<uint8_t>(type), message, std::move(payload));
}

}  // namespace sluice::shuffle
