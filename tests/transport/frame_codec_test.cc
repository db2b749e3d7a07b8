// Tests for transport/frame_codec.{h,cc}: header encoding, one test per rejection reason, random
// splits of a mixed stream, the zero-copy PayloadWindow/CommitPayload path, discarded payloads
// and allocation-free decoding. The transport knows no schema: metadata here is opaque bytes.
#include "transport/frame_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "alloc_counter.h"
#include "frame_bytes.h"

namespace sluice::transport {
namespace {

using testutil::Bytes;

constexpr uint32_t kMaxPayload = 4096;
constexpr uint8_t kPayloadType = 5;  // stands in for BufferResponse
constexpr uint8_t kPlainType = 4;    // stands in for AddCredit

FrameLimits TestLimits() {
  FrameLimits limits;
  limits.max_payload = kMaxPayload;
  for (int t = 1; t <= 10; ++t) limits.known_types.set(t);
  limits.payload_types.set(kPayloadType);
  return limits;
}

Bytes Frame(uint8_t type, const Bytes& metadata, const Bytes& payload = {}) {
  return testutil::EncodeFrame(type, metadata, payload);
}

using testutil::RawHeader;

Bytes Pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  return b;
}

struct DecodedFrame {
  uint8_t type = 0;
  Bytes metadata;
  Bytes payload;
  bool has_payload_buffer = false;
  bool operator==(const DecodedFrame&) const = default;
};

// Records every frame; hands out a fresh unpooled Buffer for payload-carrying types. Behaviour
// can be changed per test through the public knobs.
class RecordingSink : public FrameSink {
 public:
  Admission OnFrame(const FrameHeader& header, std::span<const uint8_t> metadata) override {
    ++on_frame_calls;
    DecodedFrame f;
    f.type = header.type;
    f.metadata.assign(metadata.begin(), metadata.end());
    pending_ = f;
    if (reject.has_value()) return *reject;
    if (discard_first_byte.has_value() && !metadata.empty() && metadata[0] == *discard_first_byte) {
      frames.push_back(f);
      return Admission::Discard();
    }
    if (header.type != kPayloadType || no_buffer) {
      frames.push_back(f);
      return {};
    }
    const uint32_t capacity = buffer_capacity != 0 ? buffer_capacity : kMaxPayload;
    buffer::Buffer b = buffer::AllocateUnpooled(capacity);
    last_buffer_data = b.data();
    ++buffers_handed_out;
    return Admission(std::move(b));
  }

  Status OnPayload(buffer::Buffer payload) override {
    ++buffers_returned;
    DecodedFrame f = pending_;
    f.has_payload_buffer = true;
    f.payload.assign(payload.data(), payload.data() + payload.size());
    frames.push_back(std::move(f));
    if (fail_payload) return ProtocolError("sequence number 9 repeats 9 on receiver 4");
    return Status::Ok();
  }

  // Knobs.
  std::optional<Rejection> reject;
  std::optional<uint8_t> discard_first_byte;
  bool no_buffer = false;
  uint32_t buffer_capacity = 0;
  bool fail_payload = false;

  std::vector<DecodedFrame> frames;
  int on_frame_calls = 0;
  int buffers_handed_out = 0;
  int buffers_returned = 0;
  const uint8_t* last_buffer_data = nullptr;

 private:
  DecodedFrame pending_;
};

// Decodes `stream` in one Feed call.
std::vector<DecodedFrame> DecodeOneShot(const Bytes& stream) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  size_t consumed = 0;
  Status s = d.Feed(stream, &consumed);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(consumed, stream.size());
  EXPECT_TRUE(d.at_frame_boundary());
  EXPECT_TRUE(d.Finish().ok());
  EXPECT_EQ(sink.buffers_handed_out, sink.buffers_returned);
  return sink.frames;
}

