// Reader: reads one subpartition of a job's external partitions (issue 13) from every daemon
// that holds committed map outputs for it, with one channel per daemon whatever the number of
// map outputs there, from any host.
//
//   Reader::OpenSubpartition({job, token, subpartition, map_outputs, secret})
//     -> for each node named in map_outputs: register the read set (the (partition, attempt)
//        pairs of that node, control message ExtRegisterReadSet), then one PartitionRequest
//        for "ext/<job>/<digest>" with the job token's access proof;
//   Next() -> a record (its bytes valid until the next call), nullopt at the end of data, or an
//             error: ProducerFailed naming the job and partition when a writer failed, the
//             daemon's address when it went away, a timeout naming the nodes still open.
//
// Records of one map output come in the order its writer wrote them; map outputs of one node
// come in the order given; nodes interleave. Exactly the attempts named are read.
//
// Thread-compatible: one thread calls Next(). Owns its network memory (a small pool of
// (nodes x buffers_per_channel + floating) segments) and an event loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sluice/buffer/status.h"
#include "sluice/client/map_output.h"

namespace sluice::client {

struct ReaderOptions {
  std::string job;
  std::string token;  // the job's token (its writers')
  uint32_t subpartition = 0;
  // What to read: EncodeMapOutput descriptors from the writers' Commit. One attempt per
  // partition; every one must belong to `job`.
  std::vector<MapOutput> map_outputs;
  std::string secret;  // the cluster's shared secret (control::FindSecret)
  // Control requests, connecting, and the longest Next() waits for data.
  std::chrono::milliseconds timeout{60000};
  uint32_t buffers_per_channel = 4;
  uint32_t floating_buffers = 8;
  uint32_t max_record_size = 64u << 20;
};

class Reader {
 public:
  // InvalidArgument for an empty list, a map output of another job or the same partition twice;
  // the daemon's refusal (PermissionDenied: wrong token; NotFound: an attempt it does not hold)
  // naming its address.
  static Result<std::unique_ptr<Reader>> OpenSubpartition(const ReaderOptions& options);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // The next record, or nullopt once every node's map outputs ended.
  Result<std::optional<std::span<const uint8_t>>> Next();
  uint64_t records() const { return records_; }
  // The daemons read from, "host:port".
  const std::vector<std::string>& nodes() const { return nodes_; }

 private:
  struct State;
  explicit Reader(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
  std::vector<std::string> nodes_;
  uint64_t records_ = 0;
  bool ended_ = false;
};

}  // namespace sluice::client
