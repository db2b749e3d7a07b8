#include "shuffle/shuffle_environment.h"

#include "shuffle/gate_listener.h"
#include "shuffle/local_input_channel.h"
#include "shuffle/remote_input_channel.h"
#include "shuffle/shuffle_client.h"
#include "shuffle/shuffle_server.h"
#include "transport/event_loop.h"

namespace sluice::shuffle {

ShuffleEnvironment::ShuffleEnvironment(const EnvironmentConfig& config) : config_(config) {
  config_.options.credit.segment_size = config.memory.segment_size;
}

Result<std::unique_ptr<ShuffleEnvironment>> ShuffleEnvironment::Start(
    const EnvironmentConfig& config) {
  if (Status st = auth::ValidateAuthConfig(config.auth, "node '" + config.node_name + "'");
      !st.ok()) {
    return st;
  }
  std::unique_ptr<ShuffleEnvironment> env(new ShuffleEnvironment(config));
  auto pool = buffer::NetworkBufferPool::Create(config.memory);
  if (!pool.ok()) return pool.status();
  env->pool_ = std::move(*pool);
  auto loop = transport::EventLoop::Start(config.node_name + "-io");
  if (!loop.ok()) return loop.status();
  env->loop_ = std::move(*loop);
  if (config.io_threads < 1 || config.io_threads > 2) {
    return InvalidArgument("io_threads = " + std::to_string(config.io_threads) +
                           " is not supported: use 1 (one IO thread serves and receives) or 2 "
                           "(one thread serves partitions, the other receives)");
  }
  if (config.io_threads == 2) {
    auto client_loop = transport::EventLoop::Start(config.node_name + "-io-in");
    if (!client_loop.ok()) return client_loop.status();
    env->client_loop_ = std::move(*client_loop);
  }
  if (config.listen) {
    ShuffleServerConfig sc;
    sc.bind_host = config.bind_host;
    sc.port = config.port;
    sc.options = env->config_.options;
    sc.node_name = config.node_name;
    sc.timeouts = config.timeouts;
    sc.write_high_water_bytes = config.write_high_water_bytes;
    sc.max_connections = config.max_connections;
    sc.max_connections_per_peer = config.max_connections_per_peer;
    sc.auth = config.auth;
    sc.control = config.control;
    auto server = ShuffleServer::Start(env->loop_.get(), &env->registry_, sc);
    if (!server.ok()) return server.status();
    env->server_ = std::move(*server);
  }
  ShuffleClientConfig cc;
  cc.options = env->config_.options;
  cc.node_name = config.node_name;
  cc.timeouts = config.timeouts;
  cc.auth = config.auth;
  env->client_ = std::make_unique<ShuffleClient>(
      env->client_loop_ ? env->client_loop_.get() : env->loop_.get(), cc);
  return env;
}

ShuffleEnvironment::~ShuffleEnvironment() { Stop(); }

uint16_t ShuffleEnvironment::port() const { return server_ ? server_->port() : 0; }

void ShuffleEnvironment::Stop() {
  if (client_) client_->Stop();
  if (server_) server_->Stop();
  if (client_loop_) client_loop_->Stop();
  if (loop_) loop_->Stop();
}

Result<std::shared_ptr<ResultPartition>> ShuffleEnvironment::CreatePartition(
    const std::string& id, uint32_t subpartitions, const std::string& access_token) {
  auto p = ResultPartition::Create(id, subpartitions, pool_, config_.options);
  if (!p.ok()) return p.status();
  if (Status st = registry_.Register(*p, access_token); !st.ok()) {
    (*p)->Release();
    return st;
  }
  return p;
}

void ShuffleEnvironment::ReleasePartition(const std::string& id) {
  if (auto p = registry_.Lookup(id)) {
    registry_.Unregister(id);
    p->Release();
  }
}

Result<std::unique_ptr<InputGate>> ShuffleEnvironment::CreateInputGate(
    const std::string& name, const std::vector<ChannelSpec>& channels) {
  return CreateInputGate(name, channels, nullptr);
}

Result<std::unique_ptr<InputGate>> ShuffleEnvironment::CreateInputGate(
    const std::string& name, const std::vector<ChannelSpec>& channels,
    std::function<void(InputGate&)> on_available) {
  uint32_t remote = 0;
  for (const ChannelSpec& c : channels) remote += c.remote.has_value() ? 1 : 0;
  auto gate = InputGate::Create(name, pool_, config_.options, remote);
  if (!gate.ok()) return gate.status();
  InputGate* g = gate->get();
  if (on_available) {
    ShuffleClient* client = client_.get();
    g->SetListener(std::make_shared<GateListener>(
        [g, fn = std::move(on_available)] { fn(*g); },  // g outlives every call (Close)
        [client](std::shared_ptr<GateListener> l) { client->ScheduleListener(std::move(l)); }));
  }
  for (uint32_t i = 0; i < channels.size(); ++i) {
    const ChannelSpec& c = channels[i];
    if (c.remote) {
      g->AddChannel(std::make_shared<RemoteInputChannel>(g, i, client_.get(), *c.remote,
                                                         c.partition_id, c.subpartition,
                                                         c.access_token));
    } else {
      g->AddChannel(std::make_shared<LocalInputChannel>(g, i, &registry_, c.partition_id,
                                                        c.subpartition));
    }
  }
  if (Status st = g->Start(); !st.ok()) {
    g->Close();
    return st;
  }
  return std::move(*gate);
}

}  // namespace sluice::shuffle