// Feeds `bytes` and expects the decoder to fail with `reason` and a message containing
// `fragment`.
void ExpectRejected(const Bytes& bytes, FrameError reason, std::string_view fragment,
                    RecordingSink* sink = nullptr) {
  RecordingSink local;
  if (sink == nullptr) sink = &local;
  FrameDecoder d(sink, TestLimits());
  Status s = d.Feed(bytes);
  ASSERT_FALSE(s.ok());
  ASSERT_TRUE(d.failed());
  EXPECT_EQ(d.error(), reason) << FrameErrorName(d.error()) << ": " << s.ToString();
  EXPECT_NE(s.message().find(fragment), std::string::npos)
      << "message \"" << s.message() << "\" lacks \"" << fragment << "\"";
  EXPECT_TRUE(d.PayloadWindow().empty());
  EXPECT_EQ(d.FeedBytesWanted(), 0u);
}

// ---- Header codec ----

TEST(FrameHeaderTest, EncodesBigEndianLayout) {
  uint8_t out[kFrameHeaderSize];
  EncodeFrameHeader(out, 5, 0x0102, 0x00030405);
  const uint32_t length = 12 + 0x0102 + 0x00030405;
  const uint8_t expected[kFrameHeaderSize] = {static_cast<uint8_t>(length >> 24),
                                              static_cast<uint8_t>(length >> 16),
                                              static_cast<uint8_t>(length >> 8),
                                              static_cast<uint8_t>(length),
                                              'S',
                                              'L',
                                              'U',
                                              'C',
                                              1,
                                              5,
                                              0x01,
                                              0x02};
  EXPECT_EQ(0, std::memcmp(out, expected, kFrameHeaderSize));

  const FrameHeader h = DecodeFrameHeader(out);
  EXPECT_EQ(h.frame_length, length);
  EXPECT_EQ(h.magic, kMagic);
  EXPECT_EQ(h.version, kProtocolVersion);
  EXPECT_EQ(h.type, 5);
  EXPECT_EQ(h.metadata_length, 0x0102);
  EXPECT_EQ(h.payload_length(), 0x00030405u);
}

TEST(FrameHeaderTest, MaxFrameLengthIsSegmentPlusHeaderAndMetadata) {
  EXPECT_EQ(MaxFrameLength(32 * 1024), 32u * 1024 + 12 + 65535);
  EXPECT_EQ(MaxFrameLength(UINT32_MAX), uint64_t{UINT32_MAX} + 12 + 65535);
}

TEST(FrameHeaderTest, ErrorNamesAreDistinct) {
  std::vector<std::string_view> names;
  for (size_t i = 0; i < kFrameErrorCount; ++i) {
    const std::string_view name = FrameErrorName(static_cast<FrameError>(i));
    EXPECT_NE(name, "Unknown") << i;
    EXPECT_EQ(std::count(names.begin(), names.end(), name), 0) << name;
    names.push_back(name);
  }
  EXPECT_EQ(FrameErrorName(static_cast<FrameError>(kFrameErrorCount)), "Unknown");
}

TEST(FrameHeaderTest, CheckFrameHeaderAcceptsValid) {
  uint8_t out[kFrameHeaderSize];
  EncodeFrameHeader(out, kPayloadType, 65535, kMaxPayload);
  EXPECT_FALSE(CheckFrameHeader(DecodeFrameHeader(out), TestLimits()).has_value());
}

// ---- One test per rejection reason ----

TEST(FrameRejectTest, BadMagic) {
  ExpectRejected(RawHeader(20, 0x12345678, 1, kPlainType, 8), FrameError::kBadMagic,
                 "bad magic 0x12345678");
}

TEST(FrameRejectTest, BadMagicIsCheckedFirst) {
  // Everything is wrong; the magic is what a person needs to hear about.
  ExpectRejected(RawHeader(3, 0, 9, 200, 9999), FrameError::kBadMagic, "bad magic");
}

TEST(FrameRejectTest, UnsupportedVersion) {
  ExpectRejected(RawHeader(20, kMagic, 2, kPlainType, 8), FrameError::kUnsupportedVersion,
                 "protocol version 2 is not supported");
}

