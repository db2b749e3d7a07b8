// ShuffleEnvironment: everything one process needs to produce and consume shuffle data, the
// embedding entry point. It owns the NetworkBufferPool, the PartitionRegistry, an EventLoop,
// the ShuffleServer (when listening) and the ShuffleClient, and builds partitions and input
// gates whose pools follow buffer::EstimateNetworkMemory.
//
// Thread-safe. Stop (or the destructor) shuts the network down; partitions and gates must be
// released by their owners first for the leak check to hold.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/buffer/network_buffer_pool.h"
#include "sluice/shuffle/auth.h"
#include "sluice/shuffle/input_gate.h"
#include "sluice/shuffle/partition_registry.h"
#include "sluice/shuffle/result_partition.h"
#include "sluice/shuffle/shuffle_options.h"
#include "sluice/transport/endpoint.h"

// The network side stays behind forward declarations: this header (installed) sees neither
// libuv nor the generated FlatBuffers headers.
namespace sluice::transport {
class EventLoop;
}  // namespace sluice::transport

namespace sluice::shuffle {

class ControlService;  // shuffle/shuffle_server.h (sluiced's control messages)
class ShuffleClient;   // shuffle/shuffle_client.h (internal)
class ShuffleServer;   // shuffle/shuffle_server.h (internal)

struct EnvironmentConfig {
  // network_memory and segment_size; options.credit.segment_size is set from it.
  buffer::NetworkBufferPoolOptions memory;
  ShuffleOptions options;
  bool listen = true;  // serve partitions to other processes
  std::string bind_host = "127.0.0.1";
  uint16_t port = 0;
  std::string node_name = "sluice";
  // 1: one EventLoop thread serves partitions and receives; 2: the client (receiving side)
  // gets a loop thread of its own.
  uint32_t io_threads = 1;
  ConnectionTimeouts timeouts;
  size_t write_high_water_bytes = 4u << 20;
  // The server's connection limits: in all, and from one remote IP address.
  uint32_t max_connections = 1024;
  uint32_t max_connections_per_peer = 64;
  // Shared secret for every connection, served and opened (shuffle/auth.h). Required: Start
  // refuses an empty secret unless auth.off is set (experiments on loopback).
  auth::AuthConfig auth;
  // Daemon control messages on the server's port; null: refused. Must outlive the environment.
  ControlService* control = nullptr;
};

// One input of a gate: a subpartition of a partition, in this process (no endpoint) or at a
// remote ShuffleServer.
struct ChannelSpec {
  std::string partition_id;
  uint32_t subpartition = 0;
  std::optional<transport::Endpoint> remote;
  // The producer's job token, proved in the PartitionRequest (shuffle/auth.h); empty: none.
  std::string access_token;
};

class ShuffleEnvironment {
 public:
  // InvalidArgument naming auth.secret and auth.off when config.auth is unusable; admission
  // and listener errors otherwise.
  static Result<std::unique_ptr<ShuffleEnvironment>> Start(const EnvironmentConfig& config);
  ~ShuffleEnvironment();
  ShuffleEnvironment(const ShuffleEnvironment&) = delete;
  ShuffleEnvironment& operator=(const ShuffleEnvironment&) = delete;

  // Creates and registers a partition (its output pool under admission). With an
  // `access_token` (a job token), remote readers must prove it (ChannelSpec::access_token).
  Result<std::shared_ptr<ResultPartition>> CreatePartition(const std::string& id,
                                                           uint32_t subpartitions,
                                                           const std::string& access_token = "");
  // Unregisters and releases a partition.
  void ReleasePartition(const std::string& id);
  // Creates a gate over `channels` (index i = channels[i]) and starts it: exclusive buffers
  // for remote channels, partition requests. Errors name the channel.
  Result<std::unique_ptr<InputGate>> CreateInputGate(const std::string& name,
                                                     const std::vector<ChannelSpec>& channels);
  // Push mode: the same gate, but no consumer thread waits on it. `on_available(gate)` runs
  // on the environment's receiving IO thread whenever the gate has something new (buffers,
  // events, the end, a channel's error), right after the IO thread read it: a record reaches
  // its consumer without a wake-up of another thread. Each call must drain the gate: PollNext
  // (or RecordReader::Next with a zero timeout) until it returns nothing, the end or an
  // error; what a call leaves is offered again only when more arrives. Calls never overlap.
  // The function holds up the IO thread, and with it every connection of this environment,
  // for as long as it runs: it must not block (no waiting on the gate, on a lock an IO
  // callback holds, or on a slow sink). The gate may be closed from inside the function (at
  // the end of input) or from one other thread; no call starts after Close returns. After
  // Stop() the function is not called again.
  Result<std::unique_ptr<InputGate>> CreateInputGate(const std::string& name,
                                                     const std::vector<ChannelSpec>& channels,
                                                     std::function<void(InputGate&)>
                                                         on_available);

  // The bound data port (0 when not listening).
  uint16_t port() const;
  transport::Endpoint endpoint() const { return {config_.bind_host, port()}; }
  const std::shared_ptr<buffer::NetworkBufferPool>& pool() const { return pool_; }
  PartitionRegistry& registry() { return registry_; }
  // Internal (include shuffle/shuffle_server.h and shuffle/shuffle_client.h from the source
  // tree to use them): for sluiced, tests and the harness, not for embedders.
  ShuffleServer* server() { return server_.get(); }
  ShuffleClient& client() { return *client_; }
  const EnvironmentConfig& config() const { return config_; }
  // Closes connections and stops the loop. Idempotent.
  void Stop();

 private:
  explicit ShuffleEnvironment(const EnvironmentConfig& config);

  EnvironmentConfig config_;
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  PartitionRegistry registry_;
  std::unique_ptr<transport::EventLoop> loop_;
  std::unique_ptr<transport::EventLoop> client_loop_;  // io_threads == 2
  std::unique_ptr<ShuffleServer> server_;
  std::unique_ptr<ShuffleClient> client_;
};

}  // namespace sluice::shuffle
