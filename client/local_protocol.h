// The local writer protocol: how a writer process talks to the sluiced on its host over the
// Unix domain socket in the state directory (<state_dir>/sluiced-<port>.sock). docs/protocol.md,
// "Local writer protocol", is the reference; this header is its codec.
//
// Every message is one frame, integers little-endian (both ends are on one host):
//
//   offset  size  field
//   0       4     body length B (the header not included), at most kMaxLocalBody
//   4       1     message type (kFirstLocalType..kLastLocalType)
//   5       3     zero
//   8       B     body (layout per type below)
//
//   writer                                             daemon
//     | Hello (fb Hello)                                 |  64
//     | <- HelloAck (fb HelloAck)                        |  65   shuffle/handshake.h exchange
//     | AuthResponse (fb AuthResponse)                   |  66
//     | OpenWriter{partition, attempt, subpartitions,    |  67
//     |            mode, credit, job, token}             |
//     | <- Grant{segment_size, slots} + memfd (SCM_RIGHTS)| 68
//     | Filled{subpartition, slot, size}  (many)         |  69   the slot goes to the daemon
//     | <- Credit{count, slot...}         (many)         |  70   the slots come back
//     | Commit                                           |  71
//     | <- CommitAck{encoded MapOutput}                  |  72
//     | Abort{reason}                                    |  73   (instead of Commit)
//     | <- Error{status code, message}                   |  74   the writer has failed
//
// Thread-safety: the free functions are thread-safe; LocalFrameParser is thread-compatible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/buffer/status.h"

namespace sluice::client::local {

enum class LocalType : uint8_t {
  kHello = 64,
  kHelloAck = 65,
  kAuthResponse = 66,
  kOpenWriter = 67,
  kGrant = 68,
  kFilled = 69,
  kCredit = 70,
  kCommit = 71,
  kCommitAck = 72,
  kAbort = 73,
  kError = 74,
};
inline constexpr uint8_t kFirstLocalType = 64;
inline constexpr uint8_t kLastLocalType = 74;  // 75..95 stay reserved for this protocol
std::string_view LocalTypeName(uint8_t type);

inline constexpr size_t kLocalHeaderBytes = 8;
inline constexpr uint32_t kMaxLocalBody = 64u << 10;
inline constexpr size_t kMaxJobIdLength = 256;
inline constexpr size_t kMaxTokenLength = 256;
inline constexpr size_t kMaxReasonLength = 4096;
// Write credit (arena slots) a writer may ask for; 0 asks for the daemon's default.
inline constexpr uint32_t kMaxWriterCredit = 1024;
inline constexpr uint32_t kMaxRetentionSeconds = 365 * 24 * 3600;  // as the daemon's key
inline constexpr uint32_t kMaxSubpartitions = 1u << 16;

// The partition mode a writer opens (the store's PartitionMode on the daemon side).
enum class WireMode : uint8_t { kPipelined = 0, kBlocking = 1 };

struct OpenWriterMsg {
  std::string job;
  std::string token;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  WireMode mode = WireMode::kPipelined;
  uint32_t credit = 0;  // slots asked for; 0 = the daemon's default
  // The job's retention in seconds (its first writer sets it); 0 = the daemon's `retention`.
  // Optional on the wire: a trailing u32 after the token.
  uint32_t retention_s = 0;
};
struct GrantMsg {
  uint32_t segment_size = 0;
  uint32_t slots = 0;
};
struct FilledMsg {
  uint32_t subpartition = 0;
  uint32_t slot = 0;
  uint32_t size = 0;
};
struct ErrorMsg {
  StatusCode code = StatusCode::kInternal;
  std::string message;
};

// One frame: header + body, ready to send.
std::vector<uint8_t> EncodeFrame(LocalType type, std::span<const uint8_t> body);
std::vector<uint8_t> EncodeOpenWriter(const OpenWriterMsg& m);
std::vector<uint8_t> EncodeGrant(const GrantMsg& m);
// Writes one Filled frame (kLocalHeaderBytes + 12 bytes) into `out` without allocating.
inline constexpr size_t kFilledFrameBytes = kLocalHeaderBytes + 12;
void EncodeFilled(const FilledMsg& m, uint8_t out[kFilledFrameBytes]);
std::vector<uint8_t> EncodeCredit(std::span<const uint32_t> slots);
// The same into `out` (replaced; no allocation once it has grown).
void EncodeCreditInto(std::span<const uint32_t> slots, std::vector<uint8_t>* out);
// Commit (empty), CommitAck (the encoded MapOutput), Abort (the reason, cut to
// kMaxReasonLength).
std::vector<uint8_t> EncodeText(LocalType type, std::string_view text);
std::vector<uint8_t> EncodeError(const Status& status);

// Body parsers: ProtocolError naming the message and the field for anything malformed.
Result<OpenWriterMsg> ParseOpenWriter(std::span<const uint8_t> body);
Result<GrantMsg> ParseGrant(std::span<const uint8_t> body);
Result<FilledMsg> ParseFilled(std::span<const uint8_t> body);
Result<std::vector<uint32_t>> ParseCredit(std::span<const uint8_t> body);
// The same into `out` (replaced; no allocation once it has grown).
Status ParseCreditInto(std::span<const uint8_t> body, std::vector<uint32_t>* out);
Result<std::string> ParseText(LocalType type, std::span<const uint8_t> body, size_t max_length);
Result<ErrorMsg> ParseError(std::span<const uint8_t> body);
// The Status an Error message stands for.
Status ToStatus(const ErrorMsg& m);

// Checks that a subpartition's stream of buffers is framed as RecordSerializer frames it
// (4-byte big-endian length, then the bytes, records spanning buffers), one buffer at a time,
// before the daemon's store sees it. Thread-compatible; one per subpartition of a writer.
class RecordFraming {
 public:
  explicit RecordFraming(uint32_t max_record = 1u << 30) : max_record_(max_record) {}
  // Walks one buffer. Returns how many records start in it, or a ProtocolError naming the
  // offset and the length when a length prefix is over the limit.
  Result<uint32_t> Check(std::span<const uint8_t> buffer);
  // True when the stream ends at a record boundary (no record or prefix half written).
  bool AtBoundary() const { return need_ == 0 && have_ == 0; }

