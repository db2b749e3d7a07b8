// Test helper (not API): whether this build runs under a sanitizer, and iteration counts scaled
// for it. GCC defines __SANITIZE_*__; Clang answers __has_feature.
#pragma once

#include <algorithm>

namespace sluice::testutil {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kUnderTsan = true;
#else
inline constexpr bool kUnderTsan = false;
#endif
#else
inline constexpr bool kUnderTsan = false;
#endif

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kUnderAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kUnderAsan = true;
#else
inline constexpr bool kUnderAsan = false;
#endif
#else
inline constexpr bool kUnderAsan = false;
#endif

// True under ThreadSanitizer or AddressSanitizer.
inline constexpr bool kUnderSanitizer = kUnderTsan || kUnderAsan;

// Iteration count for a stress test: `n` normally, n / divisor (at least 1) under a sanitizer,
// so that suites stay within their timeouts on two cores (TSan slows locking code ~10-20x).
inline constexpr int SanitizerScaled(int n, int divisor = 2) {
  return kUnderSanitizer ? std::max(1, n / divisor) : n;
}

}  // namespace sluice::testutil
