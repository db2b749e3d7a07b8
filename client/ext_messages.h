// The external store's control messages (schema/control.fbs 42..46, docs/protocol.md
// "External partitions"): encoders and decoders from plain structs. Internal (not installed):
// used by the daemon's store service, the Reader, sluicectl and `sluice get`. Decoders take
// messages that schema/control.h already checked.
//
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "schema/control.h"

namespace sluice::client {

struct MapOutputKey {
  uint32_t partition = 0;
  uint32_t attempt = 0;
  bool operator==(const MapOutputKey&) const = default;
};

// One line of `sluicectl jobs`' external section and of `sluice get`'s listing.
struct ExternalPartition {
  std::string job;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  bool blocking = false;
  std::string state;
  uint64_t bytes = 0;
  uint64_t records = 0;
  uint64_t bytes_in_memory = 0;
  uint64_t bytes_on_disk = 0;
};

struct ExternalList {
  std::vector<ExternalPartition> partitions;
  uint32_t total = 0;
  std::string note;
};

std::vector<uint8_t> EncodeExtReleaseJob(const std::string& job, const std::string& token);
std::vector<uint8_t> EncodeExtRegisterReadSet(const std::string& job, const std::string& token,
                                              const std::vector<MapOutputKey>& outputs);
std::vector<uint8_t> EncodeExtReadSetResponse(const std::string& partition_id);
std::vector<uint8_t> EncodeExtListRequest(const std::string& job);
// Fits in one frame's metadata: the first partitions that fit; `note` says what was cut.
std::vector<uint8_t> EncodeExtList(const ExternalList& list);
ExternalList DecodeExtList(const fb::ExtListResponse& msg);
std::vector<MapOutputKey> DecodeOutputs(const fb::ExtRegisterReadSet& msg);
// ControlResult: code 0 for OK, else the StatusCode (as tools/control/control_codec.h).
std::vector<uint8_t> EncodeResult(const Status& status);

}  // namespace sluice::client
