// Test helper (not API): a writer process forked by a test whose own process runs threads.
// A child forked while another thread holds an allocator lock can deadlock in its first malloc
// (GCC 12's AddressSanitizer does not lock its allocator around fork: a CI run hung 300 s
// that way), so the test forks while its process is single-threaded (the daemon service
// stopped), restarts the service, and only then lets the child go. The child's report is read
// with a bound: a child that never reports is killed and the test fails, it does not hang.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <string>

namespace sluice::client::testing {

class ForkedWriter {
 public:
  // Forks now; the child waits for Go(), then runs body(report_fd) and _exits with its result.
  // REQUIRES: the calling process runs no other thread.
  explicit ForkedWriter(const std::function<int(int report_fd)>& body) {
    int go[2];
    int report[2];
    if (::pipe(go) != 0 || ::pipe(report) != 0) {
      ADD_FAILURE() << "pipe failed";
      return;
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(go[1]);
      ::close(report[0]);
      char b;
      if (::read(go[0], &b, 1) != 1) ::_exit(90);  // the test gave up before Go()
      ::_exit(body(report[1]));
    }
    ::close(go[0]);
    ::close(report[1]);
    go_fd_ = go[1];
    report_fd_ = report[0];
    if (pid_ < 0) ADD_FAILURE() << "fork failed";
  }
  ~ForkedWriter() {
    if (go_fd_ >= 0) ::close(go_fd_);
    if (report_fd_ >= 0) ::close(report_fd_);
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      (void)Wait();
    }
  }
  ForkedWriter(const ForkedWriter&) = delete;
  ForkedWriter& operator=(const ForkedWriter&) = delete;

  pid_t pid() const { return pid_; }
  // Lets the child start (the service it connects to is up).
  void Go() {
    (void)!::write(go_fd_, "g", 1);
    ::close(go_fd_);
    go_fd_ = -1;
  }
  // What the child wrote to its report fd until it closed it, waiting at most `timeout`; on
  // timeout the child is killed and the test fails naming the wait.
  std::string ReadReport(std::chrono::seconds timeout) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{report_fd_, POLLIN, 0};
      const int ready = left.count() <= 0 ? 0 : ::poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) {
        ADD_FAILURE() << "the writer process " << pid_ << " did not report within "
                      << timeout.count() << " s: killed";
        ::kill(pid_, SIGKILL);
        return out;
      }
      char buf[512];
      const ssize_t n = ::read(report_fd_, buf, sizeof(buf));
      if (n <= 0) return out;
      out.append(buf, static_cast<size_t>(n));
    }
  }
  // Waits for the child; returns its wait status.
  int Wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    waited_ = true;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int go_fd_ = -1;
  int report_fd_ = -1;
  bool waited_ = false;
};

}  // namespace sluice::client::testing
