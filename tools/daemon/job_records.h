// The pieces of a job that are pure functions of the JobSpec: generated records (layout,
// writing, checking), the deterministic random streams producers draw keys and sizes from, the
// Zipf sampler, the per-channel sequence tracker consumers count duplicates and reorders with,
// and the key of a text line in a file-partition job.
//
// Generated record layout (little-endian, `size` bytes in all, size >= 28):
//
//   0        4           12         20         24                 size-4     size
//   | producer | sequence   | key      | size     | filler ...       | crc32c   |
//     u32        u64          u64        u32        seed,producer,seq  u32 of [0, size-4)
//
// Everything here is thread-compatible: a sampler or tracker belongs to one task thread.
#pragma once

#include <cstdint>
#include <bitset>
#include <span>
#include <string_view>

namespace sluice::daemon {

inline constexpr uint32_t kRecordHeaderBytes = 24;  // producer, sequence, key, size
inline constexpr uint32_t kRecordCrcBytes = 4;

// splitmix64: a tiny, fast, well-mixed 64-bit generator. Deterministic from its seed.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n). REQUIRES: n >= 1.
  uint64_t Below(uint64_t n);
  // Uniform in [0, 1).
  double NextDouble();

 private:
  uint64_t state_;
};

// The seed of producer `producer`'s stream in a job with seed `seed`.
uint64_t ProducerStreamSeed(uint64_t seed, uint32_t producer);

// Zipf over {0, ..., n-1}: P(k) proportional to 1/(k+1)^s, so key 0 is the hottest. Rejection-
// inversion sampling (Hoermann and Derflinger, 1996): O(1) memory and a few logs per draw, so
// n in the millions costs nothing to set up. REQUIRES: n >= 1, s > 0.
class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double s);
  uint64_t Sample(SplitMix64& rng) const;

 private:
  double H(double x) const;         // integral of h(x) = x^-s, shifted so H(1) = 0
  double HInverse(double y) const;  // its inverse
  double h(double x) const;

  const uint64_t n_;
  const double s_;
  double h_lo_ = 0;     // H(1.5) - h(1): the lower end of the sampled range
  double h_hi_ = 0;     // H(n + 0.5): the upper end
  double squeeze_ = 0;  // accept without the exact test when k - x <= squeeze_
};

// Writes a generated record of record.size() bytes. REQUIRES: record.size() >= 28.
void WriteGeneratedRecord(std::span<uint8_t> record, uint64_t seed, uint32_t producer,
                          uint64_t sequence, uint64_t key);

struct GeneratedRecord {
  uint32_t producer = 0;
  uint64_t sequence = 0;
  uint64_t key = 0;
  uint32_t size = 0;
};
// Parses and checks a record: length >= 28, the size field equals the length, the CRC32C
// matches. False when any check fails (the record is corrupted or malformed).
bool ParseGeneratedRecord(std::span<const uint8_t> record, GeneratedRecord* out);

// Tells, per channel, whether a sequence number is new and in order, new but late, or seen
// before. Bounded by construction: a fixed window of the last kWindow sequences below the
// highest one seen (kWindow / 8 bytes), whatever a peer sends. Approximations beyond the window:
// a sequence more than kWindow below the highest is too old to tell apart and is reported as
// kDuplicate (it is not counted as a record); missing() counts holes that left the window as
// still missing, even if they arrive later (then reported as kDuplicate too).
class SequenceTracker {
 public:
  static constexpr uint64_t kWindow = 4096;
  enum class Outcome {
    kInOrder,    // new, and above every sequence seen so far (gaps before it may fill later)
    kReordered,  // new, but a higher sequence arrived before it (within the window)
    kDuplicate,  // seen before, or too old to tell (more than kWindow below the highest)
  };
  Outcome Observe(uint64_t sequence);
  // Sequences below the highest one seen that never arrived (see the approximation above).
  uint64_t missing() const { return missing_; }

 private:
  bool any_ = false;
  uint64_t highest_ = 0;
  uint64_t missing_ = 0;
  std::bitset<kWindow> seen_;  // bit s % kWindow for s in (highest_ - kWindow, highest_]
};

// The key field of a text line (fields split by `delimiter`, numbered from 0); false when the
// line has fewer fields.
bool LineKey(std::string_view line, char delimiter, uint32_t field, std::string_view* key);
// The consumer a key goes to in a file-partition job: HashBytes(key) % consumers.
uint32_t ConsumerOfKey(std::string_view key, uint32_t consumers);

}  // namespace sluice::daemon
