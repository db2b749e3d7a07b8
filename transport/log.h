// A minimal, replaceable log sink for the library layers. The default writes one line to
// stderr; sluiced installs its own (spdlog) and tests may capture lines. Thread-safe: the sink
// may be replaced at any time, also while loops log; the sink itself must be thread-safe (it is
// called from every loop thread), and a sink being replaced may still finish calls in flight.
#pragma once

#include <functional>
#include <string_view>

namespace sluice {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

using LogSink = std::function<void(LogLevel, std::string_view)>;

// Replaces the sink (nullptr restores the stderr default).
void SetLogSink(LogSink sink);
// Minimum level written; default kInfo.
void SetLogLevel(LogLevel level);
void Log(LogLevel level, std::string_view message);

}  // namespace sluice
