// Status and Result<T>: errors as values, shared by every Sluice layer.
//
// A Status is either OK or a code plus a message written for a person: what failed, where
// (peer, partition, channel) and what to do about it. Result<T> holds a T or a non-OK Status.
// Both are value types and thread-compatible. Nothing in Sluice throws across a layer boundary.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace sluice {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,     // a configuration or argument a person must change
  kResourceExhausted,   // admission failure: not enough network memory
  kTimeout,             // a deadline passed
  kCancelled,           // the caller (or a teardown) cancelled the operation
  kClosed,              // the object was destroyed or the connection closed
  kProtocolError,       // a peer sent something that breaks the wire protocol
  kIoError,             // a socket or file operation failed
  kNotFound,            // e.g. a partition that is not registered
  kInternal,            // a broken invariant; always a bug
  kPermissionDenied,    // authentication failed or missing
};

std::string_view StatusCodeName(StatusCode code);

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "<CodeName>: <message>", or "OK".
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status ResourceExhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status TimeoutError(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status ClosedError(std::string m) { return {StatusCode::kClosed, std::move(m)}; }
inline Status ProtocolError(std::string m) { return {StatusCode::kProtocolError, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status InternalError(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Holds a T or a non-OK Status. REQUIRES: a Status given to the constructor is not OK.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Result built from OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  // The error; OK when the result holds a value.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // REQUIRES: ok(). Checked in every build.
  T& value() & { Check(); return std::get<T>(v_); }
  const T& value() const& { Check(); return std::get<T>(v_); }
  T&& value() && { Check(); return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  void Check() const {
    if (!ok()) {
      std::fprintf(stderr, "sluice: Result::value() on error: %s\n",
                   std::get<Status>(v_).ToString().c_str());
      std::abort();
    }
  }
  std::variant<T, Status> v_;
};

// Invariant checks that protect memory run in every build type and abort with a message.
[[noreturn]] void FatalInvariant(const char* file, int line, const char* what);

}  // namespace sluice

#define SLUICE_CHECK(cond, what) \
  do {                           \
    if (!(cond)) [[unlikely]] ::sluice::FatalInvariant(__FILE__, __LINE__, what); \
  } while (0)
