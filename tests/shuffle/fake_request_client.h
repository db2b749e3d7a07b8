// Test helper: a PartitionRequestClient with no network that counts what a RemoteInputChannel
// asks of it (requests, credit notifications, cancels). Thread-safe (atomics).
#pragma once

#include <atomic>
#include <memory>

#include "shuffle/remote_input_channel.h"

namespace sluice::shuffle::testing {

class FakeRequestClient final : public PartitionRequestClient {
 public:
  void RequestPartition(std::shared_ptr<RemoteInputChannel>) override { ++requests; }
  void NotifyCreditAvailable(std::shared_ptr<RemoteInputChannel>) override { ++credit_notes; }
  void Cancel(std::shared_ptr<RemoteInputChannel>) override { ++cancels; }
  std::atomic<int> requests{0};
  std::atomic<int> credit_notes{0};
  std::atomic<int> cancels{0};
};

}  // namespace sluice::shuffle::testing