TEST(FrameRejectTest, UnknownType) {
  ExpectRejected(RawHeader(20, kMagic, 1, 77, 8), FrameError::kUnknownType,
                 "unknown message type 77");
  ExpectRejected(RawHeader(20, kMagic, 1, 0, 8), FrameError::kUnknownType,
                 "unknown message type 0");
}

TEST(FrameRejectTest, FrameTooShort) {
  ExpectRejected(RawHeader(11, kMagic, 1, kPlainType, 0), FrameError::kFrameTooShort,
                 "frame length 11 is shorter than the 12-byte frame header");
  ExpectRejected(RawHeader(0, kMagic, 1, kPlainType, 0), FrameError::kFrameTooShort,
                 "frame length 0");
}

TEST(FrameRejectTest, FrameTooLong) {
  const auto too_long = static_cast<uint32_t>(MaxFrameLength(kMaxPayload) + 1);
  ExpectRejected(RawHeader(too_long, kMagic, 1, kPayloadType, 8), FrameError::kFrameTooLong,
                 "frame length " + std::to_string(too_long) + " exceeds the maximum " +
                     std::to_string(MaxFrameLength(kMaxPayload)));
  ExpectRejected(RawHeader(UINT32_MAX, kMagic, 1, kPayloadType, 8), FrameError::kFrameTooLong,
                 "segment size 4096");
}

TEST(FrameRejectTest, MetadataOverrun) {
  ExpectRejected(RawHeader(20, kMagic, 1, kPlainType, 9), FrameError::kMetadataOverrun,
                 "metadata length 9 overruns the frame");
}

TEST(FrameRejectTest, UnexpectedPayload) {
  ExpectRejected(RawHeader(12 + 8 + 1, kMagic, 1, kPlainType, 8), FrameError::kUnexpectedPayload,
                 "message type 4 carries no payload, but the frame has 1 payload bytes");
}

TEST(FrameRejectTest, PayloadTooLarge) {
  ExpectRejected(RawHeader(12 + 8 + kMaxPayload + 1, kMagic, 1, kPayloadType, 8),
                 FrameError::kPayloadTooLarge, "payload of 4097 bytes");
}

TEST(FrameRejectTest, HeaderIsRejectedBeforeMetadataIsRead) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  Bytes stream = RawHeader(12 + 100, kMagic, 1, 99, 100);
  stream.resize(stream.size() + 100, 0xAB);
  size_t consumed = 0;
  EXPECT_FALSE(d.Feed(stream, &consumed).ok());
  EXPECT_EQ(consumed, kFrameHeaderSize);
  EXPECT_EQ(sink.on_frame_calls, 0);
  EXPECT_NE(d.status().message().find("frame at stream offset 0"), std::string::npos);
}

TEST(FrameRejectTest, InvalidMessageFromSink) {
  RecordingSink sink;
  sink.reject = Rejection{FrameError::kInvalidMessage,
                          ProtocolError("malformed AddCredit message (8 bytes)")};
  ExpectRejected(Frame(kPlainType, Pattern(8, 1)), FrameError::kInvalidMessage,
                 "malformed AddCredit", &sink);
  EXPECT_EQ(sink.on_frame_calls, 1);
}

TEST(FrameRejectTest, InvalidFieldFromSink) {
  RecordingSink sink;
  sink.reject = Rejection{FrameError::kInvalidField,
                          ProtocolError("AddCredit for receiver 3: credit 0 is not positive")};
  ExpectRejected(Frame(kPlainType, Pattern(8, 1)), FrameError::kInvalidField, "credit 0", &sink);
}

TEST(FrameRejectTest, SinkRejectionWithoutStatusStillFails) {
  RecordingSink sink;
  sink.reject = Rejection{FrameError::kInvalidField, Status::Ok()};
  ExpectRejected(Frame(kPlainType, Pattern(8, 1)), FrameError::kInvalidField, "rejected", &sink);
}

