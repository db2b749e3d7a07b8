// Test helper (not API): fresh temporary directories and files written with a given mode (a
// secret is refused unless it is 0600).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace sluice::testutil {

// Creates a new, empty directory <gtest temp dir>/<prefix>-XXXXXX (mkdtemp: unique, mode 0700)
// and returns its path, or "" if it could not be created.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = std::filesystem::path(::testing::TempDir()) / (prefix + "-XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

// A directory from MakeTempDir, removed with everything in it when this object goes away.
// Thread-compatible.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "sluice-test") : path_(MakeTempDir(prefix)) {
    EXPECT_FALSE(path_.empty()) << "cannot create a temporary directory for " << prefix;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // <dir>/<name>; nothing is created.
  std::string Path(const std::string& name) const { return (path_ / name).string(); }
  std::string root() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// Writes `text` to `path` (replacing the file) and sets `mode` on it, e.g. 0600 for a secret.
// Returns `path`.
inline std::string WriteFileWithMode(const std::string& path, const std::string& text,
                                     mode_t mode) {
  ::unlink(path.c_str());
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
  return path;
}

}  // namespace sluice::testutil
