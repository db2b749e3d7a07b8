#include "store/spill_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "shuffle/crc32c.h"

namespace sluice::store {
namespace {

std::atomic<int> g_write_fault{0};

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetU32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

std::string ErrnoText(int err) { return std::strerror(err); }

// The buffer's checksum: CRC32C of each of its four stripes (stripe k is bytes
// [k*q, min((k+1)*q, size)) with q = size/4 rounded up to 8), computed in one pass so the four
// CRC32 instruction chains run in parallel (one chain is latency-bound at ~8 bytes / 3 cycles).
constexpr size_t kStripes = 4;
size_t StripeLength(size_t size) { return ((size + kStripes - 1) / kStripes + 7) & ~size_t{7}; }

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) void StripedCrcHw(const uint8_t* p, size_t size,
                                                    uint32_t out[kStripes]) {
  const size_t q = StripeLength(size);
  uint64_t c[kStripes] = {~0u, ~0u, ~0u, ~0u};
  size_t common = size >= q * (kStripes - 1) ? std::min(q, size - q * (kStripes - 1)) : 0;
  common &= ~size_t{7};
  for (size_t i = 0; i < common; i += 8) {
    for (size_t k = 0; k < kStripes; ++k) {
      uint64_t v;
      std::memcpy(&v, p + k * q + i, 8);
      c[k] = __builtin_ia32_crc32di(c[k], v);
    }
  }
  for (size_t k = 0; k < kStripes; ++k) {
    const size_t begin = std::min(size, k * q);
    const size_t end = std::min(size, (k + 1) * q);
    size_t i = begin + std::min(common, end - begin);
    uint64_t ck = c[k];
    for (; i + 8 <= end; i += 8) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      ck = __builtin_ia32_crc32di(ck, v);
    }
    auto c32 = static_cast<uint32_t>(ck);
    for (; i < end; ++i) c32 = __builtin_ia32_crc32qi(c32, p[i]);
    out[k] = ~c32;
  }
}
const bool kHasSse42 = __builtin_cpu_supports("sse4.2");
#endif

void StripedCrc(const uint8_t* p, size_t size, uint32_t out[kStripes]) {
#if defined(__x86_64__)
  if (kHasSse42) return StripedCrcHw(p, size, out);
#endif
  const size_t q = StripeLength(size);
  for (size_t k = 0; k < kStripes; ++k) {
    const size_t begin = std::min(size, k * q);
    out[k] = shuffle::Crc32c(p + begin, std::min(size, (k + 1) * q) - begin);
  }
}

// Writes every iovec at `offset`, in IOV_MAX chunks. Returns 0 or an errno.
int WriteAll(int fd, uint64_t offset, std::vector<iovec>& iov) {
  if (int fault = g_write_fault.load(std::memory_order_relaxed); fault != 0) return fault;
  size_t i = 0;
  while (i < iov.size()) {
    const int n = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t w = ::pwritev(fd, &iov[i], n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    offset += static_cast<uint64_t>(w);
    size_t left = static_cast<size_t>(w);
    while (left > 0 && i < iov.size()) {
      if (left >= iov[i].iov_len) {
        left -= iov[i].iov_len;
        ++i;
      } else {
        iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + left;
        iov[i].iov_len -= left;
        left = 0;
      }
    }
  }
  return 0;
}

}  // namespace

void SpillFile::SetWriteFaultForTesting(int err) { g_write_fault.store(err); }

SpillFile::SpillFile(std::string data_path, std::string index_path, int data_fd, int index_fd)
    : data_path_(std::move(data_path)),
      index_path_(std::move(index_path)),
      data_fd_(data_fd),
      index_fd_(index_fd) {}

SpillFile::~SpillFile() {
  ::close(data_fd_);
  ::close(index_fd_);
}

