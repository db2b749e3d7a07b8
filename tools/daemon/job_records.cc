#include "tools/daemon/job_records.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "shuffle/crc32c.h"
#include "shuffle/record_writer.h"

namespace sluice::daemon {
namespace {

__extension__ typedef unsigned __int128 Uint128;  // -Wpedantic: a GCC/Clang extension

template <typename T>
T ToLittle(T v) {
  if constexpr (std::endian::native == std::endian::big) {
    if constexpr (sizeof(T) == 8) return __builtin_bswap64(v);
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
  }
  return v;
}

template <typename T>
void Store(uint8_t* p, T v) {
  v = ToLittle(v);
  std::memcpy(p, &v, sizeof(T));
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return ToLittle(v);
}

// log1p(t)/t and expm1(t)/t, with their Taylor series near 0 where the quotient loses digits.
double Log1pOverT(double t) {
  if (std::fabs(t) > 1e-8) return std::log1p(t) / t;
  return 1 - t * (0.5 - t * (1.0 / 3 - 0.25 * t));
}
double Expm1OverT(double t) {
  if (std::fabs(t) > 1e-8) return std::expm1(t) / t;
  return 1 + t * 0.5 * (1 + t / 3 * (1 + 0.25 * t));
}

}  // namespace

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::Below(uint64_t n) {
  return static_cast<uint64_t>((static_cast<Uint128>(Next()) * n) >> 64);
}

double SplitMix64::NextDouble() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

uint64_t ProducerStreamSeed(uint64_t seed, uint32_t producer) {
  return shuffle::Mix64(seed ^ shuffle::Mix64(0x70726F64ull + producer));
}

// Sampling k in {1..n} with P(k) ~ h(k) = k^-s. u is drawn uniformly from [H(1.5) - h(1),
// H(n + 0.5)); x = H^-1(u) and k = round(x). The u that map to k span the integral of h over
// [k - 0.5, k + 0.5], which is at least h(k) because h is convex; accepting only the top h(k)
// of that span gives each k exactly its weight. The squeeze accepts most draws without
// evaluating H again.
ZipfSampler::ZipfSampler(uint64_t n, double s) : n_(n), s_(s) {
  h_lo_ = H(1.5) - h(1);
  h_hi_ = H(static_cast<double>(n_) + 0.5);
  squeeze_ = 2 - HInverse(H(2.5) - h(2));
}

double ZipfSampler::h(double x) const { return std::exp(-s_ * std::log(x)); }

double ZipfSampler::H(double x) const {
  const double log_x = std::log(x);
  return Expm1OverT((1 - s_) * log_x) * log_x;
}

double ZipfSampler::HInverse(double y) const {
  double t = y * (1 - s_);
  if (t < -1) t = -1;  // rounding at the far end of the range
  return std::exp(Log1pOverT(t) * y);
}

uint64_t ZipfSampler::Sample(SplitMix64& rng) const {
  if (n_ == 1) return 0;
  while (true) {
    const double u = h_hi_ + rng.NextDouble() * (h_lo_ - h_hi_);
    const double x = HInverse(u);
    double k = std::floor(x + 0.5);
    if (k < 1) k = 1;
    if (k > static_cast<double>(n_)) k = static_cast<double>(n_);
    if (k - x <= squeeze_ || u >= H(k + 0.5) - h(k)) return static_cast<uint64_t>(k) - 1;
  }
}

void WriteGeneratedRecord(std::span<uint8_t> record, uint64_t seed, uint32_t producer,
                          uint64_t sequence, uint64_t key) {
  uint8_t* p = record.data();
  const size_t size = record.size();
  Store<uint32_t>(p, producer);
  Store<uint64_t>(p + 4, sequence);
  Store<uint64_t>(p + 12, key);
  Store<uint32_t>(p + 20, static_cast<uint32_t>(size));
  const size_t filler_end = size - kRecordCrcBytes;
  SplitMix64 filler(seed ^ shuffle::Mix64((static_cast<uint64_t>(producer) << 40) ^ sequence));
  size_t i = kRecordHeaderBytes;
  for (; i + 8 <= filler_end; i += 8) Store<uint64_t>(p + i, filler.Next());
  if (i < filler_end) {
    const uint64_t last = ToLittle(filler.Next());
    std::memcpy(p + i, &last, filler_end - i);
  }
  Store<uint32_t>(p + filler_end, shuffle::Crc32c(p, filler_end));
}

bool ParseGeneratedRecord(std::span<const uint8_t> record, GeneratedRecord* out) {
  const size_t size = record.size();
  if (size < kRecordHeaderBytes + kRecordCrcBytes) return false;
  const uint8_t* p = record.data();
  out->producer = Load<uint32_t>(p);
  out->sequence = Load<uint64_t>(p + 4);
  out->key = Load<uint64_t>(p + 12);
  out->size = Load<uint32_t>(p + 20);
  if (out->size != size) return false;
  const size_t crc_at = size - kRecordCrcBytes;
  return Load<uint32_t>(p + crc_at) == shuffle::Crc32c(p, crc_at);
}

SequenceTracker::Outcome SequenceTracker::Observe(uint64_t sequence) {
  if (!any_ || sequence > highest_) {
    const uint64_t first_new = any_ ? highest_ + 1 : 0;  // first sequence entering the window
    missing_ += sequence - first_new;
    if (sequence - first_new >= kWindow) {
      seen_.reset();
    } else {
      for (uint64_t s = first_new; s < sequence; ++s) seen_.reset(s % kWindow);
    }
    seen_.set(sequence % kWindow);
    any_ = true;
    highest_ = sequence;
    return Outcome::kInOrder;
  }
  if (highest_ - sequence >= kWindow) return Outcome::kDuplicate;  // too old to tell
  if (seen_.test(sequence % kWindow)) return Outcome::kDuplicate;
  seen_.set(sequence % kWindow);
  --missing_;
  return Outcome::kReordered;
}

bool LineKey(std::string_view line, char delimiter, uint32_t field, std::string_view* key) {
  size_t start = 0;
  for (uint32_t f = 0; f < field; ++f) {
    const size_t d = line.find(delimiter, start);
    if (d == std::string_view::npos) return false;
    start = d + 1;
  }
  const size_t end = line.find(delimiter, start);
  *key = line.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
  return true;
}

uint32_t ConsumerOfKey(std::string_view key, uint32_t consumers) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(key.data());
  return static_cast<uint32_t>(shuffle::HashBytes({bytes, key.size()}) % consumers);
}

}  // namespace sluice::daemon
