// LocalWriterService: the daemon side of the local write path (issue 13). Writers on this host
// connect to a Unix domain socket (<state_dir>/sluiced-<port>.sock, mode 0600), authenticate
// with the cluster secret (the shuffle handshake, plus SO_PEERCRED: the daemon's own uid unless
// any_uid), open (job, partition, attempt) and receive their write credit:
//
//   per writer: memfd arena of K segments (K = its credit), sealed against resizing,
//               mapped here and in the writer; K segments of network memory reserved from
//               the NetworkBufferPool (RequestExclusiveSegments, held untouched) so the pool's
//               admission bounds this memory too; both freed when the last slot comes home.
//
// A Filled{subpartition, slot, size} is checked (slot granted and held by the writer, size
// within the segment, subpartition in range, records framed validly across the stream) and
// the slot becomes a Buffer handed to the sink (the PartitionStore) without a copy. When the
// sink releases it, the slot goes back to the writer as a Credit. A writer that breaks any rule
// fails alone (Error naming the rule, the sink aborts its map output, the connection closes);
// a writer that disconnects before Commit is aborted with a reason naming its pid.
//
// One poll() thread serves every connection (no libuv here). A writer's arena is reserved on
// a second thread: when the pool has no free segments for it, the writer waits there (up to
// reserve_timeout) and the others go on being served. Thread-safe: Start/Stop/Stats from any
// thread; the sink is called on the service thread only, and its releases may come from any
// thread. Stop waits for a reservation in progress (at most reserve_timeout).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "client/map_output.h"
#include "shuffle/auth.h"
#include "sluice/buffer/buffer.h"
#include "sluice/buffer/network_buffer_pool.h"
#include "sluice/buffer/status.h"
#include "store/partition_store.h"

namespace sluice::daemon {

// Where the service hands writers' buffers: the PartitionStore in sluiced, a test or bench sink
// elsewhere. Called on the service thread only. Same contract as PartitionStore's methods.
class WriterSink {
 public:
  virtual ~WriterSink() = default;
  virtual Result<store::WriterId> OpenWriter(const store::WriterSpec& spec) = 0;
  virtual Status Append(store::WriterId writer, uint32_t subpartition, buffer::Buffer filled,
                        uint32_t records) = 0;
  virtual Result<client::MapOutput> Commit(store::WriterId writer) = 0;
  virtual void Abort(store::WriterId writer, std::string reason) = 0;
  // Every segment of the writer's credit is held by the sink: the writer waits until one is
  // released. A sink that retains buffers (blocking mode, no reader yet) must spill or copy
  // some now, or the writer waits for ever. Called once per transition into that state.
  virtual void WriterWaiting(store::WriterId /*writer*/) {}
};

// `store` as a sink; the store must outlive the sink.
std::unique_ptr<WriterSink> MakeStoreSink(store::PartitionStore* store);

struct LocalWriterServiceOptions {
  std::string socket_path;           // created 0600; a stale socket is replaced
  shuffle::auth::AuthConfig auth;    // the daemon's secret (auth.off is refused)
  bool any_uid = false;              // accept writers of another uid than the daemon's
  uint32_t writer_credit = 16;       // segments per writer when it asks for 0
  uint32_t max_writer_credit = 64;   // the most a writer may ask for
  uint32_t max_connections = 1024;   // open local connections at most
  std::string node_name;             // for the handshake and messages
  // How long an unauthenticated connection may stay, and how long a writer's open may wait for
  // the segments of its credit (counted from its OpenWriter; opens are served in order).
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds reserve_timeout{2000};
  uint32_t max_record = 1u << 30;    // the longest record a writer may frame
  // Segments all writers' arenas may reserve together (an arena lives until its last slot
  // comes home); 0: no cap beyond the pool. sluiced: half of its network memory, so that local
  // writers cannot take the memory its own jobs need.
  uint64_t max_reserved_segments = 0;
};

struct LocalWriterStats {
  uint64_t connections = 0;      // open now
  uint64_t writers_opened = 0;   // since start
  uint64_t writers_committed = 0;
  uint64_t writers_aborted = 0;  // Abort, disconnect before Commit, or failed
  uint64_t writers_failed = 0;   // broke a rule (protocol, framing, slot, auth)
  uint64_t refused = 0;          // connections refused (uid, limit, handshake)
  uint64_t buffers = 0;          // Filled buffers handed to the sink
  uint64_t bytes = 0;            // their bytes
  uint64_t arenas = 0;           // live arenas (a committed writer's lives until its slots return)
  uint64_t reserved_segments = 0;  // the segments those arenas reserve
  uint64_t writers_waiting = 0;  // open writers whose every slot is held by the sink
};

// Prometheus text of `stats` (sluice_local_writer_* series, labelled with `node`).
std::string RenderLocalWriterMetrics(const std::string& node, const LocalWriterStats& stats);

class LocalWriterService {
 public:
  // Binds the socket and starts the service thread. InvalidArgument when the path exists and
  // is not a socket, or another daemon listens there; IoError naming the path otherwise.
  // `pool` and `sink` must outlive the service (the pool: also every arena, which keeps a
  // reference).
  static Result<std::unique_ptr<LocalWriterService>> Start(
      const LocalWriterServiceOptions& options, std::shared_ptr<buffer::NetworkBufferPool> pool,
      WriterSink* sink);
  // Stop() first.
  ~LocalWriterService();
  LocalWriterService(const LocalWriterService&) = delete;
  LocalWriterService& operator=(const LocalWriterService&) = delete;

  // Closes the socket (removing its file) and every connection; writers not committed are
  // aborted in the sink ("daemon shutting down"). Arenas whose buffers the sink still holds
  // stay until it releases them. Idempotent.
  void Stop();
  const std::string& socket_path() const;
  LocalWriterStats Stats() const;

  class Impl;

 private:
  explicit LocalWriterService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::daemon
