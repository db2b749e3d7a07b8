// Test helper (not API): waiting for a condition that another thread or the event loop makes
// true. One poll loop for every suite instead of a copy per file.
#pragma once

#include <chrono>
#include <thread>

namespace sluice::testutil {

// Calls `pred` until it returns true or `timeout` has passed, sleeping `interval` between calls.
// Guarantees: `pred` runs at least once; true means it returned true, false that the timeout
// passed first.
// Call it from the test thread; `pred` must be safe to call there.
template <typename Pred>
bool PollUntil(Pred pred, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval = std::chrono::milliseconds(1)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
  return true;
}

}  // namespace sluice::testutil
