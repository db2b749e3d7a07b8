// A minimal, replaceable log sink for the library layers. The default writes one line to
// stderr; sluiced installs its own (spdlog) and tests may capture lines. Thread-safe: the sink
// is set once at start-up, before any loop runs, and must itself be thread-safe.
#pragma once

#include <functional>
#include <string_view>

namespace sluice {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

using LogSink = std::function<void(LogLevel, std::string_view)>;

// Replaces the sink (nullptr restores the stderr default). Not synchronized with Log().
void SetLogSink(LogSink sink);
// Minimum level written; default kInfo.
void SetLogLevel(LogLevel level);
void Log(LogLevel level, std::string_view message);

}  // namespace sluice
