// Writer: one map task's output, written through the sluiced on this host (issue 13).
//
// The writer connects to the daemon's local socket (<state_dir>/sluiced-<port>.sock), authenticates
// with the cluster secret (the shuffle handshake), opens (job, partition, attempt) and receives
// its write credit: K segments of a shared-memory arena the daemon made for this writer alone
// (a memfd passed with SCM_RIGHTS). Records are framed straight into those segments exactly as
// shuffle's RecordSerializer frames them (a 4-byte big-endian length, then the bytes; a record
// may span segments); a full segment is handed to the daemon by slot number, without a copy,
// and comes back as credit once the daemon's store has sent, spilled or dropped it. A writer
// with no free segment waits: write credit is its backpressure.
//
//   Writer::Open -> Write / Claim+CommitClaim ... -> Commit (MapOutput) | Abort
//
// A writer that is destroyed, or whose process dies, before Commit fails its map output
// (readers get ProducerFailed naming the job and partition); nothing uncommitted is ever read.
//
// Thread-compatible: one thread uses a Writer at a time. Owns its socket and its mapping.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/segment_arena.h"
#include "sluice/buffer/status.h"
#include "sluice/client/map_output.h"
#include "sluice/shuffle/record_serializer.h"

namespace sluice::client {

namespace local {
class FrameReader;
}

enum class WriteMode : uint8_t {
  kPipelined = 0,  // readers stream while the writer writes; backpressure reaches the writer
  kBlocking = 1,   // retained after Commit until released or its retention passes
};
// "pipelined" / "blocking" -> WriteMode; InvalidArgument naming the value otherwise.
Result<WriteMode> ParseWriteMode(std::string_view text);

// The local socket of the daemon whose data port is `port`: "<state_dir>/sluiced-<port>.sock",
// so that daemons sharing a state directory on one host each have their own.
inline constexpr uint32_t kDefaultDaemonPort = 7070;
std::string LocalSocketPath(const std::string& state_dir, uint32_t port = kDefaultDaemonPort);

struct WriterOptions {
  // The daemon's local socket. Empty: <state_dir>/sluiced-<port>.sock.
  std::string socket_path;
  uint32_t port = kDefaultDaemonPort;  // the daemon's data port, naming its default socket
  // The daemon's state directory: the socket's default place and, when `secret` is empty,
  // where the secret is read from (<state_dir>/auth_secret).
  std::string state_dir;
  std::string secret;      // the cluster's shared secret (>= 16 bytes)
  std::string job;         // created by its first writer
  std::string token;       // the job's token (every writer of a job must present the same)
  uint32_t partition = 0;  // the map task
  uint32_t attempt = 0;    // its attempt: readers read exactly the committed attempts named
  uint32_t subpartitions = 1;
  WriteMode mode = WriteMode::kPipelined;
  // How long the daemon keeps the job's data after its last write or read (blocking outputs);
  // the job's first writer sets it. 0: the daemon's `retention` (default 1 h). At most 365 days.
  std::chrono::seconds retention{0};
  // Segments of write credit to ask for; 0: the daemon's default (writer_credit).
  uint32_t credit = 0;
  // How long to wait for credit before failing with Timeout; 0: wait as long as it takes.
  std::chrono::milliseconds credit_timeout{0};
};

struct WriterStats {
  uint64_t records = 0;
  uint64_t bytes = 0;          // record bytes (without length prefixes)
  uint64_t buffers = 0;        // segments handed to the daemon
  uint64_t credit_waits = 0;   // times the writer had to wait for a segment
};

class Writer {
 public:
  // Connects, authenticates and opens the writer. Errors name the socket path, the job and
  // partition, and the fix (PermissionDenied for a wrong secret or token; ResourceExhausted
  // when the daemon's network memory cannot hold the credit).
  static Result<std::unique_ptr<Writer>> Open(const WriterOptions& options);
  // Aborts (reason "writer destroyed before Commit") unless committed or aborted already.
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Appends one record to `subpartition` (may wait for credit). A failed writer returns its
  // first error from every call.
  Status Write(uint32_t subpartition, std::span<const uint8_t> record);
  Status Write(uint32_t subpartition, std::string_view record) {
    return Write(subpartition, {reinterpret_cast<const uint8_t*>(record.data()), record.size()});
  }
  // In place: `size` bytes of the current segment of `subpartition` to write a record into;
  // CommitClaim() makes it a record of `size` bytes, CommitClaim(n) one of n <= size bytes.
  // REQUIRES: size <= max_claim() (InvalidArgument otherwise: use Write); one claim at a time.
  Result<std::span<uint8_t>> Claim(uint32_t subpartition, uint32_t size) {
    // Fast path: an open writer whose current segment of `subpartition` has room.
    if (state_ == State::kOpen && !claimed_ && subpartition < current_.size() &&
        size <= max_claim()) {
      buffer::Buffer& b = current_[subpartition];
      if (b && b.capacity() - b.size() >= shuffle::kRecordLengthBytes + size) {
        return StartClaim(b, subpartition, size);
      }
    }
    return ClaimSlow(subpartition, size);
  }
  Status CommitClaim() { return CommitClaim(claim_size_); }
  Status CommitClaim(uint32_t used) {
    if (!claimed_ || used > claim_size_) return CommitClaimError(used);
    claimed_ = false;
    buffer::Buffer& b = current_[claim_subpartition_];
    shuffle::StoreRecordLength(b.data() + b.size(), used);
    b.SetSize(b.size() + static_cast<uint32_t>(shuffle::kRecordLengthBytes) + used);
    ++stats_.records;
    stats_.bytes += used;
    if (b.size() == b.capacity()) HandOver(claim_subpartition_);
    return Status::Ok();
  }
  // The largest Claim: a segment minus the length prefix.
  uint32_t max_claim() const { return segment_size_ - 4; }

