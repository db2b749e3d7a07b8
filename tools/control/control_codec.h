// Encoding and decoding of the daemon control messages (schema/control.fbs) from and to the
// plain structs of tools/control/job_spec.h. Encoders return the FlatBuffers bytes of one
// message (the frame's metadata); they keep every message under the 64 KiB metadata limit by
// cutting long texts (stats) or, for a huge job status, dropping per-channel vectors and then
// listing only the first tasks (JobStatus::totals stay complete, JobStatus::note says so). Decoders take
// messages that schema/control.h already checked.
//
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "buffer/status.h"
#include "schema/control.h"
#include "tools/control/job_spec.h"

namespace sluice::control {

// Largest metadata a frame carries (the header's 16-bit length).
inline constexpr size_t kMaxControlMessageBytes = 65535;

std::vector<uint8_t> EncodeSubmitJob(const JobSpec& spec, uint32_t node_index);
JobSpec DecodeJobSpec(const fb::JobSpecMsg& msg);

std::vector<uint8_t> EncodeJobStatusRequest(const std::string& job_id,
                                            const std::string& token = "");
std::vector<uint8_t> EncodeJobStatus(const JobStatus& status);
JobStatus DecodeJobStatus(const fb::JobStatusResponse& msg);

std::vector<uint8_t> EncodeCancelJob(const std::string& job_id, const std::string& reason,
                                     const std::string& token = "");

std::vector<uint8_t> EncodeStatsRequest();
std::vector<uint8_t> EncodeStats(const NodeStats& stats);
NodeStats DecodeStats(const fb::StatsResponse& msg);

std::vector<uint8_t> EncodeCutConnections();

std::vector<uint8_t> EncodeListJobsRequest();
// Fits in one frame's metadata: lists the first jobs that fit (each error cut to 300 bytes)
// and says in `note` how many were left out; `total` stays the daemon's count.
std::vector<uint8_t> EncodeJobList(const JobList& list);
JobList DecodeJobList(const fb::ListJobsResponse& msg);

// `status` Ok -> code 0. `count`: what the request counted (CutConnections).
std::vector<uint8_t> EncodeControlResult(const Status& status, uint32_t count = 0);
Status DecodeControlResult(const fb::ControlResult& msg, uint32_t* count = nullptr);

}  // namespace sluice::control
