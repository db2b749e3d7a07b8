// libFuzzer target: arbitrary bytes through FrameDecoder, with a sink that checks every message
// the way the shuffle layer will (schema::CheckMessage, payload_size against the frame) and
// reads payloads into unpooled Buffers. Must never crash, hang, leak or hit undefined behaviour.
//
// Input layout: 4 control bytes, then the stream. Control byte 0 picks how payloads are read
// (Feed or the zero-copy PayloadWindow) and how the sink answers; bytes 1..3 are split points.
//
// Seed mode: with SLUICE_FUZZ_WRITE_SEEDS=<dir> set, the binary writes a few valid streams into
// <dir> and exits (tools/fuzz.sh uses it to seed the corpus).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "schema/messages.h"
#include "transport/frame_codec.h"

namespace {

using sluice::Status;
namespace buffer = sluice::buffer;
namespace schema = sluice::schema;
namespace transport = sluice::transport;

constexpr uint32_t kMaxPayload = 1024;
constexpr size_t kControlBytes = 4;

transport::FrameLimits Limits() {
  transport::FrameLimits limits;
  limits.max_payload = kMaxPayload;
  limits.known_types = schema::KnownMessageTypes();
  limits.payload_types = schema::PayloadMessageTypes();
  return limits;
}

class CheckingSink : public transport::FrameSink {
 public:
  explicit CheckingSink(uint8_t mode) : mode_(mode) {}

  transport::Admission OnFrame(const transport::FrameHeader& header,
                               std::span<const uint8_t> metadata) override {
    const auto type = static_cast<schema::MessageType>(header.type);
    Status s = schema::CheckMessage(type, metadata, kMaxPayload);
    if (!s.ok()) {
      const bool malformed = !schema::VerifyMessage(type, metadata).ok();
      return transport::Rejection{
          malformed ? transport::FrameError::kInvalidMessage : transport::FrameError::kInvalidField,
          std::move(s)};
    }
    const uint32_t payload = header.payload_length();
    if (type != schema::MessageType::kBufferResponse) return {};
    auto r = schema::ParseBufferResponse(metadata, kMaxPayload);
    if (r.value()->payload_size() != payload) {
      return transport::Rejection{transport::FrameError::kInvalidField,
                                  sluice::ProtocolError("payload_size does not match the frame")};
    }
    if (mode_ & 0x02) return transport::Admission::Discard();
    if (payload == 0 && (mode_ & 0x04)) return {};
    // Sometimes one byte too small, to exercise kBufferTooSmall.
    const uint32_t capacity = (mode_ & 0x08) && payload > 0 ? payload - 1 : payload;
    return transport::Admission(buffer::AllocateUnpooled(capacity));
  }

  Status OnPayload(buffer::Buffer payload) override {
    if (!payload.valid()) std::abort();
    // Touch every byte so ASan sees reads of anything the decoder claims to have filled.
    uint32_t sum = 0;
    for (uint8_t b : payload.bytes()) sum += b;
    checksum_ += sum;
    if ((mode_ & 0x10) && sum % 7 == 0) return sluice::ProtocolError("payload refused");
    return Status::Ok();
  }

