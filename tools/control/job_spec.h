// What a job is and how it is going: plain value types shared by sluiced (which runs jobs),
// the control client (which carries them in schema/control.fbs messages) and sluice-harness
// (which submits them and checks the outcome).
//
// A job names every node (the sluiced control/data endpoints, "host:port"), which node runs
// each producer and each consumer, and what the producers generate. Every daemon of the job
// gets the same JobSpec and runs the producers and consumers placed on itself.
//
// Partition ids are "<job_id>/p<producer>"; producer p's partition has one subpartition per
// consumer (all-to-all) or one subpartition read by consumer p (pointwise).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::control {

enum class JobKind : uint8_t {
  kGenerated = 0,      // deterministic records with producer id, sequence number and checksum
  kFilePartition = 1,  // lines of text files partitioned by a key column
};
enum class KeyDistribution : uint8_t { kUniform = 0, kZipf = 1 };
enum class Partitioner : uint8_t { kKeyHash = 0, kRoundRobin = 1 };
enum class Pattern : uint8_t {
  kAllToAll = 0,   // every producer feeds every consumer
  kPointwise = 1,  // producer i feeds consumer i only (needs as many consumers as producers)
};

struct JobSpec {
  std::string job_id;  // 1..128 bytes of [A-Za-z0-9._-]
  // The job's secret (shuffle::auth::MakeJobToken, hex): made by the submitter, the same in
  // every node's copy. It scopes the job: its partitions are served only to requests that
  // prove it, and JobStatus and CancelJob must carry it. Never logged.
  std::string token;
  JobKind kind = JobKind::kGenerated;
  std::vector<std::string> nodes;        // "host:port" of each node's sluiced; index = node id
  std::vector<uint32_t> producer_nodes;  // producer i runs on nodes[producer_nodes[i]]
  std::vector<uint32_t> consumer_nodes;  // consumer j runs on nodes[consumer_nodes[j]]
  Pattern pattern = Pattern::kAllToAll;

  // kGenerated: records_per_producer records each, sizes uniform in [min, max] bytes (the
  // whole record, header included; min >= kMinGeneratedRecordSize), keys drawn from
  // key_count keys uniformly or by Zipf(zipf_s), all from `seed`.
  uint64_t records_per_producer = 0;
  uint32_t record_size_min = 100;
  uint32_t record_size_max = 100;
  KeyDistribution keys = KeyDistribution::kUniform;
  double zipf_s = 1.1;
  uint64_t key_count = 1u << 20;
  Partitioner partitioner = Partitioner::kKeyHash;
  uint64_t seed = 1;

  // kFilePartition: producer i reads input_files[i] (a path on its node), splits each line by
  // `delimiter` and sends it to consumer hash(field key_field) % consumers; consumer j writes
  // "<output_dir>/<job_id>-part-<j>.txt" on its node. Lines without that field are counted
  // (ConsumerStatus::bad_lines on the producer side: ProducerStatus::bad_lines) and skipped.
  std::vector<std::string> input_files;
  char delimiter = ',';
  uint32_t key_field = 0;
  std::string output_dir;

  // Both kinds.
  // CRC32C on every buffer in transit: a daemon setting (sluiced --checksums); a job that asks
  // for it on a daemon without it is refused. Records carry their own CRC anyway.
  bool checksums = false;
  uint32_t timeout_ms = 600000;  // the job fails on every node that is not done by then
  int32_t throttled_consumer = -1;  // this consumer reads at most throttle_mib_per_second
  double throttle_mib_per_second = 0;
};

// Smallest generated record: producer id (4) + sequence (8) + key (8) + size (4) + crc (4).
inline constexpr uint32_t kMinGeneratedRecordSize = 28;

enum class JobState : uint8_t {
  kUnknown = 0,  // this node never saw the job id
  kRunning = 1,
  kSucceeded = 2,
  kFailed = 3,  // see JobStatus::error and the task errors
  kCancelled = 4,
};
const char* JobStateName(JobState s);

struct ProducerStatus {
  uint32_t index = 0;
  bool done = false;
  std::string error;  // empty unless this producer failed
  uint64_t records = 0;
  uint64_t bytes = 0;  // record bytes
  uint64_t bad_lines = 0;
  // Records sent to each consumer (index = consumer; pointwise: one entry).
  std::vector<uint64_t> records_per_consumer;
};

struct ConsumerStatus {
  uint32_t index = 0;
  bool done = false;  // end of partition from every producer
  std::string error;  // empty unless this consumer failed (names the peer for remote losses)
  uint64_t records = 0;      // valid, first-time records
  uint64_t bytes = 0;        // record bytes
  uint64_t duplicated = 0;   // sequence number seen before on that channel
  uint64_t reordered = 0;    // arrived, but not as the next sequence number of that channel
  uint64_t corrupted = 0;    // checksum mismatch or malformed (not counted in records)
  // Valid records from each producer (index = producer).
  std::vector<uint64_t> records_per_producer;
  std::string output_file;  // kFilePartition
};

// Sums over every task of a job on one node. Always complete, also when a JobStatus reply
// had to cut its per-task lists to fit in a frame.
struct JobTotals {
  uint32_t producers = 0;
  uint32_t consumers = 0;
  uint32_t producers_done = 0;
  uint32_t consumers_done = 0;
  uint64_t records_produced = 0;
  uint64_t bytes_produced = 0;
  uint64_t bad_lines = 0;
  uint64_t records_consumed = 0;
  uint64_t bytes_consumed = 0;
  uint64_t duplicated = 0;
  uint64_t reordered = 0;
  uint64_t corrupted = 0;
};

struct JobStatus {
  std::string job_id;
  JobState state = JobState::kUnknown;
  std::string error;  // first failure, for a person
  double seconds = 0;  // since the job started on this node (until it ended)
  // The ones on this node. A reply that would not fit in a frame drops the per-channel
  // vectors first, then keeps only the first producers and consumers (see `note`).
  std::vector<ProducerStatus> producers;
  std::vector<ConsumerStatus> consumers;
  // Over every task on this node, whatever the lists hold (filled by DecodeJobStatus; the
  // daemon's encoder computes it from the full lists).
  JobTotals totals;
  std::string note;  // non-empty when the lists were cut to fit: says what was left out
};

// The totals of `status`'s lists.
JobTotals ComputeTotals(const JobStatus& status);

// One job in a daemon's list (control message ListJobsResponse): no token, no per-task lists.
struct JobSummary {
  std::string job_id;
  JobState state = JobState::kUnknown;
  double seconds = 0;
  std::string error;
  JobTotals totals;
};

struct JobList {
  std::vector<JobSummary> jobs;  // running first, then ended (newest first)
  uint32_t total = 0;            // jobs the daemon has, also when `jobs` was cut to fit
  std::string note;              // non-empty when `jobs` was cut
};

// One daemon's health and counters (control message Stats).
struct NodeStats {
  std::string node_name;
  uint64_t total_segments = 0;
  uint64_t available_segments = 0;  // in the global pool's free list
  uint32_t segment_size = 0;
  uint32_t buffers_per_channel = 0;  // 0: an older daemon that does not say
  uint32_t floating_per_gate = 0;
  uint32_t running_jobs = 0;
  uint64_t rss_bytes = 0;
  uint64_t peak_rss_bytes = 0;
  uint64_t protocol_errors = 0;  // frames rejected, all reasons
  uint64_t connections = 0;      // open, both directions
  std::string prometheus;        // every metric, Prometheus text format
  std::string credit_dump;       // live credit state: one line per channel and reader
};

}  // namespace sluice::control
