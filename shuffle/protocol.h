// Glue between the shuffle protocol (schema/ messages) and the transport: the frame limits and
// heartbeat frame a shuffle connection uses, and helpers that wrap a message into an OutFrame.
// Thread-safe (pure functions).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string_view>

#include "schema/messages.h"
#include "shuffle/shuffle_options.h"
#include "transport/connection.h"
#include "transport/transport_options.h"

namespace sluice::shuffle {

// Transport options for shuffle connections with payloads of at most `segment_size` bytes.
// `faults`: the seeded fault shim (tests and sluice-harness only; off by default).
transport::TransportOptions MakeTransportOptions(uint32_t segment_size,
                                                 const ConnectionTimeouts& timeouts,
                                                 const transport::FaultShim& faults = {});

// Refuses a frame whose message failed to parse: kInvalidMessage when the FlatBuffers Verifier
// rejects it, kInvalidField when it verifies but a field is wrong.
transport::Rejection RejectMessage(schema::MessageType type, std::span<const uint8_t> message,
                                   Status status);

// A frame carrying `message` and an optional payload; InvalidArgument when the message is over
// the frame's metadata limit (65,535 bytes) or the payload is larger than `max_payload` (the
// segment size; 0: no payload check). For messages whose size depends on input (control
// replies).
Result<transport::OutFrame> TryMakeFrame(schema::MessageType type, std::span<const uint8_t> message,
                                         buffer::Buffer payload = {}, uint32_t max_payload = 0);

// A frame carrying `message` (bytes from a schema::MessageBuilder) and an optional payload.
// REQUIRES: the message fits a frame (the protocol's fixed messages do, their strings are
// bounded by the builder); otherwise use TryMakeFrame.
transport::OutFrame MakeFrame(schema::MessageType type, std::span<const uint8_t> message,
                              buffer::Buffer payload = {});

}  // namespace sluice::shuffle
