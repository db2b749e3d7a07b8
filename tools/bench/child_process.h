// Helpers for sluice-bench's processes: fork a child that reports back over a pipe, move plain
// structs across that pipe, and read a process's peak RSS. The parent forks before it starts any
// thread, so a child never inherits a lock held by a thread that does not exist in it.
// Thread-compatible (free functions; each pipe end belongs to one process).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

#include "tools/common/fd_io.h"

namespace sluice::bench {

// A forked child with a pipe from it (to_parent) and one to it (to_child).
struct Child {
  pid_t pid = -1;
  int from_child = -1;  // parent reads what the child writes
  int to_child = -1;    // parent writes what the child reads
};

// Forks; the child runs body(read_fd, write_fd) and _exits with its return value. The parent
// gets the pid and its ends of both pipes. Exits the process with a message on failure.
Child ForkChild(const std::function<int(int from_parent, int to_parent)>& body);
// Closes the parent's pipe ends and waits for the child; returns its exit status (or -1).
int WaitChild(Child& child);
// Whether the child has exited, without reaping it (WaitChild still gets its status).
bool HasExited(const Child& child);

// Whole-message I/O on pipes and sockets: the tools' shared helpers (tools/common/fd_io.h).
using tools::ReadAll;
using tools::WriteAll;

template <typename T>
bool WritePod(int fd, const T& v) {
  static_assert(std::is_trivially_copyable_v<T>);
  return WriteAll(fd, &v, sizeof(v));
}
template <typename T>
bool ReadPod(int fd, T* v) {
  static_assert(std::is_trivially_copyable_v<T>);
  return ReadAll(fd, v, sizeof(*v));
}

// The process's peak resident set (VmHWM), in bytes; 0 if unknown.
uint64_t PeakRssBytes();

// Copies a message into a fixed char array (NUL-terminated, cut short if needed).
template <size_t N>
void SetMessage(char (&out)[N], const std::string& message) {
  const size_t n = message.size() < N - 1 ? message.size() : N - 1;
  std::memcpy(out, message.data(), n);
  out[n] = 0;
}

[[noreturn]] void Die(const std::string& message);

}  // namespace sluice::bench
