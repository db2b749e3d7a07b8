// PartitionStore: the daemon-side store of an external shuffle service (issue 13). Processes on
// the daemon's host write map outputs into it (through the local writer service); readers on
// any host read one subpartition of many map outputs through one channel per daemon.
//
//   job ──< map output (partition, attempt) ──< subpartition: [disk extents][memory buffers]
//
// - A job is created by its first writer and takes that writer's token; later writers and
//   readers must present the same token (PermissionDenied otherwise).
// - A map output is one writer's output: (partition, attempt). Append queues filled data buffers
//   per subpartition; Commit makes it visible to readers atomically; Abort fails it (readers get
//   ProducerFailed naming job and partition) and drops its data.
// - Modes: kPipelined (one reader per subpartition streams while the writer writes; buffers are
//   released once sent or spilled) and kBlocking (retained after Commit until Release(job) or the
//   retention time; read again and by several readers; only committed data is served).
// - Spill: when the buffers held in memory pass the memory budget, a map output's buffers go to
//   its data file in spill_dir (sort-merge layout: one data file and one index per map output, a
//   region per subpartition per spill; every buffer with a CRC32C on disk) and are released.
//   spill_max_bytes bounds the disk: at the quota, Append keeps the buffers (the writer's credit
//   stops) until space is freed.
// - Readers: a read set (job, subpartition, list of (partition, attempt)) is registered
//   (RegisterReadSet) and then read through the ShuffleServer as partition id
//   "ext/<job>/<read set id>" (see store/store_views.h and docs/protocol.md).
//
// Ownership: the store owns the buffers given to Append until it releases them (sent, spilled,
// released or aborted); releasing a Buffer hands its segment back to the writer's recycler.
// Thread-safe: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/buffer/buffer.h"
#include "sluice/buffer/network_buffer_pool.h"
#include "sluice/buffer/status.h"
#include "sluice/client/map_output.h"
#include "sluice/shuffle/partition_registry.h"

namespace sluice::store {

enum class PartitionMode : uint8_t { kPipelined = 0, kBlocking = 1 };
// "pipelined" / "blocking".
const char* PartitionModeName(PartitionMode mode);
// Parses "pipelined" / "blocking"; InvalidArgument naming the value otherwise.
Result<PartitionMode> ParsePartitionMode(std::string_view text);

using WriterId = uint64_t;

struct WriterSpec {
  std::string job;
  std::string token;  // the job's token ("" when the daemon runs without job tokens)
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  PartitionMode mode = PartitionMode::kPipelined;
  // The job's retention (blocking data kept after Commit); 0: the store's default. The first
  // writer of a job sets it.
  std::chrono::seconds retention{0};
};

struct PartitionStoreOptions {
  // The daemon's data address "host:port", put into every MapOutput.
  std::string node;
  // Where spill files go; created if missing. Empty: no spilling (memory only).
  std::string spill_dir;
  // Disk quota for spill files; 0: no quota.
  uint64_t spill_max_bytes = 0;
  // Bytes of appended buffers the store holds in memory before it spills.
  uint64_t memory_budget_bytes = 64u << 20;
  // Default retention of a job's data after its last activity.
  std::chrono::seconds retention{3600};
  // Limits (hostile or runaway clients): named in the errors.
  uint32_t max_jobs = 1024;
  uint32_t max_map_outputs_per_job = 65536;
  uint32_t max_subpartitions = 65536;
  // Subpartitions of all map outputs the store holds, until their jobs are released or expire:
  // each costs about 100 bytes of bookkeeping whatever it holds, and a writer names how many
  // it wants, so they are budgeted (1,048,576: about 100 MiB). More: OpenWriter is
  // ResourceExhausted naming the limit.
  uint64_t max_held_subpartitions = 1u << 20;
  uint32_t max_read_set_entries = 65536;
  uint32_t max_read_sets_per_job = 4096;
  // Map outputs named by all registered read sets together (each entry costs about 32 bytes
  // until its job goes; per job up to 4,096 sets of 65,536 would be 8 GiB), so they are
  // budgeted too (2,097,152: about 64 MiB). More: RegisterReadSet is ResourceExhausted naming
  // the limit.
  uint64_t max_held_read_set_entries = 1u << 21;
  // Segments to read spilled data into: taken from this pool's free list while a view reads
  // spilled data (at most `read_segments` at once, two per view) and returned when sent; an
  // idle store holds none. Null: spilled data cannot be read (tests without spill).
  std::shared_ptr<buffer::NetworkBufferPool> read_pool;
  uint32_t read_segments = 16;
  // How often the maintenance thread expires retention, retries spills held at the quota and
  // wakes views that found no read segment.
  std::chrono::milliseconds maintenance_interval{1000};
};

// One map output named by a reader.
struct MapOutputRef {
  uint32_t partition = 0;
  uint32_t attempt = 0;
  bool operator==(const MapOutputRef&) const = default;
};

// The partition id readers request for a registered read set: "ext/<job>/<32 hex digits>".
inline constexpr std::string_view kExternalPartitionPrefix = "ext/";

struct MapOutputInfo {
  std::string job;
  uint32_t partition = 0;
  uint32_t attempt = 0;
  uint32_t subpartitions = 0;
  PartitionMode mode = PartitionMode::kPipelined;
  std::string state;  // "writing", "committed", "aborted"
  uint64_t bytes = 0;
  uint64_t records = 0;
  uint64_t bytes_in_memory = 0;
  uint64_t bytes_on_disk = 0;
};

struct PartitionStoreStats {
  uint64_t jobs = 0;
  uint64_t map_outputs = 0;
  uint64_t subpartitions = 0;  // of the map outputs held (max_held_subpartitions)
  uint64_t read_set_entries = 0;  // of the read sets registered (max_held_read_set_entries)
  uint64_t bytes_in_memory = 0;
  uint64_t spill_bytes_total = 0;  // bytes written to spill files since start
  // Bytes of starved writers' buffers copied into the store's own segments (under the budget)
  // instead of spilled, since start.
  uint64_t copied_bytes_total = 0;
  uint64_t spill_files = 0;        // data + index files on disk now
  uint64_t disk_bytes = 0;         // bytes of spill files on disk now
  uint64_t writers_waiting = 0;    // writers whose buffers are held at the disk quota
  uint64_t readers = 0;            // live views
};

class PartitionStore final : public shuffle::SubpartitionViewProvider {
 public:
  // Creates spill_dir and spills into <spill_dir>/node-<host>-<port> (from options.node), locked
  // with flock for the store's life; removes what a crashed or stopped daemon left (any node
  // directory whose lock is free, and stray spill files in the root). The store's destruction
  // removes its node directory (spill files, lock, directory). IoError naming the directory
  // when it cannot be used or another live store holds it.
  static Result<std::unique_ptr<PartitionStore>> Create(PartitionStoreOptions options);
  ~PartitionStore() override;
  PartitionStore(const PartitionStore&) = delete;
  PartitionStore& operator=(const PartitionStore&) = delete;

