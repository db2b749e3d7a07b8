// Daemon control messages (schema/control.fbs, frame types 32..63): checked parsing. Like the
// shuffle messages, every Parse function runs the FlatBuffers Verifier (with limits sized for
// a job spec or a status report, never unbounded) and then checks enum ranges and required
// strings. Builders live with their users (tools/control), which encode from C++ structs.
//
// Thread-safe (pure functions). The returned pointers point into the given bytes.
#pragma once

#include <cstdint>
#include <span>

#include "buffer/status.h"
#include "schema/control_generated.h"
#include "schema/messages.h"

namespace sluice::schema {

// Limits on control messages (a frame's metadata is at most 64 KiB anyway).
inline constexpr size_t kMaxJobIdLength = 128;
inline constexpr size_t kMaxJobTokenLength = 128;
inline constexpr size_t kMaxJobNodes = 1024;
inline constexpr size_t kMaxJobTasks = 4096;  // producers, consumers, input files

Result<const fb::SubmitJob*> ParseSubmitJob(std::span<const uint8_t> metadata);
Result<const fb::JobStatusRequest*> ParseJobStatusRequest(std::span<const uint8_t> metadata);
Result<const fb::JobStatusResponse*> ParseJobStatusResponse(std::span<const uint8_t> metadata);
Result<const fb::CancelJob*> ParseCancelJob(std::span<const uint8_t> metadata);
Result<const fb::StatsRequest*> ParseStatsRequest(std::span<const uint8_t> metadata);
Result<const fb::StatsResponse*> ParseStatsResponse(std::span<const uint8_t> metadata);
Result<const fb::CutConnections*> ParseCutConnections(std::span<const uint8_t> metadata);
Result<const fb::ControlResult*> ParseControlResult(std::span<const uint8_t> metadata);
Result<const fb::ListJobsRequest*> ParseListJobsRequest(std::span<const uint8_t> metadata);
// Also checks every job's state and that no job_id exceeds kMaxJobIdLength.
Result<const fb::ListJobsResponse*> ParseListJobsResponse(std::span<const uint8_t> metadata);

// The external store's messages (issue 13). A read set names at most kMaxReadSetEntries map
// outputs (what fits in one frame's 64 KiB metadata).
inline constexpr size_t kMaxReadSetEntries = 8000;
Result<const fb::ExtReleaseJob*> ParseExtReleaseJob(std::span<const uint8_t> metadata);
Result<const fb::ExtRegisterReadSet*> ParseExtRegisterReadSet(std::span<const uint8_t> metadata);
Result<const fb::ExtReadSetResponse*> ParseExtReadSetResponse(std::span<const uint8_t> metadata);
Result<const fb::ExtListRequest*> ParseExtListRequest(std::span<const uint8_t> metadata);
Result<const fb::ExtListResponse*> ParseExtListResponse(std::span<const uint8_t> metadata);

// The Parse function of control `type`, result dropped; ProtocolError for other types.
Status VerifyControlMessage(MessageType type, std::span<const uint8_t> metadata);

}  // namespace sluice::schema
