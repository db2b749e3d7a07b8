// JobRunner: runs one node's share of a job inside a ShuffleEnvironment: the producers and
// consumers the JobSpec places on `node_index`, each on its own thread.
//
// Generated jobs: producer p emits records_per_producer records, each
//   [producer u32][sequence u64][key u64][size u32][filler bytes...][crc32c u32]
// (little-endian; sequence counts per (producer, consumer) channel from 0; the CRC covers
// every byte before it; the filler is derived from seed, producer and sequence; see
// job_records.h), keys uniform or Zipf from `seed`, partitioned by key hash or round robin.
// Consumer c reads every producer's subpartition c and verifies each record: checksum, size,
// producer id, key and sequence range (else corrupted), and the sequence per channel: seen
// before (duplicated), or new but arriving after a higher sequence of its channel (reordered;
// such a record is also counted in records, as it did arrive once). Lost = sent - records.
// File-partition jobs: producers read lines of input_files[i] beneath the daemon's input_dir,
// consumers write "<output_dir>/<job>-part-<j>.txt" beneath the daemon's output_dir (see
// job_files.h: confined, regular files only, O_EXCL outputs). Files are opened on the task
// threads, never in Start: an open that fails fails the job with the reason.
//
// Nothing a job does aborts the daemon: a thread that cannot be started, std::bad_alloc or any
// other exception in a task fails the job with the reason.
//
// Lifetime of a partition: created and registered in Start (remote consumers find it at
// once), finished by its producer, and released by the producer's thread only when every
// subpartition was consumed (the consumer polled the end of partition; the ResultPartition
// stats say so) so the leak check is exact on every node. A producer task's `done` means
// Finish() returned; the job is kRunning until its partitions were consumed and released too.
// A subpartition whose reader went away before the end fails the producer (the error names
// the consumer and its node). Cancel, a failure of any task and the timeout release at once.
//
// A task failure fails the whole job on this node (like Flink): the other tasks are stopped
// and this node's partitions fail with the error, so consumers on other nodes see it.
// Per-buffer CRC32C in transit (JobSpec::checksums) is the environment's setting
// (ShuffleOptions::checksums), not changed per job; records carry their own CRC anyway.
//
// Thread-safe: Status, Cancel and Wait from any thread. The destructor cancels what still runs,
// joins every thread and releases every partition and gate (every segment goes back to the
// environment's pool).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "buffer/memory_estimate.h"
#include "buffer/status.h"
#include "shuffle/shuffle_environment.h"
#include "tools/control/job_spec.h"

namespace sluice::daemon {

// What a daemon lets its jobs do (sluiced options).
struct JobRunnerOptions {
  std::string input_dir;   // empty: file jobs are refused (--input-dir)
  std::string output_dir;  // empty: file jobs are refused (--output-dir)
  uint64_t max_line_bytes = 1u << 20;
  // Tests only: runs first on every task thread (e.g. to hold one as if stuck in I/O).
  std::function<void()> task_hook_for_testing;
};

// Live buffer use of one input gate / result partition of a job on this node (metrics).
struct GateBufferMetrics {
  std::string gate;              // "<job>/c<consumer>"
  uint32_t exclusive = 0;        // exclusive segments owned by its remote channels
  uint32_t floating = 0;         // floating buffers its channels hold
  uint32_t queued = 0;           // buffers received, not yet consumed
  uint32_t sender_backlog = 0;   // backlog the senders announced
};
struct PartitionBufferMetrics {
  std::string partition;         // the partition id
  uint32_t backlog = 0;          // finished buffers queued over its subpartitions
  uint32_t buffers_in_use = 0;   // segments of its output pool lent to buffers
  uint64_t backpressure_ns = 0;  // time its writer waited for buffers
};
struct JobBufferMetrics {
  std::vector<GateBufferMetrics> gates;
  std::vector<PartitionBufferMetrics> partitions;
};

class JobRunner {
 public:
  // Validates the spec (node index, placement, sizes, pattern, relative file paths; file jobs
  // need options.input_dir and output_dir) and checks the network memory this node needs for
  // its share with buffer::EstimateNetworkMemory: InvalidArgument or ResourceExhausted naming
  // the option and the value that would fit. Does no file I/O: inputs are opened and outputs
  // created on the task threads (a failure there fails the job). Then creates this node's
  // partitions (registered at once with spec.token, so remote consumers that prove it find
  // them) and input gates (ChannelSpec::access_token = spec.token), and starts the tasks; a
  // thread that cannot be started fails the job (or, for a partition's flusher, refuses it
  // with ResourceExhausted).
  // REQUIRES: env outlives the runner.
  static Result<std::unique_ptr<JobRunner>> Start(shuffle::ShuffleEnvironment* env,
                                                  const control::JobSpec& spec,
                                                  uint32_t node_index,
                                                  const JobRunnerOptions& options = {});
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // A consistent snapshot: kRunning until every task on this node ended, then kSucceeded,
  // kFailed (first error in `error`) or kCancelled.
  control::JobStatus Status() const;
  // Fails every running task with `reason` (blocked emits and reads wake up), releases this
  // node's partitions and gates. Idempotent; no-op once the job ended.
  void Cancel(const std::string& reason);
  // True when every task ended within `timeout`.
  bool Wait(std::chrono::milliseconds timeout);
  // Task threads that have not returned yet (for a shutdown that cannot wait for them).
  uint32_t running_tasks() const;
  const control::JobSpec& spec() const;
  // This node's gates and partitions, live. Thread-safe (reads locked channel states and the
  // partitions' stats), also while the tasks run.
  JobBufferMetrics BufferMetrics() const;

 private:
  struct State;
  explicit JobRunner(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// Checks that do not depend on the node: ids, placement, sizes, pattern, file-job fields
// (relative paths without '..').
Status ValidateJobSpec(const control::JobSpec& spec);

struct JobMemoryEstimate {
  // Network memory: its partitions' output pools and its gates' exclusive and floating
  // buffers, with the formulas the pools use.
  buffer::MemoryEstimate network;
  // Heap outside network memory: every generated producer holds a record_size_max buffer, every
  // consumer may reassemble one record of up to record_size_max; a file producer holds a line
  // of up to max_line_bytes plus a 64 KiB read buffer.
  uint64_t heap_bytes = 0;
};
// What node `node_index`'s share of the job takes.
// REQUIRES: ValidateJobSpec(spec) is OK and node_index < spec.nodes.size().
JobMemoryEstimate EstimateJobMemory(const control::JobSpec& spec, uint32_t node_index,
                                    const buffer::CreditOptions& options,
                                    uint64_t max_line_bytes = 1u << 20);

}  // namespace sluice::daemon
