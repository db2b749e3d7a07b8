#include "transport/log.h"

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <utility>

namespace sluice {
namespace {

// The sink is swapped under a mutex and called through a shared_ptr copy, so a test (or a
// daemon reloading its logging) may replace it while loops run. Log lines are rare (errors,
// state changes), never per frame: the lock costs nothing that matters.
struct SinkSlot {
  std::mutex mu;
  std::shared_ptr<const LogSink> sink;
};
SinkSlot& Slot() {
  static SinkSlot* slot = new SinkSlot;  // never destroyed: loops may log during exit
  return *slot;
}
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* Name(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

}  // namespace

void SetLogSink(LogSink sink) {
  auto next = sink ? std::make_shared<const LogSink>(std::move(sink)) : nullptr;
  std::lock_guard lock(Slot().mu);
  Slot().sink = std::move(next);
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

void Log(LogLevel level, std::string_view message) {
  if (static_cast<int>(level) < g_level.load(std::memory_order_relaxed)) return;
  std::shared_ptr<const LogSink> sink;
  {
    std::lock_guard lock(Slot().mu);
    sink = Slot().sink;
  }
  if (sink) {
    (*sink)(level, message);
    return;
  }
  std::fprintf(stderr, "sluice [%s] %.*s\n", Name(level), static_cast<int>(message.size()),
               message.data());
}

}  // namespace sluice