TEST(FrameRejectTest, NoBufferForPayload) {
  RecordingSink sink;
  sink.no_buffer = true;
  ExpectRejected(Frame(kPayloadType, Pattern(8, 1), Pattern(100, 2)),
                 FrameError::kNoBufferForPayload,
                 "100 payload bytes but the receiver supplied no buffer", &sink);
}

TEST(FrameRejectTest, BufferTooSmall) {
  RecordingSink sink;
  sink.buffer_capacity = 64;
  ExpectRejected(Frame(kPayloadType, Pattern(8, 1), Pattern(100, 2)), FrameError::kBufferTooSmall,
                 "payload of 100 bytes does not fit the receiver's buffer of 64 bytes", &sink);
  EXPECT_EQ(sink.buffers_returned, 0);
}

TEST(FrameRejectTest, PayloadRejected) {
  RecordingSink sink;
  sink.fail_payload = true;
  ExpectRejected(Frame(kPayloadType, Pattern(8, 1), Pattern(100, 2)), FrameError::kPayloadRejected,
                 "sequence number 9", &sink);
  EXPECT_EQ(sink.buffers_returned, 1);
}

TEST(FrameRejectTest, TruncatedFrame) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  Bytes stream = Frame(kPlainType, Pattern(8, 1));
  const Bytes second = Frame(kPayloadType, Pattern(8, 2), Pattern(300, 3));
  stream.insert(stream.end(), second.begin(), second.end() - 10);
  ASSERT_TRUE(d.Feed(stream).ok());
  EXPECT_FALSE(d.at_frame_boundary());
  EXPECT_FALSE(d.PayloadWindow().empty());
  Status s = d.Finish();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(d.error(), FrameError::kTruncatedFrame);
  EXPECT_NE(s.message().find("stream ended inside the frame at stream offset 20"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(d.PayloadWindow().empty());  // the partial buffer was released
}

TEST(FrameRejectTest, FinishAtFrameBoundaryIsOk) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  EXPECT_TRUE(d.Finish().ok());
  ASSERT_TRUE(d.Feed(Frame(kPlainType, Pattern(8, 1))).ok());
  EXPECT_TRUE(d.Finish().ok());
  EXPECT_FALSE(d.failed());
}

TEST(FrameRejectTest, FailedDecoderStaysFailed) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  Bytes stream = Frame(kPlainType, Pattern(8, 1));
  const Bytes bad = RawHeader(20, 0xBAD, 1, kPlainType, 8);
  stream.insert(stream.end(), bad.begin(), bad.end());
  size_t consumed = 0;
  const Status first = d.Feed(stream, &consumed);
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(consumed, stream.size());
  EXPECT_EQ(sink.frames.size(), 1u);
  EXPECT_NE(first.message().find("frame at stream offset 20"), std::string::npos);

  const Bytes good = Frame(kPlainType, Pattern(8, 1));
  const Status again = d.Feed(good, &consumed);
  EXPECT_EQ(consumed, 0u);
  EXPECT_EQ(again.message(), first.message());
  EXPECT_EQ(d.error(), FrameError::kBadMagic);
  EXPECT_EQ(sink.frames.size(), 1u);
  EXPECT_EQ(d.Finish().message(), first.message());
}

// ---- Accepted shapes ----

TEST(FrameDecoderTest, EmptyMetadataAndEmptyPayload) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  Bytes stream = Frame(kPlainType, {});
  const Bytes second = Frame(kPayloadType, Pattern(4, 1), {});
  stream.insert(stream.end(), second.begin(), second.end());
  ASSERT_TRUE(d.Feed(stream).ok());
  ASSERT_EQ(sink.frames.size(), 2u);
  EXPECT_TRUE(sink.frames[0].metadata.empty());
  EXPECT_FALSE(sink.frames[0].has_payload_buffer);
  // A Buffer returned for an empty payload comes back through OnPayload with size 0.
  EXPECT_TRUE(sink.frames[1].has_payload_buffer);
  EXPECT_TRUE(sink.frames[1].payload.empty());
  EXPECT_EQ(sink.buffers_handed_out, sink.buffers_returned);
  EXPECT_EQ(d.frames_decoded(), 2u);
  EXPECT_EQ(d.bytes_consumed(), stream.size());
}

