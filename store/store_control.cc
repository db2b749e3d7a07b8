#include "store/store_control.h"

#include "client/ext_messages.h"
#include "schema/control.h"

namespace sluice::store {

using schema::MessageType;

bool IsStoreControlRequest(MessageType type) {
  return type == MessageType::kExtReleaseJob || type == MessageType::kExtRegisterReadSet ||
         type == MessageType::kExtListRequest;
}

namespace {

// More map outputs than one ExtListResponse can carry (about 600 fit in its frame).
constexpr size_t kMaxListEntries = 1024;

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

void ServeRegister(PartitionStore& store, std::span<const uint8_t> message,
                   const shuffle::ControlReply& reply) {
  auto m = schema::ParseExtRegisterReadSet(message);
  if (!m.ok()) return reply(MessageType::kControlResult, client::EncodeResult(m.status()));
  std::vector<MapOutputRef> refs;
  for (const client::MapOutputKey& k : client::DecodeOutputs(**m)) {
    refs.push_back({k.partition, k.attempt});
  }
  auto id = store.RegisterReadSet(Str((*m)->job_id()), Str((*m)->token()), refs);
  if (!id.ok()) return reply(MessageType::kControlResult, client::EncodeResult(id.status()));
  reply(MessageType::kExtReadSetResponse, client::EncodeExtReadSetResponse(*id));
}

void ServeList(PartitionStore& store, std::span<const uint8_t> message,
               const shuffle::ControlReply& reply) {
  auto m = schema::ParseExtListRequest(message);
  if (!m.ok()) return reply(MessageType::kControlResult, client::EncodeResult(m.status()));
  client::ExternalList list;
  // A reply carries a few hundred entries (EncodeExtList cuts it to one frame): copy no more
  // than that, however many map outputs the store holds.
  size_t total = 0;
  for (const MapOutputInfo& i : store.List(Str((*m)->job_id()), kMaxListEntries, &total)) {
    client::ExternalPartition p;
    p.job = i.job;
    p.partition = i.partition;
    p.attempt = i.attempt;
    p.subpartitions = i.subpartitions;
    p.blocking = i.mode == PartitionMode::kBlocking;
    p.state = i.state;
    p.bytes = i.bytes;
    p.records = i.records;
    p.bytes_in_memory = i.bytes_in_memory;
    p.bytes_on_disk = i.bytes_on_disk;
    list.partitions.push_back(std::move(p));
  }
  list.total = static_cast<uint32_t>(total);
  reply(MessageType::kExtListResponse, client::EncodeExtList(list));
}

}  // namespace

void ServeStoreControl(PartitionStore& store, MessageType type, std::span<const uint8_t> message,
                       const shuffle::ControlReply& reply) {
  switch (type) {
    case MessageType::kExtRegisterReadSet: return ServeRegister(store, message, reply);
    case MessageType::kExtListRequest: return ServeList(store, message, reply);
    case MessageType::kExtReleaseJob: {
      auto m = schema::ParseExtReleaseJob(message);
      Status st = m.ok() ? store.Release(Str((*m)->job_id()), Str((*m)->token())) : m.status();
      return reply(MessageType::kControlResult, client::EncodeResult(st));
    }
    default:
      return reply(MessageType::kControlResult,
                   client::EncodeResult(InvalidArgument(
                       std::string(schema::MessageTypeName(type)) + " is not a store request")));
  }
}

}  // namespace sluice::store
