#include "schema/control.h"

#include "schema/verify.h"

#include <string>

namespace sluice::schema {
namespace {

flatbuffers::Verifier::Options ControlVerifierOptions() {
  flatbuffers::Verifier::Options o;
  o.max_depth = 8;
  o.max_tables = 2 * kMaxJobTasks + 16;
  o.check_alignment = true;
  o.check_nested_flatbuffers = false;
  return o;
}

Status Bad(std::string_view msg, const std::string& what) {
  return ProtocolError(std::string(msg) + ": " + what);
}

template <typename T>
Result<const T*> VerifyControl(std::span<const uint8_t> md, std::string_view name) {
  static const flatbuffers::Verifier::Options options = ControlVerifierOptions();
  return internal::VerifyRoot<T>(md, name, options);
}

template <typename E>
bool EnumInRange(E v) {
  return static_cast<uint64_t>(v) <= static_cast<uint64_t>(E::MAX);
}

Status CheckJobId(const flatbuffers::String* id, std::string_view msg) {
  if (id == nullptr || id->size() == 0) return Bad(msg, "job_id is missing or empty");
  if (id->size() > kMaxJobIdLength) {
    return Bad(msg, "job_id is " + std::to_string(id->size()) + " bytes, more than " +
                        std::to_string(kMaxJobIdLength));
  }
  return Status::Ok();
}

Status CheckToken(const flatbuffers::String* token, std::string_view msg) {
  if (token != nullptr && token->size() > kMaxJobTokenLength) {
    return Bad(msg, "token is " + std::to_string(token->size()) + " bytes, more than " +
                        std::to_string(kMaxJobTokenLength));
  }
  return Status::Ok();
}

template <typename V>
Status CheckCount(const V* v, size_t max, std::string_view msg, const char* field) {
  if (v != nullptr && v->size() > max) {
    return Bad(msg, std::string(field) + " has " + std::to_string(v->size()) +
                        " entries, more than " + std::to_string(max));
  }
  return Status::Ok();
}

}  // namespace

Result<const fb::SubmitJob*> ParseSubmitJob(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::SubmitJob>(metadata, "SubmitJob");
  if (!r.ok()) return r;
  const fb::JobSpecMsg* spec = (*r)->spec();
  if (spec == nullptr) return Bad("SubmitJob", "spec is missing");
  Status s = CheckJobId(spec->job_id(), "SubmitJob");
  if (s.ok()) s = CheckToken(spec->token(), "SubmitJob");
  if (s.ok()) s = CheckCount(spec->nodes(), kMaxJobNodes, "SubmitJob", "nodes");
  if (s.ok()) s = CheckCount(spec->producer_nodes(), kMaxJobTasks, "SubmitJob", "producer_nodes");
  if (s.ok()) s = CheckCount(spec->consumer_nodes(), kMaxJobTasks, "SubmitJob", "consumer_nodes");
  if (s.ok()) s = CheckCount(spec->input_files(), kMaxJobTasks, "SubmitJob", "input_files");
  if (!s.ok()) return s;
  if (!EnumInRange(spec->kind()) || !EnumInRange(spec->keys()) ||
      !EnumInRange(spec->partitioner()) || !EnumInRange(spec->pattern())) {
    return Bad("SubmitJob", "kind, keys, partitioner or pattern is not a known value");
  }
  return r;
}

Result<const fb::JobStatusRequest*> ParseJobStatusRequest(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::JobStatusRequest>(metadata, "JobStatusRequest");
  if (!r.ok()) return r;
  Status s = CheckJobId((*r)->job_id(), "JobStatusRequest");
  if (s.ok()) s = CheckToken((*r)->token(), "JobStatusRequest");
  if (!s.ok()) return s;
  return r;
}

Result<const fb::JobStatusResponse*> ParseJobStatusResponse(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::JobStatusResponse>(metadata, "JobStatusResponse");
  if (!r.ok()) return r;
  if (!EnumInRange((*r)->state())) return Bad("JobStatusResponse", "state is not a known value");
  return r;
}

Result<const fb::CancelJob*> ParseCancelJob(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::CancelJob>(metadata, "CancelJob");
  if (!r.ok()) return r;
  Status s = CheckJobId((*r)->job_id(), "CancelJob");
  if (s.ok()) s = CheckToken((*r)->token(), "CancelJob");
  if (!s.ok()) return s;
  return r;
}

Result<const fb::StatsRequest*> ParseStatsRequest(std::span<const uint8_t> metadata) {
  return VerifyControl<fb::StatsRequest>(metadata, "StatsRequest");
}

Result<const fb::StatsResponse*> ParseStatsResponse(std::span<const uint8_t> metadata) {
  return VerifyControl<fb::StatsResponse>(metadata, "StatsResponse");
}

Result<const fb::CutConnections*> ParseCutConnections(std::span<const uint8_t> metadata) {
  return VerifyControl<fb::CutConnections>(metadata, "CutConnections");
}

Result<const fb::ControlResult*> ParseControlResult(std::span<const uint8_t> metadata) {
  return VerifyControl<fb::ControlResult>(metadata, "ControlResult");
}

Result<const fb::ListJobsRequest*> ParseListJobsRequest(std::span<const uint8_t> metadata) {
  return VerifyControl<fb::ListJobsRequest>(metadata, "ListJobsRequest");
}

Result<const fb::ListJobsResponse*> ParseListJobsResponse(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ListJobsResponse>(metadata, "ListJobsResponse");
  if (!r.ok()) return r;
  if ((*r)->jobs() == nullptr) return r;
  for (const fb::JobSummaryMsg* j : *(*r)->jobs()) {
    if (Status s = CheckJobId(j->job_id(), "ListJobsResponse"); !s.ok()) return s;
    if (!EnumInRange(j->state())) return Bad("ListJobsResponse", "state is not a known value");
  }
  return r;
}

// --- The external store (issue 13) ---

Result<const fb::ExtReleaseJob*> ParseExtReleaseJob(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ExtReleaseJob>(metadata, "ExtReleaseJob");
  if (!r.ok()) return r;
  if (Status s = CheckJobId((*r)->job_id(), "ExtReleaseJob"); !s.ok()) return s;
  if (Status s = CheckToken((*r)->token(), "ExtReleaseJob"); !s.ok()) return s;
  return r;
}

Result<const fb::ExtRegisterReadSet*> ParseExtRegisterReadSet(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ExtRegisterReadSet>(metadata, "ExtRegisterReadSet");
  if (!r.ok()) return r;
  if (Status s = CheckJobId((*r)->job_id(), "ExtRegisterReadSet"); !s.ok()) return s;
  if (Status s = CheckToken((*r)->token(), "ExtRegisterReadSet"); !s.ok()) return s;
  if (Status s = CheckCount((*r)->outputs(), kMaxReadSetEntries, "ExtRegisterReadSet",
                            "outputs");
      !s.ok()) {
    return s;
  }
  return r;
}

Result<const fb::ExtReadSetResponse*> ParseExtReadSetResponse(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ExtReadSetResponse>(metadata, "ExtReadSetResponse");
  if (!r.ok()) return r;
  const auto* id = (*r)->partition_id();
  if (id == nullptr || id->size() == 0 || id->size() > kMaxPartitionIdLength) {
    return Bad("ExtReadSetResponse", "partition_id is missing or longer than " +
                                         std::to_string(kMaxPartitionIdLength));
  }
  return r;
}

Result<const fb::ExtListRequest*> ParseExtListRequest(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ExtListRequest>(metadata, "ExtListRequest");
  if (!r.ok()) return r;
  const auto* id = (*r)->job_id();
  if (id != nullptr && id->size() > kMaxJobIdLength) {
    return Bad("ExtListRequest", "job_id is longer than " + std::to_string(kMaxJobIdLength));
  }
  return r;
}

Result<const fb::ExtListResponse*> ParseExtListResponse(std::span<const uint8_t> metadata) {
  auto r = VerifyControl<fb::ExtListResponse>(metadata, "ExtListResponse");
  if (!r.ok()) return r;
  if (const auto* v = (*r)->partitions()) {
    for (const auto* p : *v) {
      if (Status s = CheckJobId(p->job_id(), "ExtListResponse"); !s.ok()) return s;
    }
  }
  return r;
}

Status VerifyControlMessage(MessageType type, std::span<const uint8_t> metadata) {
  switch (type) {
    case MessageType::kSubmitJob: return ParseSubmitJob(metadata).status();
    case MessageType::kJobStatusRequest: return ParseJobStatusRequest(metadata).status();
    case MessageType::kJobStatusResponse: return ParseJobStatusResponse(metadata).status();
    case MessageType::kCancelJob: return ParseCancelJob(metadata).status();
    case MessageType::kStatsRequest: return ParseStatsRequest(metadata).status();
    case MessageType::kStatsResponse: return ParseStatsResponse(metadata).status();
    case MessageType::kCutConnections: return ParseCutConnections(metadata).status();
    case MessageType::kControlResult: return ParseControlResult(metadata).status();
    case MessageType::kListJobsRequest: return ParseListJobsRequest(metadata).status();
    case MessageType::kListJobsResponse: return ParseListJobsResponse(metadata).status();
    case MessageType::kExtReleaseJob: return ParseExtReleaseJob(metadata).status();
    case MessageType::kExtRegisterReadSet: return ParseExtRegisterReadSet(metadata).status();
    case MessageType::kExtReadSetResponse: return ParseExtReadSetResponse(metadata).status();
    case MessageType::kExtListRequest: return ParseExtListRequest(metadata).status();
    case MessageType::kExtListResponse: return ParseExtListResponse(metadata).status();
    default: break;
  }
  return ProtocolError("message type " + std::to_string(static_cast<int>(type)) +
                       " is not a control message");
}

}  // namespace sluice::schema