TEST(FrameDecoderTest, LargestFrameIsAccepted) {
  const Bytes stream = Frame(kPayloadType, Pattern(kMaxMetadataLength, 1), Pattern(kMaxPayload, 2));
  ASSERT_EQ(stream.size(), MaxFrameLength(kMaxPayload));
  const auto frames = DecodeOneShot(stream);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].metadata, Pattern(kMaxMetadataLength, 1));
  EXPECT_EQ(frames[0].payload, Pattern(kMaxPayload, 2));
}

TEST(FrameDecoderTest, DiscardedPayloadIsSkipped) {
  RecordingSink sink;
  sink.discard_first_byte = 0xD0;
  FrameDecoder d(&sink, TestLimits());
  Bytes discarded_md = {0xD0, 1, 2, 3};
  Bytes stream = Frame(kPayloadType, discarded_md, Pattern(1000, 1));
  const Bytes kept = Frame(kPayloadType, {0x01, 2}, Pattern(50, 2));
  stream.insert(stream.end(), kept.begin(), kept.end());

  ASSERT_TRUE(d.Feed({stream.data(), 12 + 4 + 10}).ok());
  EXPECT_TRUE(d.PayloadWindow().empty());  // nothing to read into
  EXPECT_EQ(d.FeedBytesWanted(), 990u);
  ASSERT_TRUE(d.Feed({stream.data() + 26, stream.size() - 26}).ok());
  ASSERT_EQ(sink.frames.size(), 2u);
  EXPECT_FALSE(sink.frames[0].has_payload_buffer);
  EXPECT_EQ(sink.frames[1].payload, Pattern(50, 2));
  EXPECT_EQ(d.frames_decoded(), 2u);
}

// A long stream of mixed frames: plain frames, payload frames of all sizes, empty parts.
Bytes MixedStream(uint32_t seed, int frames) {
  std::mt19937 rng(seed);
  Bytes stream;
  for (int i = 0; i < frames; ++i) {
    const bool payload = rng() % 2 == 0;
    const uint8_t type = payload ? kPayloadType : static_cast<uint8_t>(1 + rng() % 4);
    size_t md = rng() % 64;
    if (rng() % 50 == 0) md = rng() % kMaxMetadataLength;
    if (rng() % 20 == 0) md = 0;
    size_t pl = 0;
    if (payload) {
      const uint32_t pick = rng() % 10;
      pl = pick == 0 ? 0 : pick == 1 ? kMaxPayload : rng() % kMaxPayload;
    }
    const Bytes f = Frame(type, Pattern(md, rng()), Pattern(pl, rng()));
    stream.insert(stream.end(), f.begin(), f.end());
  }
  return stream;
}

TEST(FrameSplitTest, RandomSplitsDecodeLikeOneShot) {
  const Bytes stream = MixedStream(7, 400);
  const auto expected = DecodeOneShot(stream);
  ASSERT_EQ(expected.size(), 400u);

  for (uint32_t seed = 1; seed <= 30; ++seed) {
    std::mt19937 rng(seed);
    RecordingSink sink;
    FrameDecoder d(&sink, TestLimits());
    size_t pos = 0;
    while (pos < stream.size()) {
      // Mostly small pieces, sometimes large ones, sometimes empty ones.
      size_t n;
      switch (rng() % 4) {
        case 0:
          n = rng() % 4;
          break;
        case 1:
          n = rng() % 64;
          break;
        case 2:
          n = rng() % 5000;
          break;
        default:
          n = rng() % 70000;
          break;
      }
      n = std::min(n, stream.size() - pos);
      size_t consumed = 0;
      Status s = d.Feed({stream.data() + pos, n}, &consumed);
      ASSERT_TRUE(s.ok()) << "seed " << seed << ": " << s.ToString();
      ASSERT_EQ(consumed, n);
      pos += n;
    }
    EXPECT_TRUE(d.Finish().ok());
    EXPECT_EQ(sink.frames, expected) << "seed " << seed;
    EXPECT_EQ(sink.buffers_handed_out, sink.buffers_returned);
  }
}