Result<std::unique_ptr<SpillFile>> SpillFile::Create(const std::string& dir,
                                                     const std::string& stem) {
  const std::string base = dir + "/" + std::string(kSpillFilePrefix) + stem;
  const std::string data = base + ".data";
  const std::string index = base + ".index";
  int dfd = ::open(data.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (dfd < 0) return IoError("cannot create spill file " + data + ": " + ErrnoText(errno));
  int ifd = ::open(index.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (ifd < 0) {
    const int err = errno;
    ::close(dfd);
    ::unlink(data.c_str());
    return IoError("cannot create spill index " + index + ": " + ErrnoText(err));
  }
  return std::unique_ptr<SpillFile>(new SpillFile(data, index, dfd, ifd));
}

uint64_t SpillFile::DiskBytes(std::span<const SpillRegion> regions) {
  uint64_t n = 0;
  for (const SpillRegion& r : regions) {
    n += kSpillIndexRecordBytes;
    for (const buffer::Buffer& b : r.buffers) n += kSpillBufferHeaderBytes + b.size();
  }
  return n;
}

Status SpillFile::AppendRegions(std::span<SpillRegion> regions) {
  size_t buffers = 0;
  for (const SpillRegion& r : regions) buffers += r.buffers.size();
  std::vector<uint8_t> headers(buffers * kSpillBufferHeaderBytes);
  std::vector<uint8_t> index(regions.size() * kSpillIndexRecordBytes);
  std::vector<iovec> iov;
  iov.reserve(buffers * 2);
  uint64_t offset = data_bytes_;
  size_t h = 0;
  for (size_t k = 0; k < regions.size(); ++k) {
    SpillRegion& r = regions[k];
    const uint64_t region_start = offset;
    r.offsets.clear();
    r.offsets.reserve(r.buffers.size());
    for (const buffer::Buffer& b : r.buffers) {
      uint8_t* hdr = &headers[h * kSpillBufferHeaderBytes];
      PutU32(hdr, b.size());
      uint32_t crc[kStripes];
      StripedCrc(b.data(), b.size(), crc);
      for (size_t j = 0; j < kStripes; ++j) PutU32(hdr + 4 + 4 * j, crc[j]);
      iov.push_back({hdr, kSpillBufferHeaderBytes});
      if (b.size() > 0) iov.push_back({b.data(), b.size()});
      r.offsets.push_back(offset);
      offset += kSpillBufferHeaderBytes + b.size();
      ++h;
    }
    uint8_t* rec = &index[k * kSpillIndexRecordBytes];
    PutU32(rec, r.subpartition);
    PutU32(rec + 4, static_cast<uint32_t>(r.buffers.size()));
    PutU64(rec + 8, r.first_ordinal);
    PutU64(rec + 16, region_start);
    PutU64(rec + 24, offset - region_start);
  }
  if (int err = WriteAll(data_fd_, data_bytes_, iov); err != 0) {
    (void)::ftruncate(data_fd_, static_cast<off_t>(data_bytes_));
    return IoError("spill to " + data_path_ + " failed: " + ErrnoText(err) +
                   (err == ENOSPC ? " (free space on the spill_dir disk or lower spill_max_bytes)"
                                  : ""));
  }
  std::vector<iovec> index_iov{{index.data(), index.size()}};
  if (int err = WriteAll(index_fd_, index_bytes_, index_iov); err != 0) {
    (void)::ftruncate(data_fd_, static_cast<off_t>(data_bytes_));
    (void)::ftruncate(index_fd_, static_cast<off_t>(index_bytes_));
    return IoError("spill index " + index_path_ + " failed: " + ErrnoText(err));
  }
  data_bytes_ = offset;
  index_bytes_ += index.size();
  return Status::Ok();
}

Result<uint32_t> SpillFile::ReadBuffer(uint64_t offset, uint32_t size,
                                       std::span<uint8_t> dst) const {
  auto where = [&] { return "spill file " + data_path_ + " at offset " + std::to_string(offset); };
  if (size > dst.size()) {
    return IoError(where() + ": buffer of " + std::to_string(size) +
                   " bytes is larger than a segment (" + std::to_string(dst.size()) + ")");
  }
  uint8_t hdr[kSpillBufferHeaderBytes];
  iovec iov[2] = {{hdr, sizeof(hdr)}, {dst.data(), size}};
  const size_t want = sizeof(hdr) + size;
  size_t got = 0;
  while (got < want) {
    // Resume after a short read: skip what arrived in both iovecs.
    iovec part[2];
    int n = 0;
    size_t skip = got;
    for (const iovec& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      part[n++] = {static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    ssize_t r = ::preadv(data_fd_, part, n, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      return IoError(where() + ": short read of a " + std::to_string(size) + "-byte buffer" +
                     (r < 0 ? ": " + ErrnoText(errno) : std::string()));
    }
    got += static_cast<size_t>(r);
  }
  if (GetU32(hdr) != size) {
    return IoError(where() + ": the buffer header says " + std::to_string(GetU32(hdr)) +
                   " bytes, the index " + std::to_string(size) + ": the file is corrupt");
  }
  uint32_t crc[kStripes];
  StripedCrc(dst.data(), size, crc);
  bool match = true;
  for (size_t k = 0; k < kStripes; ++k) match &= crc[k] == GetU32(hdr + 4 + 4 * k);
  if (!match) {
    return IoError(where() + ": checksum mismatch in a " + std::to_string(size) +
                   "-byte buffer: the file was corrupted on disk");
  }
  return size;
}

void SpillFile::Remove() {
  if (removed_) return;
  removed_ = true;
  ::unlink(data_path_.c_str());
  ::unlink(index_path_.c_str());
}

uint32_t SpillFile::RemoveLeftovers(const std::string& dir) {
  uint32_t n = 0;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = ::readdir(d)) {
    if (std::string_view(e->d_name).starts_with(kSpillFilePrefix)) {
      if (::unlink((dir + "/" + e->d_name).c_str()) == 0) ++n;
    }
  }
  ::closedir(d);
  return n;
}

}  // namespace sluice::store
