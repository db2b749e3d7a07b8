#include "client/ext_messages.h"

namespace sluice::client {
namespace {

using flatbuffers::FlatBufferBuilder;

template <typename T>
std::vector<uint8_t> Bytes(FlatBufferBuilder& fbb, flatbuffers::Offset<T> root) {
  fbb.Finish(root);
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

constexpr size_t kMaxListBytes = 60000;  // under the 64 KiB frame metadata, with room for note

}  // namespace

std::vector<uint8_t> EncodeExtReleaseJob(const std::string& job, const std::string& token) {
  FlatBufferBuilder fbb(256);
  auto j = fbb.CreateString(job);
  auto t = fbb.CreateString(token);
  return Bytes(fbb, fb::CreateExtReleaseJob(fbb, j, t));
}

std::vector<uint8_t> EncodeExtRegisterReadSet(const std::string& job, const std::string& token,
                                              const std::vector<MapOutputKey>& outputs) {
  FlatBufferBuilder fbb(256 + outputs.size() * 8);
  auto j = fbb.CreateString(job);
  auto t = fbb.CreateString(token);
  std::vector<fb::MapOutputRefMsg> refs;
  refs.reserve(outputs.size());
  for (const MapOutputKey& k : outputs) refs.emplace_back(k.partition, k.attempt);
  auto v = fbb.CreateVectorOfStructs(refs);
  return Bytes(fbb, fb::CreateExtRegisterReadSet(fbb, j, t, v));
}

std::vector<uint8_t> EncodeExtReadSetResponse(const std::string& partition_id) {
  FlatBufferBuilder fbb(256);
  auto id = fbb.CreateString(partition_id);
  return Bytes(fbb, fb::CreateExtReadSetResponse(fbb, id));
}

std::vector<uint8_t> EncodeExtListRequest(const std::string& job) {
  FlatBufferBuilder fbb(256);
  auto j = fbb.CreateString(job);
  return Bytes(fbb, fb::CreateExtListRequest(fbb, j));
}

std::vector<uint8_t> EncodeExtList(const ExternalList& list) {
  FlatBufferBuilder fbb(4096);
  std::vector<flatbuffers::Offset<fb::ExtPartitionMsg>> parts;
  size_t approx = 0;
  for (const ExternalPartition& p : list.partitions) {
    const size_t size = 96 + p.job.size() + p.state.size();
    if (approx + size > kMaxListBytes) break;
    approx += size;
    auto j = fbb.CreateString(p.job);
    auto s = fbb.CreateString(p.state);
    parts.push_back(fb::CreateExtPartitionMsg(fbb, j, p.partition, p.attempt, p.subpartitions,
                                              p.blocking, s, p.bytes, p.records,
                                              p.bytes_in_memory, p.bytes_on_disk));
  }
  const uint32_t total =
      std::max(list.total, static_cast<uint32_t>(list.partitions.size()));
  std::string note = list.note;
  if (parts.size() < total) {
    note = "listing the first " + std::to_string(parts.size()) + " of " + std::to_string(total) +
           " map outputs (ask for one job)";
  }
  auto v = fbb.CreateVector(parts);
  auto n = fbb.CreateString(note);
  return Bytes(fbb, fb::CreateExtListResponse(fbb, v, total, n));
}

ExternalList DecodeExtList(const fb::ExtListResponse& m) {
  ExternalList list;
  list.total = m.total();
  list.note = Str(m.note());
  if (const auto* v = m.partitions()) {
    for (const auto* p : *v) {
      ExternalPartition e;
      e.job = Str(p->job_id());
      e.partition = p->partition();
      e.attempt = p->attempt();
      e.subpartitions = p->subpartitions();
      e.blocking = p->blocking();
      e.state = Str(p->state());
      e.bytes = p->bytes();
      e.records = p->records();
      e.bytes_in_memory = p->bytes_in_memory();
      e.bytes_on_disk = p->bytes_on_disk();
      list.partitions.push_back(std::move(e));
    }
  }
  return list;
}

std::vector<MapOutputKey> DecodeOutputs(const fb::ExtRegisterReadSet& m) {
  std::vector<MapOutputKey> out;
  if (const auto* v = m.outputs()) {
    out.reserve(v->size());
    for (const auto* r : *v) out.push_back({r->partition(), r->attempt()});
  }
  return out;
}

std::vector<uint8_t> EncodeResult(const Status& status) {
  FlatBufferBuilder fbb(256);
  std::string text = status.message().substr(0, 4000);
  auto msg = fbb.CreateString(text);
  return Bytes(fbb, fb::CreateControlResult(fbb, static_cast<uint16_t>(status.code()), msg, 0));
}

}  // namespace sluice::client
