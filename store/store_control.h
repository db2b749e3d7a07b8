// The daemon's side of the external store's control messages (schema/control.fbs 42..46):
// ExtReleaseJob, ExtRegisterReadSet and ExtListRequest, answered from a PartitionStore.
// Thread-safe (the store is); call it from the daemon's control thread.
#pragma once

#include <span>

#include "schema/messages.h"
#include "shuffle/shuffle_server.h"
#include "store/partition_store.h"

namespace sluice::store {

// Whether `type` is one of the store's requests (42, 43, 45).
bool IsStoreControlRequest(schema::MessageType type);
// Answers one store request through `reply` (exactly once). The message was verified by the
// server (schema::VerifyControlMessage). REQUIRES: IsStoreControlRequest(type).
void ServeStoreControl(PartitionStore& store, schema::MessageType type,
                       std::span<const uint8_t> message, const shuffle::ControlReply& reply);

}  // namespace sluice::store
