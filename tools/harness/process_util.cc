#include "tools/harness/process_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

namespace sluice::harness {

int RunCommand(const std::vector<std::string>& argv, std::string* output) {
  int pipefd[2] = {-1, -1};
  if (output != nullptr && pipe2(pipefd, O_CLOEXEC) != 0) return 127;
  pid_t pid = fork();
  if (pid < 0) {
    if (output != nullptr) {
      close(pipefd[0]);
      close(pipefd[1]);
    }
    return 127;
  }
  if (pid == 0) {
    int out = output != nullptr ? pipefd[1] : open("/dev/null", O_WRONLY);
    dup2(out, STDOUT_FILENO);
    dup2(out, STDERR_FILENO);
    int in = open("/dev/null", O_RDONLY);
    dup2(in, STDIN_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  if (output != nullptr) {
    close(pipefd[1]);
    char buf[4096];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) output->append(buf, static_cast<size_t>(n));
    }
    close(pipefd[0]);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 127;
}

Status RunChecked(const std::vector<std::string>& argv) {
  std::string out;
  int rc = RunCommand(argv, &out);
  if (rc == 0) return Status::Ok();
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return IoError("'" + cmd + "' exited with " + std::to_string(rc) +
                 (out.empty() ? "" : ": " + out));
}

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteWholeFile(const std::string& path, const std::string& text, int mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return IoError("cannot write " + path + ": " + std::strerror(errno));
  // The mode also when the file existed (a secret must never stay readable by others).
  if (fchmod(fd, static_cast<mode_t>(mode)) != 0) {
    const int e = errno;
    close(fd);
    return IoError("cannot chmod " + path + ": " + std::strerror(e));
  }
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return IoError("cannot write " + path + ": " + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  close(fd);
  return Status::Ok();
}

std::optional<uint64_t> ReadPeakRss(pid_t pid) {
  auto text = ReadWholeFile("/proc/" + std::to_string(pid) + "/status");
  if (!text.ok()) return std::nullopt;
  auto pos = text->find("VmHWM:");
  if (pos == std::string::npos) return std::nullopt;
  return std::strtoull(text->c_str() + pos + 6, nullptr, 10) * 1024;
}

Result<std::string> MakeRunDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                      "/sluice-harness-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return IoError("mkdtemp " + templ + ": " + std::strerror(errno));
  }
  return std::filesystem::absolute(buf.data()).string();  // daemons may run elsewhere
}

void RemoveTree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  return std::filesystem::path(buf).parent_path().string();
}

std::string FindSluiced() {
  const std::filesystem::path self = SelfDir();
  std::vector<std::string> candidates = {(self / "sluiced").string(),
                                         (self / ".." / "daemon" / "sluiced").lexically_normal()};
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::string dirs = path;
    size_t start = 0;
    while (start <= dirs.size()) {
      size_t end = dirs.find(':', start);
      if (end == std::string::npos) end = dirs.size();
      if (end > start) candidates.push_back(dirs.substr(start, end - start) + "/sluiced");
      start = end + 1;
    }
  }
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return candidates.front();
}

std::string RandomHex(size_t n) {
  std::string bytes(n, '\0');
  std::ifstream in("/dev/urandom", std::ios::binary);
  if (!in.read(bytes.data(), static_cast<std::streamsize>(n))) {
    std::random_device rd;
    for (auto& b : bytes) b = static_cast<char>(rd());
  }
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace sluice::harness
