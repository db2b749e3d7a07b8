#include "tools/common/fd_io.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::tools {

bool WriteAll(int fd, const void* data, size_t len) {
  struct stat st {};
  const bool socket = ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = socket ? ::send(fd, p, len, MSG_NOSIGNAL) : ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EPIPE;
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t len, size_t* got) {
  auto* p = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::read(fd, p + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = 0;
      if (got != nullptr) *got = done;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  if (got != nullptr) *got = done;
  return true;
}

}  // namespace sluice::tools
