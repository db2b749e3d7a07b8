#include "store/spill_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "store/spill_file.h"

namespace sluice::store {
namespace {

namespace fs = std::filesystem;

// With the directory's flock held: its spill files go, then the lock file and the directory if
// nothing else is in it. A claimer that opened the old lock file sees it unlinked and retries.
void RemoveHeldDir(const std::string& dir) {
  SpillFile::RemoveLeftovers(dir);
  // No exceptions (this runs in destructors): the error_code forms of the iterator only.
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != "lock") return;  // not ours: keep the directory and its lock
  }
  if (ec) return;
  ::unlink((dir + "/lock").c_str());
  ::rmdir(dir.c_str());
}

// Removes the node directories whose daemon is gone (lock free, or no lock file and empty).
void RemoveDeadNodeDirs(const std::string& root, const std::string& own) {
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    std::error_code type_ec;
    if (!it->is_directory(type_ec) || !n.starts_with("node-") || n == own) continue;
    const std::string dir = it->path().string();
    int fd = ::open((dir + "/lock").c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) ::rmdir(dir.c_str());  // only if empty: a release cut short
      continue;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) RemoveHeldDir(dir);  // its daemon is gone
    ::close(fd);
  }
}

bool SameFile(int fd, const std::string& path) {
  struct stat held {};
  struct stat named {};
  return ::fstat(fd, &held) == 0 && ::stat(path.c_str(), &named) == 0 &&
         held.st_ino == named.st_ino && held.st_dev == named.st_dev;
}

// Opens and locks <dir>/lock, creating both. Another store may be removing the directory (it
// unlinks the lock under its flock, then the directory): then the open fails or the locked file
// is no longer the one named, and the claim starts again. A lock held for 0.5 s is a live store.
Result<int> LockNodeDir(const std::string& dir, const std::string& node) {
  const std::string lock = dir + "/lock";
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return IoError("spill directory " + dir + " cannot be created: " + ec.message());
    int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // the directory went between the two calls
      return IoError("cannot open " + lock + ": " + std::strerror(errno));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      if (SameFile(fd, lock)) return fd;
      ::close(fd);  // locked a lock file that was just unlinked
      continue;
    }
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return IoError("spill directory " + dir + " is in use by another daemon for node " + node +
                 " (give each daemon its own port or spill_dir)");
}

}  // namespace

Result<SpillDirClaim> ClaimSpillDir(const std::string& root, const std::string& node) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) {
    return IoError("spill_dir " + root + " cannot be created: " + ec.message() +
                   " (set spill_dir to a writable directory)");
  }
  SpillFile::RemoveLeftovers(root);
  std::string name = "node-" + node;
  for (char& c : name) {
    if (c == '/' || c == ':' || c == '[' || c == ']') c = '-';
  }
  RemoveDeadNodeDirs(root, name);
  SpillDirClaim claim;
  claim.dir = (fs::path(root) / name).string();
  auto fd = LockNodeDir(claim.dir, node);
  if (!fd.ok()) return fd.status();
  claim.lock_fd = *fd;
  SpillFile::RemoveLeftovers(claim.dir);
  return claim;
}

void ReleaseSpillDir(SpillDirClaim& claim) {
  if (claim.lock_fd < 0) return;
  RemoveHeldDir(claim.dir);
  ::close(claim.lock_fd);
  claim.lock_fd = -1;
}

}  // namespace sluice::store
