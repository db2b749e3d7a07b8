#include "tools/bench/child_process.h"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace sluice::bench {

void Die(const std::string& message) {
  std::fprintf(stderr, "sluice-bench: %s\n", message.c_str());
  std::fflush(stderr);
  std::exit(2);
}

Child ForkChild(const std::function<int(int, int)>& body) {
  int up[2];
  int down[2];
  if (pipe(up) != 0 || pipe(down) != 0) Die("pipe failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) Die("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent
    close(up[0]);
    close(down[1]);
    const int rc = body(down[0], up[1]);
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  close(up[1]);
  close(down[0]);
  return Child{pid, up[0], down[1]};
}

int WaitChild(Child& child) {
  if (child.from_child >= 0) close(child.from_child);
  if (child.to_child >= 0) close(child.to_child);
  child.from_child = child.to_child = -1;
  if (child.pid < 0) return -1;
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  child.pid = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool HasExited(const Child& child) {
  if (child.pid < 0) return true;
  siginfo_t info{};
  if (waitid(P_PID, static_cast<id_t>(child.pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return errno != EINTR;
  }
  return info.si_pid != 0;
}

uint64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmHWM:") {
      uint64_t kib = 0;
      in >> kib;
      return kib * 1024;
    }
    in.ignore(1 << 16, '\n');
  }
  return 0;
}

}  // namespace sluice::bench
