#include "client/ext_control.h"

namespace sluice::client {

using schema::MessageType;

namespace {
uint8_t T(MessageType t) { return static_cast<uint8_t>(t); }
}  // namespace

Result<std::string> RegisterReadSet(control::ControlClient& daemon, const std::string& job,
                                    const std::string& token,
                                    const std::vector<MapOutputKey>& outputs) {
  if (outputs.size() > schema::kMaxReadSetEntries) {
    return InvalidArgument("job '" + job + "': " + std::to_string(outputs.size()) +
                           " map outputs on " + daemon.address() + " are more than one read set "
                           "carries (" + std::to_string(schema::kMaxReadSetEntries) + ")");
  }
  auto r = daemon.Request(T(MessageType::kExtRegisterReadSet),
                          EncodeExtRegisterReadSet(job, token, outputs),
                          T(MessageType::kExtReadSetResponse));
  if (!r.ok()) {
    return Status(r.status().code(), daemon.address() + ": " + r.status().message());
  }
  auto m = schema::ParseExtReadSetResponse(*r);
  if (!m.ok()) return m.status();
  return (*m)->partition_id()->str();
}

Status ReleaseExternalJob(control::ControlClient& daemon, const std::string& job,
                          const std::string& token) {
  auto r = daemon.Request(T(MessageType::kExtReleaseJob), EncodeExtReleaseJob(job, token),
                          T(MessageType::kControlResult));
  if (!r.ok()) return Status(r.status().code(), daemon.address() + ": " + r.status().message());
  return Status::Ok();
}

Result<ExternalList> ListExternal(control::ControlClient& daemon, const std::string& job) {
  auto r = daemon.Request(T(MessageType::kExtListRequest), EncodeExtListRequest(job),
                          T(MessageType::kExtListResponse));
  if (!r.ok()) return r.status();
  auto m = schema::ParseExtListResponse(*r);
  if (!m.ok()) return m.status();
  return DecodeExtList(**m);
}

}  // namespace sluice::client
