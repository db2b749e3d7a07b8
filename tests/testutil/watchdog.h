// Test helper (not API): turns a hang into a failure that says where it was. A test that stops
// making progress would otherwise end as ctest's timeout with nothing printed after "[ RUN ]".
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace sluice::testutil {

// Armed from construction to destruction. If `limit` passes first, prints the test's name, the
// last Stage() and then `describe()` (progress counters; it may take locks, so the stage is
// printed and flushed before it runs) on stderr, and aborts the process.
// Thread-safe: Stage() may be called from any thread.
class Watchdog {
 public:
  Watchdog(std::string what, std::chrono::seconds limit,
           std::function<std::string()> describe = {})
      : what_(std::move(what)), describe_(std::move(describe)) {
    thread_ = std::thread([this, limit] { Watch(limit); });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void Stage(std::string stage) {
    std::lock_guard lock(mu_);
    stage_ = std::move(stage);
  }

 private:
  void Watch(std::chrono::seconds limit) {
    std::string stage;
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, limit, [&] { return done_; })) return;
      stage = stage_;
    }
    std::fprintf(stderr, "watchdog: %s is still in stage '%s' after %lld s; aborting\n",
                 what_.c_str(), stage.c_str(), static_cast<long long>(limit.count()));
    std::fflush(stderr);
    if (describe_) {
      std::fprintf(stderr, "watchdog: %s\n", describe_().c_str());
      std::fflush(stderr);
    }
    std::abort();
  }

  const std::string what_;
  const std::function<std::string()> describe_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::string stage_ = "start";
  std::thread thread_;
};

}  // namespace sluice::testutil
