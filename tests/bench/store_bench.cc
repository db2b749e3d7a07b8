// Reading spilled external partitions (issue 13) next to a sequential read of a file of the
// same size, in the same run.
//
//   sluice_store_bench [--mib 256] [--rounds 5] [--subpartitions 8] [--dir /tmp]
//                      [--segment-size 32768]
//
// Setup: a PartitionStore with a 4 MiB memory budget; one blocking map output of --mib MiB of
// 100-byte records over --subpartitions, appended and committed (so nearly all of it is
// spilled: one data file and one index). A plain file of the same size is written next to it.
// Each round reads, in this order:
//   file-1m:  the plain file with read(2) of 1 MiB;
//   file-seg: the plain file with read(2) of one segment (the unit the store reads);
//   spilled:  every subpartition through a StoreView (PollNext: pread of a segment into a
//             pooled buffer, CRC32C verified, buffer released), as the server drains it.
// Both files are in the page cache (just written, same size): this compares the store's read
// path with the file read, not the disk. Prints GB/s (10^9 bytes/s) per round, the medians,
// and the ratios spilled / file (target >= 0.5).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/record_serializer.h"
#include "store/partition_store.h"

namespace sluice::store {
namespace {

struct Flags {
  uint64_t mib = 256;
  int rounds = 5;
  uint32_t subpartitions = 8;
  std::string dir = "/tmp";
  uint32_t segment_size = 32 * 1024;
};

double Seconds(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

class NullListener : public shuffle::SubpartitionListener {
 public:
  void NotifyDataAvailable() override {}
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

uint64_t ReadFile(const std::string& path, size_t chunk) {
  std::vector<uint8_t> buf(chunk);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  uint64_t total = 0;
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) total += static_cast<uint64_t>(n);
  ::close(fd);
  return total;
}

int Run(const Flags& f) {
  buffer::NetworkBufferPoolOptions po;
  po.segment_size = f.segment_size;
  po.network_memory = 64ull << 20;
  auto pool = buffer::NetworkBufferPool::Create(po);
  if (!pool.ok()) return std::fprintf(stderr, "%s\n", pool.status().ToString().c_str()), 1;
  char tmpl[4096];
  std::snprintf(tmpl, sizeof(tmpl), "%s/sluice-store-bench-XXXXXX", f.dir.c_str());
  if (::mkdtemp(tmpl) == nullptr) return std::perror("mkdtemp"), 1;
  const std::string dir = tmpl;
  PartitionStoreOptions so;
  so.node = "127.0.0.1:1";
  so.spill_dir = dir + "/spill";
  so.memory_budget_bytes = 4ull << 20;
  so.read_pool = *pool;
  auto store = PartitionStore::Create(so);
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto writer = (*store)->OpenWriter({"bench", "", 0, 0, f.subpartitions,
                                      PartitionMode::kBlocking});
  // 100-byte records, packed into whole segments, round robin over the subpartitions.
  const uint64_t total_bytes = f.mib << 20;
  uint64_t written = 0;
  uint32_t sp = 0;
  std::string rec(96, 'x');
  while (written < total_bytes) {
    buffer::MemorySegment* seg = (*pool)->TryRequestSegment();
    if (seg == nullptr) return std::fprintf(stderr, "pool empty\n"), 1;
    buffer::Buffer b = buffer::Buffer::Wrap(seg, (*pool)->direct_recycler());
    uint32_t size = 0, n = 0;
    while (size + 100 <= b.capacity()) {
      shuffle::StoreRecordLength(b.data() + size, 96);
      std::memcpy(b.data() + size + 4, rec.data(), 96);
      size += 100;
      ++n;
    }
    b.SetSize(size);
    written += size;
    Status st = (*store)->Append(*writer, sp, std::move(b), n);
    if (!st.ok()) return std::fprintf(stderr, "%s\n", st.ToString().c_str()), 1;
    sp = (sp + 1) % f.subpartitions;
  }
  auto out = (*store)->Commit(*writer);
  auto id = (*store)->RegisterReadSet("bench", "", {{0, 0}});
  const PartitionStoreStats stats = (*store)->Stats();
  // The plain file: the spilled bytes' size.
  const std::string plain = dir + "/plain";
  {
    std::vector<uint8_t> block(1 << 20, 'y');
    int fd = ::open(plain.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    for (uint64_t w = 0; w < stats.disk_bytes; w += block.size()) {
      const size_t n = std::min<uint64_t>(block.size(), stats.disk_bytes - w);
      if (::write(fd, block.data(), n) != static_cast<ssize_t>(n)) return std::perror("write"), 1;
    }
    ::close(fd);
  }
  std::printf("data %.1f MiB in %u subpartitions, %.1f MiB spilled (%llu files), %.1f MiB in "
              "memory; segment %u\n",
              written / 1048576.0, f.subpartitions, stats.disk_bytes / 1048576.0,
              static_cast<unsigned long long>(stats.spill_files),
              stats.bytes_in_memory / 1048576.0, f.segment_size);
  std::vector<double> file_1m, file_seg, spilled;
  for (int r = 0; r < f.rounds; ++r) {
    auto t = std::chrono::steady_clock::now();
    uint64_t n = ReadFile(plain, 1 << 20);
    file_1m.push_back(n / Seconds(t) / 1e9);
    t = std::chrono::steady_clock::now();
    n = ReadFile(plain, f.segment_size);
    file_seg.push_back(n / Seconds(t) / 1e9);
    t = std::chrono::steady_clock::now();
    uint64_t bytes = 0;
    for (uint32_t k = 0; k < f.subpartitions; ++k) {
      NullListener l;
      auto view = (*store)->CreateView(*id, k, {}, &l);
      if (!view.ok()) return std::fprintf(stderr, "%s\n", view.status().ToString().c_str()), 1;
      while (true) {
        auto item = (*view)->PollNext();
        if (!item.ok()) return std::fprintf(stderr, "%s\n", item.status().ToString().c_str()), 1;
        if (!item->has_value()) return std::fprintf(stderr, "stalled\n"), 1;
        if ((*item)->buffer.type() != buffer::DataType::kData) break;
        bytes += (*item)->buffer.size();
      }
    }
    spilled.push_back(bytes / Seconds(t) / 1e9);
    std::printf("round %d: file-1m %.2f GB/s, file-seg %.2f GB/s, spilled %.2f GB/s\n", r,
                file_1m.back(), file_seg.back(), spilled.back());
  }
  const double m1 = Median(file_1m), ms = Median(file_seg), mp = Median(spilled);
  std::printf("median: file-1m %.2f GB/s, file-seg %.2f GB/s, spilled %.2f GB/s; "
              "spilled/file-1m %.2fx, spilled/file-seg %.2fx (target >= 0.5)\n",
              m1, ms, mp, mp / m1, mp / ms);
  (void)(*store)->Release("bench", "");
  ::unlink(plain.c_str());
  store->reset();
  std::string cmd = "rm -rf '" + dir + "'";
  return std::system(cmd.c_str()) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sluice::store

int main(int argc, char** argv) {
  sluice::store::Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--mib") f.mib = std::strtoull(v, nullptr, 10);
    else if (k == "--rounds") f.rounds = std::atoi(v);
    else if (k == "--subpartitions") f.subpartitions = static_cast<uint32_t>(std::atoi(v));
    else if (k == "--dir") f.dir = v;
    else if (k == "--segment-size") f.segment_size = static_cast<uint32_t>(std::atoi(v));
    else return std::fprintf(stderr, "unknown flag %s\n", k.c_str()), 2;
  }
  return sluice::store::Run(f);
}