  // Hands over every partly filled segment and commits atomically: the MapOutput to give the
  // readers. Every later call fails.
  Result<MapOutput> Commit();
  // Fails the map output with `reason` (readers get ProducerFailed). Idempotent.
  Status Abort(std::string_view reason);

  uint32_t segment_size() const { return segment_size_; }
  uint32_t credit() const { return slots_; }
  const WriterStats& stats() const { return stats_; }
  const std::string& socket_path() const { return path_; }

 private:
  class NoopListener final : public buffer::SlotListener {
    void SlotRecycled(uint32_t) override {}
  };
  enum class State { kOpen, kCommitted, kAborted, kFailed };

  Writer(const WriterOptions& options, std::string path, int fd);
  std::span<uint8_t> StartClaim(buffer::Buffer& b, uint32_t subpartition, uint32_t size) {
    claimed_ = true;
    claim_subpartition_ = subpartition;
    claim_size_ = size;
    return {b.data() + b.size() + shuffle::kRecordLengthBytes, size};
  }
  Result<std::span<uint8_t>> ClaimSlow(uint32_t subpartition, uint32_t size);
  Status CommitClaimError(uint32_t used) const;
  Status Handshake(const std::string& secret);
  Status OpenRemote();
  Status Fail(Status status);
  Status CheckUsable(uint32_t subpartition) const;
  // Gives `subpartition` a fresh segment, waiting for credit when none is free.
  Status AcquireSlot(uint32_t subpartition);
  // Hands the subpartition's current segment to the daemon (queues a Filled).
  void HandOver(uint32_t subpartition);
  // Sends the queued Filled messages.
  Status SendFilled();
  // Reads daemon messages; with `wait`, at least one (up to the credit timeout).
  Status ReadMessages(bool wait);
  Status OnCredit(std::span<const uint8_t> body);

  const WriterOptions options_;
  const std::string path_;
  int fd_ = -1;
  std::unique_ptr<local::FrameReader> reader_;
  State state_ = State::kOpen;
  Status error_;
  uint32_t segment_size_ = 0;
  uint32_t slots_ = 0;
  uint8_t* base_ = nullptr;  // the arena mapping: slots_ * segment_size_ bytes
  NoopListener listener_;
  std::unique_ptr<buffer::SegmentArena> arena_;
  std::vector<uint32_t> free_;          // slots this process may fill now
  std::vector<uint8_t> at_daemon_;      // per slot: 1 while handed over
  std::vector<buffer::Buffer> current_; // per subpartition: the segment being filled
  std::vector<uint32_t> open_;          // subpartitions with a current segment
  std::vector<uint8_t> pending_;        // queued Filled frames
  std::vector<uint32_t> credit_scratch_;  // slots of the Credit being read
  uint32_t pending_count_ = 0;
  shuffle::RecordSerializer serializer_;
  bool claimed_ = false;
  uint32_t claim_subpartition_ = 0;
  uint32_t claim_size_ = 0;
  WriterStats stats_;
  bool committing_ = false;
  std::optional<MapOutput> commit_ack_;
};

}  // namespace sluice::client