 private:
  uint8_t mode_;
  uint32_t checksum_ = 0;
};

// Reads `stream` the way a socket would: payloads straight into PayloadWindow(), everything else
// through Feed() in pieces no larger than `chunk`.
void ZeroCopyReads(transport::FrameDecoder& d, std::span<const uint8_t> stream, size_t chunk) {
  size_t pos = 0;
  while (pos < stream.size() && !d.failed()) {
    std::span<uint8_t> window = d.PayloadWindow();
    if (!window.empty()) {
      const size_t n = std::min({window.size(), stream.size() - pos, chunk});
      std::memcpy(window.data(), stream.data() + pos, n);
      (void)d.CommitPayload(n);
      pos += n;
      continue;
    }
    const size_t wanted = d.FeedBytesWanted();
    if (wanted == 0) std::abort();  // neither a window nor a want: the decoder is stuck
    const size_t n = std::min({wanted, stream.size() - pos, chunk});
    size_t consumed = 0;
    (void)d.Feed(stream.subspan(pos, n), &consumed);
    if (consumed != n && !d.failed()) std::abort();
    pos += consumed;
    if (consumed == 0) break;
  }
}

// ---- Seed mode ----

std::vector<uint8_t> FrameOf(schema::MessageType type, std::span<const uint8_t> metadata,
                             std::span<const uint8_t> payload = {}) {
  std::vector<uint8_t> out(transport::kFrameHeaderSize);
  transport::EncodeFrameHeader(
      std::span<uint8_t, transport::kFrameHeaderSize>(out.data(), transport::kFrameHeaderSize),
      static_cast<uint8_t>(type), static_cast<uint16_t>(metadata.size()),
      static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), metadata.begin(), metadata.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void WriteSeed(const std::string& dir, const std::string& name, uint8_t mode,
               const std::vector<uint8_t>& stream) {
  std::vector<uint8_t> input = {mode, 0x40, 0x80, 0xC0};
  input.insert(input.end(), stream.begin(), stream.end());
  const std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write seed %s\n", path.c_str());
    std::exit(1);
  }
  std::fwrite(input.data(), 1, input.size(), f);
  std::fclose(f);
}

void WriteSeeds(const std::string& dir) {
  schema::MessageBuilder b;
  using T = schema::MessageType;
  const uint8_t nonce[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> payload(300);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 13);

  std::vector<std::vector<uint8_t>> frames;
  frames.push_back(
      FrameOf(T::kHello, b.Hello({.segment_size = 4096, .node_name = "a", .nonce = nonce})));
  frames.push_back(FrameOf(
      T::kHelloAck,
      b.HelloAck({.segment_size = 4096, .node_name = "b", .nonce = nonce, .auth_proof = nonce})));
  frames.push_back(FrameOf(T::kPartitionRequest, b.PartitionRequest("job/p-1", 3, 17, 2)));
  frames.push_back(FrameOf(T::kAddCredit, b.AddCredit(17, 4)));
  frames.push_back(
      FrameOf(T::kBufferResponse,
              b.BufferResponse(
                  {.receiver_id = 17, .sequence_number = 0, .backlog = 3, .payload_size = 300}),
              payload));
  frames.push_back(
      FrameOf(T::kBufferResponse, b.BufferResponse({.receiver_id = 17,
                                                    .sequence_number = 1,
                                                    .data_type = buffer::DataType::kEndOfPartition,
                                                    .payload_size = 0})));
  frames.push_back(FrameOf(T::kBacklogAnnouncement, b.BacklogAnnouncement(17, 5)));
  frames.push_back(FrameOf(T::kCancelPartitionRequest, b.CancelPartitionRequest(17)));
  frames.push_back(FrameOf(T::kCloseRequest, b.CloseRequest()));
  frames.push_back(FrameOf(T::kErrorResponse,
                           b.ErrorResponse(sluice::fb::ErrorCode::PartitionNotFound, "no", 17)));
  frames.push_back(FrameOf(T::kHeartbeat, b.Heartbeat(123456789)));

  std::vector<uint8_t> all;
  for (size_t i = 0; i < frames.size(); ++i) {
    WriteSeed(dir, "frame-" + std::to_string(i), 0x00, frames[i]);
    all.insert(all.end(), frames[i].begin(), frames[i].end());
  }
  WriteSeed(dir, "stream-feed", 0x00, all);
  WriteSeed(dir, "stream-zero-copy", 0x01, all);
  WriteSeed(dir, "stream-discard", 0x02, all);
  WriteSeed(dir, "stream-small-buffer", 0x08, all);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (const char* dir = std::getenv("SLUICE_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kControlBytes) return 0;
  const uint8_t mode = data[0];
  const std::span<const uint8_t> stream(data + kControlBytes, size - kControlBytes);

  CheckingSink sink(mode);
  transport::FrameDecoder decoder(&sink, Limits());
  if (mode & 0x01) {
    // Chunk size from the split bytes: 1..256.
    ZeroCopyReads(decoder, stream, size_t{data[1]} + 1);
  } else {
    std::array<size_t, 5> cuts = {0, stream.size() * data[1] / 256, stream.size() * data[2] / 256,
                                  stream.size() * data[3] / 256, stream.size()};
    std::sort(cuts.begin(), cuts.end());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      size_t consumed = 0;
      const Status s = decoder.Feed(stream.subspan(cuts[i], cuts[i + 1] - cuts[i]), &consumed);
      if (s.ok() && consumed != cuts[i + 1] - cuts[i]) std::abort();
      if (!s.ok()) break;
    }
  }
  if (decoder.failed()) {
    // A failure must carry a reason and a message, and stick.
    if (static_cast<size_t>(decoder.error()) >= transport::kFrameErrorCount) std::abort();
    if (decoder.status().message().empty()) std::abort();
    if (!decoder.PayloadWindow().empty()) std::abort();
  } else {
    (void)decoder.Finish();
  }
  return 0;
}
