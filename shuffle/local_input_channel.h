// LocalInputChannel: consumes a subpartition of a producer in the same process by reading its
// buffers directly (no copy, no credit). Thread-safe like every InputChannel: the producer's
// thread notifies, the consumer's thread reads.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "shuffle/input_gate.h"
#include "shuffle/partition_registry.h"
#include "shuffle/subpartition_view.h"

namespace sluice::shuffle {

class LocalInputChannel final : public InputChannel, public SubpartitionListener {
 public:
  LocalInputChannel(InputGate* gate, uint32_t index, PartitionRegistry* registry,
                    std::string partition_id, uint32_t subpartition);
  ~LocalInputChannel() override;

  // Finds the partition (waiting up to request_timeout for it to be registered) and opens
  // its subpartition. NotFound names the partition when it never appears.
  Status Start() override;
  Result<std::optional<Next>> GetNext() override;
  void Release() override;
  ChannelState State() const override;

  void NotifyDataAvailable() override { NotifyNonEmpty(); }

 private:
  PartitionRegistry* const registry_;
  const std::string partition_id_;
  const uint32_t subpartition_;
  mutable std::mutex mu_;
  std::shared_ptr<ResultPartition> partition_;  // keeps the producer's partition alive
  std::unique_ptr<SubpartitionView> view_;
  bool finished_ = false;
  bool released_ = false;
  uint64_t consumed_ = 0;
};

}  // namespace sluice::shuffle