TEST(FrameSplitTest, OneByteAtATime) {
  const Bytes stream = MixedStream(11, 120);
  const auto expected = DecodeOneShot(stream);
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  for (size_t i = 0; i < stream.size(); ++i) {
    ASSERT_TRUE(d.Feed({stream.data() + i, 1}).ok()) << "byte " << i;
  }
  EXPECT_TRUE(d.at_frame_boundary());
  EXPECT_EQ(sink.frames, expected);
  EXPECT_EQ(d.bytes_consumed(), stream.size());
}

// ---- Zero-copy reads ----

// Plays a socket: header and metadata through small staging reads sized by FeedBytesWanted(),
// payloads read straight into PayloadWindow() in random pieces.
TEST(FramePayloadWindowTest, SocketStyleReadsDecodeLikeOneShot) {
  const Bytes stream = MixedStream(23, 300);
  const auto expected = DecodeOneShot(stream);

  std::mt19937 rng(5);
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  size_t pos = 0;
  size_t zero_copy_bytes = 0;
  while (pos < stream.size()) {
    std::span<uint8_t> window = d.PayloadWindow();
    if (!window.empty()) {
      EXPECT_EQ(d.FeedBytesWanted(), 0u);
      const size_t n = std::min<size_t>({window.size(), stream.size() - pos, 1 + rng() % 3000});
      std::memcpy(window.data(), stream.data() + pos, n);  // the "recv" into the segment
      ASSERT_TRUE(d.CommitPayload(n).ok());
      pos += n;
      zero_copy_bytes += n;
    } else {
      const size_t wanted = d.FeedBytesWanted();
      ASSERT_GT(wanted, 0u);
      const size_t n = std::min<size_t>(wanted, stream.size() - pos);
      size_t consumed = 0;
      ASSERT_TRUE(d.Feed({stream.data() + pos, n}, &consumed).ok());
      ASSERT_EQ(consumed, n);
      pos += n;
    }
  }
  EXPECT_TRUE(d.Finish().ok());
  EXPECT_EQ(sink.frames, expected);
  size_t payload_bytes = 0;
  for (const DecodedFrame& f : expected) payload_bytes += f.payload.size();
  EXPECT_EQ(zero_copy_bytes, payload_bytes);  // every payload byte went straight to its Buffer
}

TEST(FramePayloadWindowTest, WindowIsTheSinksBuffer) {
  RecordingSink sink;
  FrameDecoder d(&sink, TestLimits());
  EXPECT_TRUE(d.PayloadWindow().empty());
  EXPECT_EQ(d.FeedBytesWanted(), kFrameHeaderSize);
  const Bytes payload = Pattern(300, 9);
  const Bytes frame = Frame(kPayloadType, Pattern(20, 1), payload);

  ASSERT_TRUE(d.Feed({frame.data(), 5}).ok());
  EXPECT_EQ(d.FeedBytesWanted(), kFrameHeaderSize - 5);
  ASSERT_TRUE(d.Feed({frame.data() + 5, 7}).ok());
  EXPECT_EQ(d.FeedBytesWanted(), 20u);
  // Feed may also carry the first payload bytes; the window is what is left.
  ASSERT_TRUE(d.Feed({frame.data() + 12, 20 + 100}).ok());
  std::span<uint8_t> window = d.PayloadWindow();
  ASSERT_EQ(window.size(), 200u);
  EXPECT_EQ(window.data(), sink.last_buffer_data + 100);
  EXPECT_EQ(d.FeedBytesWanted(), 0u);

  std::memcpy(window.data(), payload.data() + 100, 150);
  ASSERT_TRUE(d.CommitPayload(150).ok());
  ASSERT_TRUE(d.CommitPayload(0).ok());
  EXPECT_EQ(d.PayloadWindow().size(), 50u);
  EXPECT_TRUE(sink.frames.empty());
  std::memcpy(d.PayloadWindow().data(), payload.data() + 250, 50);
  ASSERT_TRUE(d.CommitPayload(50).ok());
  ASSERT_EQ(sink.frames.size(), 1u);
  EXPECT_EQ(sink.frames[0].payload, payload);
  EXPECT_TRUE(d.PayloadWindow().empty());
  EXPECT_TRUE(d.at_frame_boundary());
  EXPECT_EQ(d.bytes_consumed(), frame.size());
}

