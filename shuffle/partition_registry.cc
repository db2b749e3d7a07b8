#include "shuffle/partition_registry.h"

#include <algorithm>
#include <utility>

namespace sluice::shuffle {

Status PartitionRegistry::Register(std::shared_ptr<ResultPartition> partition,
                                   std::string access_token) {
  if (partition == nullptr)
    return InvalidArgument("PartitionRegistry::Register of a null partition");
  std::vector<Pending> ready;
  {
    std::lock_guard lock(mu_);
    const std::string& id = partition->id();
    if (partitions_.contains(id)) {
      return InvalidArgument("partition '" + id +
                             "' is already registered; partition ids must be unique per process");
    }
    partitions_.emplace(id, partition);
    if (!access_token.empty()) tokens_[id] = std::move(access_token);
    if (auto it = pending_.find(id); it != pending_.end()) {
      ready = std::move(it->second);
      pending_.erase(it);
      for (const Pending& p : ready) pending_ids_.erase(p.token);
    }
  }
  registered_.notify_all();
  for (Pending& p : ready) p.callback(partition);
  return Status::Ok();
}

std::shared_ptr<ResultPartition> PartitionRegistry::Lookup(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = partitions_.find(id);
  return it == partitions_.end() ? nullptr : it->second;
}

std::string PartitionRegistry::AccessToken(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = tokens_.find(id);
  return it == tokens_.end() ? std::string() : it->second;
}

std::shared_ptr<ResultPartition> PartitionRegistry::Unregister(const std::string& id) {
  std::lock_guard lock(mu_);
  tokens_.erase(id);
  auto it = partitions_.find(id);
  if (it == partitions_.end()) return nullptr;
  std::shared_ptr<ResultPartition> p = std::move(it->second);
  partitions_.erase(it);
  return p;
}

std::shared_ptr<ResultPartition> PartitionRegistry::WaitFor(
    const std::string& id, std::chrono::milliseconds timeout) const {
  // wait_for adds the timeout to now(): keep "wait forever" from overflowing.
  timeout = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
  std::unique_lock lock(mu_);
  std::shared_ptr<ResultPartition> found;
  registered_.wait_for(lock, timeout, [&] {
    auto it = partitions_.find(id);
    if (it == partitions_.end()) return false;
    found = it->second;
    return true;
  });
  return found;
}

uint64_t PartitionRegistry::OnRegistered(const std::string& id, Callback callback) {
  std::shared_ptr<ResultPartition> now;
  {
    std::lock_guard lock(mu_);
    if (auto it = partitions_.find(id); it != partitions_.end()) {
      now = it->second;
    } else {
      const uint64_t token = next_token_++;
      pending_[id].push_back(Pending{token, std::move(callback)});
      pending_ids_.emplace(token, id);
      return token;
    }
  }
  callback(std::move(now));
  return 0;
}

bool PartitionRegistry::CancelCallback(uint64_t token) {
  Callback dropped;  // destroyed outside the lock (it may own things that call back)
  std::lock_guard lock(mu_);
  auto id_it = pending_ids_.find(token);
  if (id_it == pending_ids_.end()) return false;
  auto it = pending_.find(id_it->second);
  pending_ids_.erase(id_it);
  if (it == pending_.end()) return false;
  std::vector<Pending>& list = it->second;
  auto p =
      std::find_if(list.begin(), list.end(), [&](const Pending& x) { return x.token == token; });
  if (p == list.end()) return false;
  dropped = std::move(p->callback);
  list.erase(p);
  if (list.empty()) pending_.erase(it);
  return true;
}

size_t PartitionRegistry::size() const {
  std::lock_guard lock(mu_);
  return partitions_.size();
}

std::vector<std::string> PartitionRegistry::Ids() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> ids;
  ids.reserve(partitions_.size());
  for (const auto& [id, p] : partitions_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

size_t PartitionRegistry::pending_callbacks() const {
  std::lock_guard lock(mu_);
  return pending_ids_.size();
}

void PartitionRegistry::SetViewProvider(const std::string& prefix,
                                        SubpartitionViewProvider* provider) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(providers_, [&](const auto& p) { return p.first == prefix; });
  if (provider != nullptr) providers_.emplace_back(prefix, provider);
}

SubpartitionViewProvider* PartitionRegistry::FindViewProvider(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [prefix, provider] : providers_) {
    if (id.starts_with(prefix)) return provider;
  }
  return nullptr;
}

}  // namespace sluice::shuffle
