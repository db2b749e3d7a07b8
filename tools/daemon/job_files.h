// Files of a file-partition job, confined to the daemon's roots (sluiced --input-dir,
// --output-dir): paths in a job are relative to a root and are resolved with openat2
// (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) on a descriptor of that root, so no '..', no
// absolute path and no symlink can lead outside it. Only regular files outside procfs are read
// (opened non-blocking first, so a FIFO cannot hang the caller); outputs are created with
// O_EXCL and mode 0640, never overwriting anything; output subdirectories are created beneath
// the root with mode 0750 and never through a symlink.
//
// These functions do blocking file I/O: call them on a job's task thread, never on the
// daemon's control thread. Thread-safe (no shared state); a LineReader is thread-compatible.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "buffer/status.h"

namespace sluice::daemon {

// Refuses what can never be beneath a root: empty, absolute, a '..' component, a NUL byte.
// `what` names the field in the message ("input_files[3]").
Status CheckRelativePath(const std::string& path, const std::string& what);

// Opens `relative` beneath `root` for reading. InvalidArgument naming the path when it escapes
// the root, is not a regular file (FIFO, device, directory) or lives in procfs; IoError when it
// cannot be opened. The descriptor is blocking again when returned. Owned by the caller.
Result<int> OpenInputBeneath(const std::string& root, const std::string& relative);

// Creates the directory `relative_dir` beneath `root` (each missing component mode 0750, no
// component may be a symlink), then creates `file_name` in it with O_CREAT | O_EXCL, mode
// 0640. AlreadyExists-like InvalidArgument naming the path when the name exists (a file or a
// symlink: nothing is overwritten or followed). Returns the descriptor, owned by the caller.
Result<int> CreateOutputBeneath(const std::string& root, const std::string& relative_dir,
                                const std::string& file_name);

// Reads lines of at most `max_line_bytes` bytes (the newline excluded) from a descriptor it
// owns. A longer line is an error naming the file and the line number; a read error (EIO,
// ENOMEM, ...) is an IoError, never taken as the end of the file. Holds at most
// max_line_bytes + 64 KiB. Thread-compatible.
class LineReader {
 public:
  LineReader(int fd, std::string path, uint64_t max_line_bytes);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // True with the next line in *line (valid until the next call), false at the end.
  Result<bool> Next(std::string_view* line);
  uint64_t line_number() const { return line_number_; }

  static constexpr size_t kChunk = 64 * 1024;

 private:
  Status TooLong() const;
  int fd_;
  const std::string path_;
  const uint64_t max_;
  std::unique_ptr<char[]> buf_;
  size_t begin_ = 0;
  size_t end_ = 0;
  std::string carry_;  // a line that spans reads
  bool eof_ = false;
  uint64_t line_number_ = 0;
};

}  // namespace sluice::daemon
