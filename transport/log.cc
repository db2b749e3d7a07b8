#include "transport/log.h"

#include <atomic>
#include <cstdio>

namespace sluice {
namespace {
LogSink& Sink() {
  static LogSink sink;
  return sink;
}
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* Name(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "?";
}
}  // namespace

void SetLogSink(LogSink sink) { Sink() = std::move(sink); }
void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

void Log(LogLevel level, std::string_view message) {
  if (static_cast<int>(level) < g_level.load(std::memory_order_relaxed)) return;
  if (Sink()) {
    Sink()(level, message);
    return;
  }
  std::fprintf(stderr, "sluice [%s] %.*s\n", Name(level), static_cast<int>(message.size()),
               message.data());
}

}  // namespace sluice
