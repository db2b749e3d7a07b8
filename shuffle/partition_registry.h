// PartitionRegistry: the result partitions of a process, by id (Flink's ResultPartitionManager).
// Producers register their partitions; local input channels and the network server look them
// up. A request that arrives before its partition can wait for it (WaitFor) or park a one-shot
// callback (OnRegistered) that Register runs.
//
// The registry shares ownership of registered partitions; Unregister drops that share (it does
// not release the partition: its owner does). Pending callbacks are dropped, never called, when
// the registry is destroyed.
//
// Thread-safe. Callbacks run outside the registry's lock, on the thread that calls Register (or
// on the caller of OnRegistered when the partition is already there), and may call the registry.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "sluice/buffer/status.h"
#include "sluice/shuffle/result_partition.h"
#include "sluice/shuffle/subpartition_view.h"

namespace sluice::shuffle {

// Serves partitions that are not ResultPartitions of this process (the external shuffle
// store, store/partition_store.h): the network server asks it for a view when a request's
// partition id starts with the prefix it was registered under. Thread-safe; called on the
// server's loop thread, so it must not block.
class SubpartitionViewProvider {
 public:
  virtual ~SubpartitionViewProvider() = default;
  // The view for a remote reader that presented `access_proof` (shuffle/auth.h
  // MakePartitionProof over this id and subpartition). Errors, as the reader sees them:
  // PermissionDenied -> AuthenticationFailed; NotFound -> PartitionNotFound; InvalidArgument
  // (e.g. the subpartition already has its one pipelined reader) -> ProtocolViolation;
  // anything else -> ProducerFailed.
  virtual Result<std::unique_ptr<SubpartitionView>> CreateView(
      const std::string& partition_id, uint32_t subpartition,
      std::span<const uint8_t> access_proof, SubpartitionListener* listener) = 0;
};

class PartitionRegistry {
 public:
  using Callback = std::function<void(std::shared_ptr<ResultPartition>)>;

  PartitionRegistry() = default;
  PartitionRegistry(const PartitionRegistry&) = delete;
  PartitionRegistry& operator=(const PartitionRegistry&) = delete;

  // Adds a partition under its id() and runs the callbacks waiting for it. Errors:
  // InvalidArgument for a null partition or an id that is already registered.
  // `access_token`: the job token a remote reader must prove (shuffle/auth.h
  // MakePartitionProof); empty: any authenticated reader may read it.
  Status Register(std::shared_ptr<ResultPartition> partition, std::string access_token = "");
  // The partition, or null.
  std::shared_ptr<ResultPartition> Lookup(const std::string& id) const;
  // The access token it was registered with ("" when none, or not registered).
  std::string AccessToken(const std::string& id) const;
  // Removes the partition and returns it (null when it was not registered).
  std::shared_ptr<ResultPartition> Unregister(const std::string& id);
  // Waits up to `timeout` for the partition to be registered; null on timeout.
  std::shared_ptr<ResultPartition> WaitFor(const std::string& id,
                                           std::chrono::milliseconds timeout) const;

  // Runs `callback` once with the partition when `id` is registered. Returns a token for
  // CancelCallback; when the partition is registered already the callback runs now, on this
  // thread, and 0 is returned.
  uint64_t OnRegistered(const std::string& id, Callback callback);
  // Removes a pending callback. Returns true when it was removed before it ran; false when it
  // has run, is running (on the registering thread) or the token is unknown.
  bool CancelCallback(uint64_t token);

  size_t size() const;
  std::vector<std::string> Ids() const;

  // Partition ids starting with `prefix` are served by `provider` (not owned; it must outlive
  // its registration). A null provider removes the prefix.
  void SetViewProvider(const std::string& prefix, SubpartitionViewProvider* provider);
  // The provider whose prefix `id` starts with, or null.
  SubpartitionViewProvider* FindViewProvider(const std::string& id) const;
  size_t pending_callbacks() const;

 private:
  struct Pending {
    uint64_t token;
    Callback callback;
  };

  mutable std::mutex mu_;
  mutable std::condition_variable registered_;
  std::unordered_map<std::string, std::shared_ptr<ResultPartition>> partitions_;  // GUARDED_BY
  std::unordered_map<std::string, std::string> tokens_;  // GUARDED_BY(mu_), by id; non-empty
  std::unordered_map<std::string, std::vector<Pending>> pending_;  // GUARDED_BY(mu_), by id
  std::unordered_map<uint64_t, std::string> pending_ids_;          // GUARDED_BY(mu_), by token
  uint64_t next_token_ = 1;                                        // GUARDED_BY(mu_)
  std::vector<std::pair<std::string, SubpartitionViewProvider*>> providers_;  // GUARDED_BY(mu_)
};

}  // namespace sluice::shuffle
