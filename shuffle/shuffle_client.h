// ShuffleClient: the consumer side of the network. One TCP connection per producer host,
// shared by every RemoteInputChannel reading from that host; it performs the handshake, sends
// PartitionRequests (retrying PartitionNotFound with backoff), AddCredit, CancelPartitionRequest,
// and routes BufferResponses into the channels' credited buffers (payloads are read straight
// into them). Losing a connection fails every channel on it with an error naming the peer.
//
// Error scoping (as in Flink): a channel that fails (checksum mismatch, sequence error, an
// ErrorResponse for it) or that its consumer releases is cancelled on its own: a
// CancelPartitionRequest goes out, frames still in flight for it are dropped (their payloads
// skipped, no buffer taken), and its siblings on the connection go on. Each connection
// remembers a bounded number of such receiver ids; a frame for an id it never issued is a
// protocol error that closes the connection.
//
// Credit: channels that gained credit are collected and announced together, one AddCredit per
// channel per flush: at the end of a read pass when the credit was gained on the IO thread,
// else by one posted task for all the channels whose consumers returned buffers meanwhile.
//
// Events need no credit and live outside the network memory, so each connection holds at most
// `event_budget_bytes` of events its consumers have not taken; a producer over it is closed
// with CreditViolation.
//
// Thread-safe: the public methods post to the client's EventLoop; connection state lives on it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "shuffle/auth.h"
#include "shuffle/protocol.h"
#include "shuffle/remote_input_channel.h"
#include "shuffle/shuffle_options.h"
#include "transport/event_loop.h"
#include "transport/tcp.h"

namespace sluice::shuffle {

class GateListener;

struct ShuffleClientConfig {
  ShuffleOptions options;
  std::string node_name = "sluice";
  ConnectionTimeouts timeouts;
  transport::RetryPolicy connect_retry;
  // Shared secret (shuffle/auth.h, shuffle/handshake.h): every server must prove it holds the
  // same secret before anything it sends is accepted. An empty secret (auth.off, or a config
  // ShuffleEnvironment::Start would refuse): servers without authentication only.
  auth::AuthConfig auth;
  // Bytes of received events (payload + EventBudget::kPerEventOverhead each) a connection may
  // hold before its consumers take them; at least two segment-sized events always fit, and
  // the limit grows by EventBudget::kPerChannelAllowance per channel on the connection.
  size_t event_budget_bytes = 64u << 10;
};

class ShuffleClient final : public PartitionRequestClient {
 public:
  ShuffleClient(transport::EventLoop* loop, const ShuffleClientConfig& config);
  ~ShuffleClient() override;
  ShuffleClient(const ShuffleClient&) = delete;
  ShuffleClient& operator=(const ShuffleClient&) = delete;

  // Connects (or reuses the connection) to the channel's producer and requests its partition.
  // Failures reach the channel through OnError.
  void RequestPartition(std::shared_ptr<RemoteInputChannel> channel) override;
  // The channel has unannounced credit: an AddCredit goes out (coalesced, see above). Any
  // thread.
  void NotifyCreditAvailable(std::shared_ptr<RemoteInputChannel> channel) override;
  // The channel was released: stop its subpartition on the server. Any thread.
  void Cancel(std::shared_ptr<RemoteInputChannel> channel) override;
  // Push-mode gates (shuffle/gate_listener.h): runs `listener` on the IO thread, at the end of
  // the read pass that queued its buffers when called inside one, else in one posted task for
  // every listener scheduled meanwhile. Any thread. Dropped once the loop is stopping.
  void ScheduleListener(std::shared_ptr<GateListener> listener);

  // Closes every connection; channels still open fail with Cancelled. Idempotent.
  void Stop();
  const std::shared_ptr<transport::TransportMetrics>& metrics() const { return tcp_.metrics(); }
  size_t connection_count() const { return tcp_.connection_count(); }
  // Closes every connection at once, as a network cut would (fault injection); returns how many.
  uint32_t CutConnections(const std::string& reason);
  // One line per channel on a connection: peer, receiver id, partition, and its credit numbers
  // (exclusive=, floating= held empty buffers, unannounced= credit, backlog=, queued=).
  std::vector<std::string> ChannelStates();
  const ShuffleClientConfig& config() const { return config_; }

 private:
  class Handler;
  struct Retry;
  void Connect(std::shared_ptr<RemoteInputChannel> channel);
  Handler* HandlerFor(uint64_t receiver_id);
  // A handler is reading frames: credit gained now is flushed at the pass's end. Loop thread.
  void BeginReadPass() { in_read_pass_ = true; }
  // Sends one AddCredit for each channel that gained credit since the last flush. Loop thread.
  void FlushCredit();
  // The end of a read pass: the push-mode listeners it scheduled run (their consumers return
  // buffers), then the pass's credit goes out. Loop thread.
  void EndReadPass();
  // Runs the scheduled listeners. Loop thread.
  void RunListeners();
  size_t EventBudgetBytes() const;

  transport::EventLoop* const loop_;
  const ShuffleClientConfig config_;
  transport::TcpClient tcp_;
  // Loop thread: which connection serves a receiver; PartitionNotFound retries waiting.
  std::unordered_map<uint64_t, std::weak_ptr<transport::Connection>> routes_;
  std::set<Retry*> retries_;
  bool in_read_pass_ = false;  // loop thread

  // Channels with credit to announce, from any thread; one flush is scheduled at a time.
  std::mutex credit_mu_;
  std::vector<std::shared_ptr<RemoteInputChannel>> credit_pending_;  // GUARDED_BY(credit_mu_)
  bool credit_flush_scheduled_ = false;                              // GUARDED_BY(credit_mu_)
  std::vector<std::shared_ptr<RemoteInputChannel>> credit_batch_;    // loop thread

  // Push-mode listeners to run, from any thread; one run is scheduled at a time.
  std::mutex listener_mu_;
  std::vector<std::shared_ptr<GateListener>> listeners_pending_;  // GUARDED_BY(listener_mu_)
  bool listeners_scheduled_ = false;                              // GUARDED_BY(listener_mu_)
  std::vector<std::shared_ptr<GateListener>> listener_batch_;     // loop thread
};

}  // namespace sluice::shuffle