 private:
  Status TooLong(uint32_t len, size_t offset) const;
  uint32_t max_record_;
  uint64_t need_ = 0;  // bytes of the current record still to come
  uint32_t have_ = 0;  // bytes of a split length prefix seen so far
  uint8_t prefix_[4] = {};
};

// Splits a byte stream into frames, checking each header before its body is awaited:
// an unknown type or a body over kMaxLocalBody is a ProtocolError.
class LocalFrameParser {
 public:
  struct Frame {
    uint8_t type = 0;
    std::span<const uint8_t> body;  // valid until the next call
  };
  // Room to read into (at least `min` bytes); call Commit(n) with what arrived.
  std::span<uint8_t> WritableTail(size_t min = 4096);
  void Commit(size_t n) { used_ += n; }
  // The next complete frame, nullopt when more bytes are needed, or an error.
  Result<std::optional<Frame>> Next();
  // Bytes received but not yet returned as frames.
  size_t buffered() const { return used_ - start_; }

 private:
  std::vector<uint8_t> buf_;
  size_t start_ = 0;
  size_t used_ = 0;
};

// Sends one frame on a stream socket (MSG_NOSIGNAL, retrying EINTR and short writes), with
// `pass_fd` attached as SCM_RIGHTS when >= 0. On a full non-blocking socket it waits up to
// 10 s for room. IoError naming `peer` on failure.
Status SendFrame(int fd, std::span<const uint8_t> frame, const std::string& peer, int pass_fd = -1);
// The same without waiting: a socket without room for the whole frame is ResourceExhausted
// naming `peer` (what is left of the stream is then unusable: close it). For a server thread
// that serves many peers, whose peers each have only a few small frames unread at a time.
Status SendFrameNoWait(int fd, std::span<const uint8_t> frame, const std::string& peer,
                       int pass_fd = -1);

// Reads frames from a stream socket into a reused buffer (a few frames per recvmsg).
// Descriptors passed with SCM_RIGHTS are kept for TakeFd() when `accept_fds`, otherwise closed
// at once and reported as a ProtocolError (a writer never sends one to the daemon).
// Thread-compatible; does not own the socket.
class FrameReader {
 public:
  struct Frame {
    uint8_t type = 0;
    std::span<const uint8_t> body;  // valid until the next call to Next
  };
  FrameReader(int fd, std::string peer, bool accept_fds);
  ~FrameReader();
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  // The next frame. With `wait`, blocks until one is complete; without, returns nullopt when
  // none is complete and the socket has nothing more now (the socket may be non-blocking).
  // ClosedError naming the peer at end of stream (also in the middle of a frame), IoError on
  // a socket error, ProtocolError for a bad header or an unexpected descriptor.
  Result<std::optional<Frame>> Next(bool wait);
  // The oldest descriptor received and not yet taken (the caller owns it), or -1.
  int TakeFd();

 private:
  // One recvmsg into the parser: >0 bytes, 0 nothing now (non-blocking), or an error.
  Result<size_t> ReceiveSome(bool wait);

  const int fd_;
  const std::string peer_;
  const bool accept_fds_;
  LocalFrameParser parser_;
  std::vector<int> fds_;
};

}  // namespace sluice::client::local
