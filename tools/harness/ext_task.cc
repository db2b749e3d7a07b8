#include "tools/harness/ext_task.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>
#include <thread>

#include "client/map_output.h"
#include "client/reader.h"
#include "client/writer.h"
#include "shuffle/auth.h"
#include "shuffle/crc32c.h"

namespace sluice::harness {
namespace {

void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// "--flag value" pairs; repeated flags keep every value.
struct Flags {
  std::multimap<std::string, std::string> values;
  std::string error;

  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = values.find(k);
    return it == values.end() ? def : it->second;
  }
  uint64_t Num(const std::string& k, uint64_t def = 0) {
    const std::string v = Get(k);
    if (v.empty()) return def;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (*end != '\0') error = "--" + k + " wants a number, got '" + v + "'";
    return n;
  }
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.substr(0, 2) != "--" || i + 1 >= argc) {
      f.error = "expected --flag value, got '" + std::string(a) + "'";
      break;
    }
    f.values.emplace(std::string(a.substr(2)), argv[++i]);
  }
  return f;
}

int Fail(const std::string& what) {
  std::printf("error %s\n", what.c_str());
  std::fflush(stdout);
  return 1;
}

// "paused", then wait until `go_file` exists (the harness makes it, or kills this process).
void Pause(const std::string& go_file) {
  std::printf("paused\n");
  std::fflush(stdout);
  struct stat st{};
  while (go_file.empty() || ::stat(go_file.c_str(), &st) != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

struct Common {
  std::string secret;
  std::string token;
};

Result<Common> ReadCommon(const Flags& f) {
  Common c;
  auto s = shuffle::auth::ReadSecretFile(f.Get("secret-file"));
  if (!s.ok()) return s.status();
  c.secret = *s;
  if (!f.Get("token-file").empty()) {
    auto t = shuffle::auth::ReadSecretFile(f.Get("token-file"));
    if (!t.ok()) return t.status();
    c.token = *t;
  }
  return c;
}

// Writes `records` generated records; prints opened / paused / map_output / records / bytes.
int RunWriter(Flags& f) {
  auto common = ReadCommon(f);
  if (!common.ok()) return Fail(common.status().ToString());
  client::WriterOptions w;
  w.socket_path = f.Get("socket");
  w.secret = common->secret;
  w.token = common->token;
  w.job = f.Get("job");
  w.partition = static_cast<uint32_t>(f.Num("partition"));
  w.attempt = static_cast<uint32_t>(f.Num("attempt"));
  w.subpartitions = static_cast<uint32_t>(f.Num("subpartitions", 1));
  w.credit_timeout = std::chrono::milliseconds(f.Num("credit-timeout-ms"));
  auto mode = client::ParseWriteMode(f.Get("mode", "blocking"));
  if (!mode.ok()) return Fail(mode.status().ToString());
  w.mode = *mode;
  const uint64_t records = f.Num("records");
  const uint64_t lo = std::max<uint64_t>(kRecordHeader, f.Num("record-min", 100));
  const uint64_t hi = std::max(lo, f.Num("record-max", 1000));
  const uint64_t seed = f.Num("seed", 1);
  const uint64_t pause_after = f.Num("pause-after", ~0ull);
  if (!f.error.empty() || w.subpartitions == 0) return 2;
  auto writer = client::Writer::Open(w);
  if (!writer.ok()) return Fail(writer.status().ToString());
  std::printf("opened\n");
  std::fflush(stdout);
  std::vector<uint64_t> count(w.subpartitions), bytes(w.subpartitions);
  uint64_t rng = seed ^ (uint64_t{w.partition} << 32) ^ (uint64_t{w.attempt} << 20);
  for (uint64_t j = 0; j < records; ++j) {
    if (j == pause_after) Pause(f.Get("go-file"));
    const auto sub = static_cast<uint32_t>(SplitMix(rng) % w.subpartitions);
    const auto size = static_cast<uint32_t>(lo + SplitMix(rng) % (hi - lo + 1));
    Status s;
    if (size <= (*writer)->max_claim()) {
      auto span = (*writer)->Claim(sub, size);
      if (!span.ok()) return Fail(span.status().ToString());
      FillRecord(*span, w.partition, w.attempt, sub, count[sub], seed);
      s = (*writer)->CommitClaim();
    } else {
      std::vector<uint8_t> rec(size);
      FillRecord(rec, w.partition, w.attempt, sub, count[sub], seed);
      s = (*writer)->Write(sub, std::span<const uint8_t>(rec));
    }
    if (!s.ok()) return Fail(s.ToString());
    ++count[sub];
    bytes[sub] += size;
  }
  auto out = (*writer)->Commit();
  if (!out.ok()) return Fail(out.status().ToString());
  std::printf("map_output %s\n", client::EncodeMapOutput(*out).c_str());
  std::string c = "records", b = "bytes";
  for (uint32_t k = 0; k < w.subpartitions; ++k) {
    // Two appends each (GCC 12 at -O3: a false -Wrestrict on " " + string&&).
    c += ' ';
    c += std::to_string(count[k]);
    b += ' ';
    b += std::to_string(bytes[k]);
  }
  std::printf("%s\n%s\ncredit_waits %llu\n", c.c_str(), b.c_str(),
              static_cast<unsigned long long>((*writer)->stats().credit_waits));
  std::fflush(stdout);
  return 0;
}

void PrintTallies(const std::map<uint64_t, ReadTally>& tallies, const ReadChecks& checks) {
  for (const auto& [key, t] : tallies) {
    std::printf("output %u %u %llu %llu\n", static_cast<uint32_t>(key >> 32),
                static_cast<uint32_t>(key), static_cast<unsigned long long>(t.records),
                static_cast<unsigned long long>(t.bytes));
  }
  std::printf("checks %llu %llu %llu\n", static_cast<unsigned long long>(checks.duplicated),
              static_cast<unsigned long long>(checks.reordered),
              static_cast<unsigned long long>(checks.corrupted));
}

// Reads one subpartition of the --map-output list; prints opened / paused / output lines /
// checks, then "end" or "error <status>".
int RunReader(Flags& f) {
  auto common = ReadCommon(f);
  if (!common.ok()) return Fail(common.status().ToString());
  client::ReaderOptions r;
  r.job = f.Get("job");
  r.token = common->token;
  r.secret = common->secret;
  r.subpartition = static_cast<uint32_t>(f.Num("subpartition"));
  r.timeout = std::chrono::milliseconds(f.Num("timeout-ms", 30000));
  const uint64_t pause_after = f.Num("pause-after", ~0ull);
  if (!f.error.empty()) return 2;
  auto range = f.values.equal_range("map-output");
  for (auto it = range.first; it != range.second; ++it) {
    auto m = client::DecodeMapOutput(it->second);
    if (!m.ok()) return Fail(m.status().ToString());
    r.map_outputs.push_back(*m);
  }
  auto reader = client::Reader::OpenSubpartition(r);
  if (!reader.ok()) return Fail(reader.status().ToString());
  std::printf("opened\n");
  std::fflush(stdout);
  std::map<uint64_t, ReadTally> tallies;
  std::map<uint64_t, uint64_t> next_seq;
  ReadChecks checks;
  for (uint64_t n = 0;; ++n) {
    if (n == pause_after) Pause(f.Get("go-file"));
    auto rec = (*reader)->Next();
    if (!rec.ok()) {
      PrintTallies(tallies, checks);
      return Fail(rec.status().ToString());
    }
    if (!rec->has_value()) break;
    CheckRecord(**rec, r.subpartition, &tallies, &next_seq, &checks);
  }
  PrintTallies(tallies, checks);
  std::printf("end\n");
  std::fflush(stdout);
  return 0;
}

}  // namespace

void FillRecord(std::span<uint8_t> out, uint32_t partition, uint32_t attempt,
                uint32_t subpartition, uint64_t seq, uint64_t seed) {
  uint8_t* p = out.data();
  const auto payload = static_cast<uint32_t>(out.size() - kRecordHeader);
  Put32(p, kRecordMagic);
  Put32(p + 4, partition);
  Put32(p + 8, attempt);
  Put32(p + 12, subpartition);
  Put64(p + 16, seq);
  Put32(p + 24, payload);
  uint64_t x = seed ^ seq ^ (uint64_t{partition} << 40) ^ (uint64_t{subpartition} << 20);
  for (uint32_t i = 0; i < payload; i += 8) {
    const uint64_t v = SplitMix(x);
    std::memcpy(p + kRecordHeader + i, &v, std::min<uint32_t>(8, payload - i));
  }
  uint32_t crc = shuffle::Crc32c(p, 28);
  crc = shuffle::Crc32c(p + kRecordHeader, payload, crc);
  Put32(p + 28, crc);
}

void CheckRecord(std::span<const uint8_t> record, uint32_t subpartition,
                 std::map<uint64_t, ReadTally>* tallies, std::map<uint64_t, uint64_t>* next_seq,
                 ReadChecks* checks) {
  const uint8_t* p = record.data();
  if (record.size() < kRecordHeader || Get32(p) != kRecordMagic ||
      Get32(p + 24) != record.size() - kRecordHeader || Get32(p + 12) != subpartition) {
    ++checks->corrupted;
    return;
  }
  uint32_t crc = shuffle::Crc32c(p, 28);
  crc = shuffle::Crc32c(p + kRecordHeader, record.size() - kRecordHeader, crc);
  if (crc != Get32(p + 28)) {
    ++checks->corrupted;
    return;
  }
  const uint64_t key = (uint64_t{Get32(p + 4)} << 32) | Get32(p + 8);
  const uint64_t seq = Get64(p + 16);
  uint64_t& next = (*next_seq)[key];
  if (seq < next) {
    ++checks->duplicated;
    return;
  }
  if (seq > next) ++checks->reordered;
  next = seq + 1;
  ReadTally& t = (*tallies)[key];
  ++t.records;
  t.bytes += record.size();
}

std::multimap<std::string, std::string> ParseTaskOutput(const std::string& text) {
  std::multimap<std::string, std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const size_t space = line.find(' ');
    out.emplace(line.substr(0, space), space == std::string::npos ? "" : line.substr(space + 1));
    start = end + 1;
  }
  return out;
}

int ExtTaskMain(int argc, char** argv) {
  if (argc < 1) return 2;
  Flags f = ParseFlags(argc, argv);
  if (!f.error.empty()) {
    std::fprintf(stderr, "sluice-harness %s: %s\n", kExtTaskFlag, f.error.c_str());
    return 2;
  }
  // Numbers first, before any file or socket is touched.
  for (const char* key : {"partition", "attempt", "subpartitions", "records", "record-min",
                          "record-max", "seed", "pause-after", "credit-timeout-ms",
                          "subpartition", "timeout-ms"}) {
    (void)f.Num(key);
  }
  if (!f.error.empty()) {
    std::fprintf(stderr, "sluice-harness %s %s: %s\n", kExtTaskFlag, argv[0], f.error.c_str());
    return 2;
  }
  const std::string_view task = argv[0];
  int rc = 2;
  if (task == "write") rc = RunWriter(f);
  if (task == "read") rc = RunReader(f);
  if (rc == 2) {
    std::fprintf(stderr, "sluice-harness %s %s: bad task or flags %s\n", kExtTaskFlag,
                 argv[0], f.error.c_str());
  }
  return rc;
}

}  // namespace sluice::harness
