// Frame codec microbenchmarks: header encode, decode + check, and a FrameDecoder cutting a
// stream of frames (12-byte header, 24 bytes of metadata, a payload) into pool segments.
//
//   sluice_frame_codec_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "transport/frame_codec.h"

namespace sluice::transport {
namespace {

constexpr uint8_t kDataType = 2;
constexpr uint16_t kMetadata = 24;
constexpr uint32_t kSegment = 32u << 10;

FrameLimits Limits() {
  FrameLimits l;
  l.max_payload = kSegment;
  l.known_types.set(kDataType);
  l.payload_types.set(kDataType);
  return l;
}

void BM_EncodeFrameHeader(benchmark::State& state) {
  std::array<uint8_t, kFrameHeaderSize> out{};
  uint32_t payload = 0;
  for (auto _ : state) {
    EncodeFrameHeader(out, kDataType, kMetadata, payload++ & 0x7FFF);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_EncodeFrameHeader);

void BM_DecodeAndCheckFrameHeader(benchmark::State& state) {
  std::array<uint8_t, kFrameHeaderSize> in{};
  EncodeFrameHeader(in, kDataType, kMetadata, 1000);
  const FrameLimits limits = Limits();
  for (auto _ : state) {
    const FrameHeader h = DecodeFrameHeader(in);
    benchmark::DoNotOptimize(CheckFrameHeader(h, limits).has_value());
  }
}
BENCHMARK(BM_DecodeAndCheckFrameHeader);

// Takes each payload into a segment and lets it go at once.
class PoolSink : public FrameSink {
 public:
  explicit PoolSink(buffer::NetworkBufferPool* pool) : pool_(pool) {}
  Admission OnFrame(const FrameHeader& h, std::span<const uint8_t>) override {
    if (h.payload_length() == 0) return {};
    return buffer::Buffer::Wrap(pool_->TryRequestSegment(), pool_->direct_recycler());
  }
  Status OnPayload(buffer::Buffer payload) override {
    bytes_ += payload.size();
    return Status::Ok();
  }
  uint64_t bytes() const { return bytes_; }

 private:
  buffer::NetworkBufferPool* const pool_;
  uint64_t bytes_ = 0;
};

// A stream of 64 frames with Arg payload bytes each, fed in 64 KiB reads (as the connection's
// staging reads would; payloads are copied by Feed, not read in place).
void BM_FrameDecoderFeed(benchmark::State& state) {
  const auto payload = static_cast<uint32_t>(state.range(0));
  buffer::NetworkBufferPoolOptions po;
  po.segment_size = kSegment;
  po.network_memory = 8 * kSegment;
  auto pool = buffer::NetworkBufferPool::Create(po).value();
  std::vector<uint8_t> stream;
  for (int f = 0; f < 64; ++f) {
    std::array<uint8_t, kFrameHeaderSize> h{};
    EncodeFrameHeader(h, kDataType, kMetadata, payload);
    stream.insert(stream.end(), h.begin(), h.end());
    stream.insert(stream.end(), kMetadata, 0x11);
    stream.insert(stream.end(), payload, 0x22);
  }
  PoolSink sink(pool.get());
  FrameDecoder decoder(&sink, Limits());
  for (auto _ : state) {
    for (size_t off = 0; off < stream.size(); off += 65536) {
      const size_t n = std::min<size_t>(65536, stream.size() - off);
      if (!decoder.Feed(std::span<const uint8_t>(stream.data() + off, n)).ok()) {
        state.SkipWithError(decoder.status().ToString().c_str());
        return;
      }
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * stream.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * 64));
}
BENCHMARK(BM_FrameDecoderFeed)->Arg(0)->Arg(100)->Arg(4096)->Arg(32768);

}  // namespace
}  // namespace sluice::transport
