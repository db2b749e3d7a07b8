#include "store/partition_store.h"

// Placeholder definitions so the contract links; the real store replaces them.
namespace sluice::store {

class PartitionStore::Impl {};

const char* PartitionModeName(PartitionMode mode) {
  return mode == PartitionMode::kBlocking ? "blocking" : "pipelined";
}
Result<PartitionMode> ParsePartitionMode(std::string_view text) {
  if (text == "pipelined") return PartitionMode::kPipelined;
  if (text == "blocking") return PartitionMode::kBlocking;
  return InvalidArgument("partition mode '" + std::string(text) +
                         "' is unknown: use pipelined or blocking");
}
namespace {
Status NotYet() { return InternalError("PartitionStore is not implemented yet"); }
}  // namespace
PartitionStore::PartitionStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PartitionStore::~PartitionStore() = default;
Result<std::unique_ptr<PartitionStore>> PartitionStore::Create(PartitionStoreOptions) {
  return std::unique_ptr<PartitionStore>(new PartitionStore(std::make_unique<Impl>()));
}
Result<WriterId> PartitionStore::OpenWriter(const WriterSpec&) { return NotYet(); }
Status PartitionStore::Append(WriterId, uint32_t, buffer::Buffer, uint32_t) { return NotYet(); }
Result<client::MapOutput> PartitionStore::Commit(WriterId) { return NotYet(); }
void PartitionStore::Abort(WriterId, std::string) {}
Status PartitionStore::Release(const std::string&, const std::string&) { return NotYet(); }
uint32_t PartitionStore::ExpireRetention(std::chrono::steady_clock::time_point) { return 0; }
std::vector<MapOutputInfo> PartitionStore::List(const std::string&) const { return {}; }
PartitionStoreStats PartitionStore::Stats() const { return {}; }
Status PartitionStore::CheckToken(const std::string&, const std::string&) const {
  return NotYet();
}
Result<std::string> PartitionStore::JobToken(const std::string&) const { return NotYet(); }

}  // namespace sluice::store
