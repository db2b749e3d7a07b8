// Reporting helpers the tools share (sluice-harness and sluice-bench print the same sizes,
// rates, medians and JSON strings). Thread-safe (pure functions).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice::tools {

inline constexpr double kMiB = 1024.0 * 1024.0;

// "512 B", "1.5 KiB", "64.0 MiB", "2.00 GiB".
std::string FormatBytes(uint64_t bytes);
// `v` with `digits` decimals ("%.*f").
std::string FormatFixed(double v, int digits = 1);
// MiB per second; 0 when `seconds` is not positive.
double MiBPerSecond(uint64_t bytes, double seconds);
// A JSON string literal (quotes included) holding `s`, control characters escaped.
std::string JsonString(const std::string& s);

// The element whose key is the median (the upper one of an even count); T{} when empty.
template <typename T, typename Key>
T MedianBy(std::vector<T> v, Key key) {
  if (v.empty()) return T{};
  std::sort(v.begin(), v.end(), [&](const T& a, const T& b) { return key(a) < key(b); });
  return v[v.size() / 2];
}

// The median of `v` (the upper one of an even count); 0 when empty.
inline double Median(const std::vector<double>& v) {
  return MedianBy(v, [](double x) { return x; });
}

}  // namespace sluice::tools