  // Creates the job if needed; a later writer with another token gets PermissionDenied. Errors
  // name the job, partition and attempt, and the limit hit (InvalidArgument / ResourceExhausted),
  // AlreadyExists-like duplicates are InvalidArgument.
  Result<WriterId> OpenWriter(const WriterSpec& spec);
  // Takes a filled data buffer (records framed as shuffle's RecordSerializer writes them, every
  // record complete at the end of a subpartition's stream). `records`: how many records start
  // in it (statistics only). The buffer is released when sent (pipelined), spilled, released
  // or aborted. Over the memory budget, asks the store's thread to spill (it does not wait).
  // Errors: unknown writer, bad subpartition, committed/aborted writer, a writer the store
  // failed (IoError with the reason: the spill that failed, naming the file).
  Status Append(WriterId writer, uint32_t subpartition, buffer::Buffer filled,
                uint32_t records = 0);
  // The writer has no free segment left: the store holds all of its credit (a blocking output
  // without a reader, a pipelined one whose reader is slow or absent). Asks the store's thread
  // to give the writer's segments back (their recycler runs on that thread): a pipelined output
  // whose reader read on since the last call is left alone (backpressure); under the memory
  // budget the buffers are copied into the store's own segments; otherwise the output is
  // spilled, whatever the budget. At the quota (or without spill_dir) the writer waits. A spill
  // that fails aborts the writer: its next Append or Commit returns the reason. Does not wait;
  // any thread.
  void WriterWaiting(WriterId writer);
  // Waits until the store's thread has served every spill asked for before this call (by
  // Append over the budget or WriterWaiting). For tests and tools that check spill figures.
  void WaitForSpills();
  // Atomic: visible to readers after this. The MapOutput names this node.
  Result<client::MapOutput> Commit(WriterId writer);
  // The writer aborted or died: readers of this map output get ProducerFailed naming job and
  // partition; its buffers are released now. Unknown or finished writers are ignored.
  void Abort(WriterId writer, std::string reason);

  // Releases a job: its data, spill files and read sets. `token` must match the job's.
  // NotFound for an unknown job; PermissionDenied for a wrong token.
  Status Release(const std::string& job, const std::string& token);
  // Releases jobs whose retention passed since their last write or read; returns how many.
  uint32_t ExpireRetention(std::chrono::steady_clock::time_point now);

  // The map outputs of one job ("" = every job), for listings.
  // At most `max_entries` of them (the store's lock is held while they are copied); `total`,
  // when given, gets how many there are.
  std::vector<MapOutputInfo> List(const std::string& job, size_t max_entries = SIZE_MAX,
                                  size_t* total = nullptr) const;
  PartitionStoreStats Stats() const;
  // Whether the job exists and has `token` (for read access checks).
  Status CheckToken(const std::string& job, const std::string& token) const;
  // The job's token, or NotFound.
  Result<std::string> JobToken(const std::string& job) const;

  // --- Readers (docs/protocol.md "External partitions") ---
  // Registers the map outputs a reader wants, in order, and returns the partition id to
  // request ("ext/<job>/<id>", the id a digest of the list, so the same list gives the same id
  // and registering again is free). Every named (partition, attempt) must exist in the job
  // (NotFound naming the first that does not; an aborted one may be named: its readers get
  // ProducerFailed). PermissionDenied for a wrong token or an unknown job (the same answer);
  // InvalidArgument for an empty list, duplicates or more than max_read_set_entries;
  // ResourceExhausted past max_read_sets_per_job or max_held_read_set_entries.
  Result<std::string> RegisterReadSet(const std::string& job, const std::string& token,
                                      const std::vector<MapOutputRef>& outputs);
  // SubpartitionViewProvider: a view over a registered read set. The proof is
  // MakePartitionProof(job token, partition_id, subpartition).
  Result<std::unique_ptr<shuffle::SubpartitionView>> CreateView(
      const std::string& partition_id, uint32_t subpartition,
      std::span<const uint8_t> access_proof, shuffle::SubpartitionListener* listener) override;

  const PartitionStoreOptions& options() const;

  class Impl;

 private:
  explicit PartitionStore(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace sluice::store