TEST(FramePayloadWindowDeathTest, CommitBeyondWindowAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        RecordingSink sink;
        FrameDecoder d(&sink, TestLimits());
        (void)d.CommitPayload(1);
      },
      "CommitPayload beyond the payload window");
}

// ---- Allocation-free steady state ----

// Hands the same Buffer back and forth, as a channel's exclusive buffers would.
class ReusingSink : public FrameSink {
 public:
  ReusingSink() : spare_(buffer::AllocateUnpooled(kMaxPayload)) {}
  Admission OnFrame(const FrameHeader& header, std::span<const uint8_t>) override {
    ++frames;
    if (header.type != kPayloadType) return {};
    return std::move(spare_);
  }
  Status OnPayload(buffer::Buffer payload) override {
    bytes += payload.size();
    spare_ = std::move(payload);
    return Status::Ok();
  }
  int frames = 0;
  size_t bytes = 0;

 private:
  buffer::Buffer spare_;
};

// The metadata buffer grows (in powers of two) to the largest metadata seen, a few times at
// most; after that, decoding allocates nothing.
TEST(FrameDecoderTest, DecodingAllocatesNothingOnceWarm) {
  const Bytes stream = MixedStream(31, 200);
  ReusingSink sink;
  FrameDecoder d(&sink, TestLimits());
  auto feed = [&] {
    size_t pos = 0;
    Status s;
    while (pos < stream.size() && s.ok()) {
      const size_t n = std::min<size_t>(1000, stream.size() - pos);
      s = d.Feed({stream.data() + pos, n});
      pos += n;
    }
    return s;
  };
  g_allocations = 0;
  g_counting = true;
  Status s = feed();
  g_counting = false;
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_LE(g_allocations.load(), 9u) << "growth 256 B .. 64 KiB";
  EXPECT_GT(d.metadata_capacity(), 0u);
  g_allocations = 0;
  g_counting = true;
  s = feed();
  g_counting = false;
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(g_allocations.load(), 0u);
  EXPECT_EQ(sink.frames, 400);
}

// Metadata over set_max_metadata (a connection before its handshake) fails with FrameTooLong
// before a byte of it is buffered.
TEST(FrameDecoderTest, MetadataOverTheHandshakeLimitIsRefused) {
  ReusingSink sink;
  FrameDecoder d(&sink, TestLimits());
  d.set_max_metadata(8192);
  Status s = d.Feed(Frame(kPlainType, Bytes(8192, 1)));
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(d.metadata_capacity(), 8192u);
  s = d.Feed(RawHeader(12 + 8193, kMagic, kProtocolVersion, kPlainType, 8193));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(d.error(), FrameError::kFrameTooLong);
  EXPECT_NE(s.message().find("8193 bytes of metadata, more than the 8192 allowed"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(d.metadata_capacity(), 8192u);
  EXPECT_EQ(sink.frames, 1);
}

}  // namespace
}  // namespace sluice::transport
