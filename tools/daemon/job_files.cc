#include "tools/daemon/job_files.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice::daemon {
namespace {

std::string Errno(int e) { return std::strerror(e); }

// Closes a descriptor at scope exit unless released.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

int OpenAt2(int dirfd, const std::string& path, uint64_t flags, uint64_t mode, uint64_t resolve) {
  open_how how{};
  how.flags = flags;
  how.mode = mode;
  how.resolve = resolve;
  int fd;
  do {
    fd = static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how)));
  } while (fd < 0 && errno == EINTR);
  return fd;
}

constexpr uint64_t kBeneath = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;

std::string Why(int e) {
  if (e == EXDEV) return "it leads outside the root (a '..' or a symlink out of it)";
  if (e == ELOOP) return "a component is a symlink, which output paths may not use";
  return Errno(e);
}

Result<int> OpenRoot(const std::string& root, const char* option) {
  const int fd = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return InvalidArgument(std::string(option) + " '" + root + "' cannot be opened: " +
                           Errno(errno));
  }
  return fd;
}

}  // namespace

Status CheckRelativePath(const std::string& path, const std::string& what) {
  if (path.empty()) return InvalidArgument(what + " is empty");
  if (path.find('\0') != std::string::npos) return InvalidArgument(what + " contains a NUL byte");
  if (path.front() == '/') {
    return InvalidArgument(what + " '" + path +
                           "' is absolute; name it relative to the daemon's root "
                           "(--input-dir / --output-dir)");
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    if (path.compare(start, slash - start, "..") == 0 && slash - start == 2) {
      return InvalidArgument(what + " '" + path + "' contains '..'; it must stay beneath the "
                             "daemon's root (--input-dir / --output-dir)");
    }
    start = slash + 1;
  }
  return Status::Ok();
}

Result<int> OpenInputBeneath(const std::string& root, const std::string& relative) {
  const std::string what = "input file '" + relative + "' (beneath input_dir '" + root + "')";
  if (Status st = CheckRelativePath(relative, "input file"); !st.ok()) return st;
  auto root_fd = OpenRoot(root, "input_dir");
  if (!root_fd.ok()) return root_fd.status();
  Fd dir(*root_fd);
  Fd fd(OpenAt2(dir.get(), relative, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0, kBeneath));
  if (fd.get() < 0) {
    const int e = errno;
    if (e == EXDEV || e == ELOOP) return InvalidArgument(what + " is refused: " + Why(e));
    return IoError(what + " cannot be opened: " + Errno(e));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return IoError(what + ": fstat: " + Errno(errno));
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument(what + " is not a regular file (FIFOs, devices, sockets and "
                           "directories are refused)");
  }
  struct statfs fs {};
  if (::fstatfs(fd.get(), &fs) != 0) return IoError(what + ": fstatfs: " + Errno(errno));
  if (fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC) {
    return InvalidArgument(what + " is a procfs or sysfs file, which jobs may not read");
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return IoError(what + ": fcntl: " + Errno(errno));
  }
  return fd.release();
}

Result<int> CreateOutputBeneath(const std::string& root, const std::string& relative_dir,
                                const std::string& file_name) {
  const std::string path = relative_dir + "/" + file_name;
  const std::string what = "output file '" + path + "' (beneath output_dir '" + root + "')";
  if (Status st = CheckRelativePath(relative_dir, "output_dir"); !st.ok()) return st;
  auto root_fd = OpenRoot(root, "output_dir");
  if (!root_fd.ok()) return root_fd.status();
  Fd dir(*root_fd);
  size_t start = 0;
  while (start < relative_dir.size()) {
    size_t slash = relative_dir.find('/', start);
    if (slash == std::string::npos) slash = relative_dir.size();
    const std::string part = relative_dir.substr(start, slash - start);
    start = slash + 1;
    if (part.empty() || part == ".") continue;
    if (::mkdirat(dir.get(), part.c_str(), 0750) != 0 && errno != EEXIST) {
      return IoError(what + ": cannot create directory '" + part + "': " + Errno(errno));
    }
    const int next = OpenAt2(dir.get(), part, O_PATH | O_DIRECTORY | O_CLOEXEC, 0,
                             kBeneath | RESOLVE_NO_SYMLINKS);
    if (next < 0) {
      const int e = errno;
      return InvalidArgument(what + " is refused: directory '" + part + "': " + Why(e));
    }
    dir.reset(next);
  }
  const int fd = OpenAt2(dir.get(), file_name,
                         O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640,
                         kBeneath | RESOLVE_NO_SYMLINKS);
  if (fd < 0) {
    const int e = errno;
    if (e == EEXIST) {
      return InvalidArgument(what + " already exists; outputs never overwrite anything: "
                             "remove it or use a new job id or output_dir");
    }
    return IoError(what + " cannot be created: " + Why(e));
  }
  return fd;
}

LineReader::LineReader(int fd, std::string path, uint64_t max_line_bytes)
    : fd_(fd), path_(std::move(path)), max_(max_line_bytes), buf_(new char[kChunk]) {}

LineReader::~LineReader() {
  if (fd_ >= 0) ::close(fd_);
}

Status LineReader::TooLong() const {
  return InvalidArgument("input file '" + path_ + "' line " + std::to_string(line_number_ + 1) +
                         " is longer than max_line_bytes (" + std::to_string(max_) +
                         " bytes); raise --max-line-bytes or fix the file");
}

Result<bool> LineReader::Next(std::string_view* line) {
  carry_.clear();
  while (true) {
    const char* b = buf_.get() + begin_;
    const auto* nl = static_cast<const char*>(std::memchr(b, '\n', end_ - begin_));
    if (nl != nullptr) {
      const auto n = static_cast<size_t>(nl - b);
      if (carry_.size() + n > max_) return TooLong();
      begin_ += n + 1;
      ++line_number_;
      if (carry_.empty()) {
        *line = std::string_view(b, n);
      } else {
        carry_.append(b, n);
        *line = carry_;
      }
      return true;
    }
    if (carry_.size() + (end_ - begin_) > max_) return TooLong();
    carry_.append(b, end_ - begin_);
    begin_ = end_ = 0;
    if (eof_) {
      if (carry_.empty()) return false;
      ++line_number_;
      *line = carry_;
      return true;
    }
    ssize_t n;
    do {
      n = ::read(fd_, buf_.get(), kChunk);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      return IoError("reading input file '" + path_ + "' after line " +
                     std::to_string(line_number_) + ": " + Errno(errno));
    }
    if (n == 0) eof_ = true;
    end_ = static_cast<size_t>(n);
  }
}

}  // namespace sluice::daemon
