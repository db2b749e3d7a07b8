// Prometheus text exposition of a daemon's counters: the network buffer pool, the shuffle
// server, both transports (served and opened connections) and the jobs. Rendered on demand
// (the Stats control message, the --metrics-file writer), never on the data path.
//
// Thread-safe: reads atomics and snapshots.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/shuffle_server.h"
#include "store/partition_store.h"
#include "tools/daemon/http_server.h"
#include "tools/daemon/job_runner.h"
#include "transport/transport_options.h"

namespace sluice::daemon {

inline constexpr size_t kMaxLabeledBuffers = 32;

struct JobCounters {
  uint32_t running = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  uint64_t records_produced = 0;  // by every job this daemon ran, ended and running
  uint64_t records_consumed = 0;
  uint64_t bytes_consumed = 0;
};

struct MetricsSnapshot {
  std::string node;
  buffer::NetworkBufferPoolStats pool;
  const shuffle::ShuffleServerStats* server = nullptr;
  const transport::TransportMetrics* served = nullptr;  // connections accepted
  const transport::TransportMetrics* opened = nullptr;  // connections to other daemons
  JobCounters jobs;
  const HttpStats* http = nullptr;
  // Running jobs' gates and partitions: the first kMaxLabeledBuffers of each get their own
  // series (labels job, gate/partition); the rest are summed under gate/partition="_other", so
  // a huge job cannot blow up a scrape.
  std::vector<std::pair<std::string, JobBufferMetrics>> job_buffers;  // (job id, metrics)  // the metrics endpoint, when served
  uint64_t rss_bytes = 0;
  uint64_t peak_rss_bytes = 0;
};

std::string RenderPrometheus(const MetricsSnapshot& m);

// Sum of protocol errors over every reason.
uint64_t ProtocolErrors(const transport::TransportMetrics& t);

// This process's resident set and its peak (VmRSS, VmHWM of /proc/self/status), in bytes.
void ReadRss(uint64_t* rss, uint64_t* peak);

// The external store (issue 13): bytes in memory, sluice_spill_bytes_total, spill files, disk
// in use, writers waiting at the quota, jobs, map outputs and readers.
std::string RenderStoreMetrics(const std::string& node, const store::PartitionStoreStats& s);

}  // namespace sluice::daemon
