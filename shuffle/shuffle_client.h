// ShuffleClient: the consumer side of the network. One TCP connection per producer host,
// shared by every RemoteInputChannel reading from that host; it performs the handshake, sends
// PartitionRequests (retrying PartitionNotFound with backoff), AddCredit, CancelPartitionRequest,
// and routes BufferResponses into the channels' credited buffers (payloads are read straight
// into them). Losing a connection fails every channel on it with an error naming the peer.
//
// Thread-safe: the public methods post to the client's EventLoop; connection state lives on it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/protocol.h"
#include "shuffle/shuffle_options.h"
#include "transport/event_loop.h"
#include "transport/tcp.h"

namespace sluice::shuffle {

class RemoteInputChannel;

struct ShuffleClientConfig {
  ShuffleOptions options;
  std::string node_name = "sluice";
  ConnectionTimeouts timeouts;
  transport::RetryPolicy connect_retry;
  // Shared secret (shuffle/auth.h, shuffle/handshake.h): every server must prove it holds the
  // same secret before anything it sends is accepted. An empty secret (auth.off, or a config
  // ShuffleEnvironment::Start would refuse): servers without authentication only.
  auth::AuthConfig auth;
};

class ShuffleClient {
 public:
  ShuffleClient(transport::EventLoop* loop, const ShuffleClientConfig& config);
  ~ShuffleClient();
  ShuffleClient(const ShuffleClient&) = delete;
  ShuffleClient& operator=(const ShuffleClient&) = delete;

  // Connects (or reuses the connection) to the channel's producer and requests its partition.
  // Failures reach the channel through OnError.
  void RequestPartition(std::shared_ptr<RemoteInputChannel> channel);
  // The channel has unannounced credit: an AddCredit goes out (coalesced). Any thread.
  void NotifyCreditAvailable(std::shared_ptr<RemoteInputChannel> channel);
  // The channel was released: stop its subpartition on the server. Any thread.
  void Cancel(std::shared_ptr<RemoteInputChannel> channel);

  // Closes every connection; channels still open fail with Cancelled. Idempotent.
  void Stop();
  const std::shared_ptr<transport::TransportMetrics>& metrics() const { return tcp_.metrics(); }
  size_t connection_count() const { return tcp_.connection_count(); }
  // Closes every connection at once, as a network cut would (fault injection); returns how many.
  uint32_t CutConnections(const std::string& reason);
  // One line per channel on a connection: peer, receiver id, partition.
  std::vector<std::string> ChannelStates();
  const ShuffleClientConfig& config() const { return config_; }

 private:
  class Handler;
  struct Retry;
  void Connect(std::shared_ptr<RemoteInputChannel> channel);
  Handler* HandlerFor(uint64_t receiver_id);

  transport::EventLoop* const loop_;
  const ShuffleClientConfig config_;
  transport::TcpClient tcp_;
  // Loop thread: which connection serves a receiver; PartitionNotFound retries waiting.
  std::map<uint64_t, std::weak_ptr<transport::Connection>> routes_;
  std::set<Retry*> retries_;
};

}  // namespace sluice::shuffle
