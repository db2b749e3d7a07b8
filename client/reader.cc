#include "client/reader.h"

#include <map>

#include "client/ext_control.h"
#include "shuffle/record_reader.h"
#include "shuffle/shuffle_environment.h"
#include "tools/control/control_client.h"

namespace sluice::client {

struct Reader::State {
  std::unique_ptr<shuffle::ShuffleEnvironment> env;
  std::unique_ptr<shuffle::InputGate> gate;
  std::unique_ptr<shuffle::RecordReader> records;
  std::chrono::milliseconds timeout{0};
  std::string what;  // "job 'J' subpartition K"
};

namespace {

// "host:port" or "[v6]:port".
Result<transport::Endpoint> ParseNode(const std::string& node) {
  const size_t colon = node.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == node.size()) {
    return InvalidArgument("map output node '" + node + "' is not host:port");
  }
  std::string host = node.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  uint32_t port = 0;
  for (char c : node.substr(colon + 1)) {
    if (c < '0' || c > '9' || (port = port * 10 + static_cast<uint32_t>(c - '0')) > 65535) {
      return InvalidArgument("map output node '" + node + "' has no valid port");
    }
  }
  if (port == 0) return InvalidArgument("map output node '" + node + "' has port 0");
  return transport::Endpoint{host, static_cast<uint16_t>(port)};
}

struct NodeGroup {
  transport::Endpoint endpoint;
  std::vector<MapOutputKey> outputs;
  std::string partition_id;
};

// Groups by node in first-seen order; checks the job and that no partition is named twice.
Result<std::vector<std::pair<std::string, NodeGroup>>> Group(const ReaderOptions& o) {
  if (o.secret.empty()) {  // named here, before a daemon answers "authentication failed"
    return InvalidArgument("job '" + o.job + "': no secret: give ReaderOptions::secret, the "
                           "cluster's shared secret (control::FindSecret finds it as sluiced "
                           "does)");
  }
  if (o.map_outputs.empty()) {
    return InvalidArgument("job '" + o.job + "': no map outputs to read");
  }
  std::vector<std::pair<std::string, NodeGroup>> groups;
  std::map<std::string, size_t> index;
  std::map<uint32_t, uint32_t> seen;  // partition -> attempt
  for (const MapOutput& m : o.map_outputs) {
    if (m.job != o.job) {
      return InvalidArgument("map output of job '" + m.job + "' given to a reader of job '" +
                             o.job + "'");
    }
    if (auto [it, fresh] = seen.emplace(m.partition, m.attempt); !fresh) {
      return InvalidArgument("job '" + o.job + "' partition " + std::to_string(m.partition) +
                             " is named twice (attempts " + std::to_string(it->second) + " and " +
                             std::to_string(m.attempt) + "); name the one committed attempt");
    }
    auto [it, fresh] = index.emplace(m.node, groups.size());
    if (fresh) {
      auto ep = ParseNode(m.node);
      if (!ep.ok()) return ep.status();
      groups.push_back({m.node, NodeGroup{*ep, {}, {}}});
    }
    groups[it->second].second.outputs.push_back({m.partition, m.attempt});
  }
  return groups;
}

}  // namespace

Reader::Reader(std::unique_ptr<State> state) : state_(std::move(state)) {}

Reader::~Reader() {
  if (!state_) return;
  state_->records.reset();
  state_->gate.reset();
  if (state_->env) state_->env->Stop();
}

Result<std::unique_ptr<Reader>> Reader::OpenSubpartition(const ReaderOptions& o) {
  auto grouped = Group(o);
  if (!grouped.ok()) return grouped.status();
  auto& groups = *grouped;
  control::ControlClientOptions co;
  co.timeout = o.timeout;
  co.client_name = "sluice-reader";
  co.secret = o.secret;
  uint32_t segment_size = 0;
  for (auto& [node, g] : groups) {
    auto daemon = control::ControlClient::Connect(g.endpoint.host, g.endpoint.port, co);
    if (!daemon.ok()) return daemon.status();
    if (segment_size != 0 && (*daemon)->segment_size() != segment_size) {
      return InvalidArgument("daemons disagree on segment_size: " + node + " uses " +
                             std::to_string((*daemon)->segment_size()) + ", others " +
                             std::to_string(segment_size));
    }
    segment_size = (*daemon)->segment_size();
    auto id = RegisterReadSet(**daemon, o.job, o.token, g.outputs);
    if (!id.ok()) return id.status();
    g.partition_id = *id;
  }
  auto state = std::make_unique<State>();
  state->timeout = o.timeout;
  state->what = "job '" + o.job + "' subpartition " + std::to_string(o.subpartition);
  shuffle::EnvironmentConfig ec;
  ec.listen = false;
  ec.node_name = "sluice-reader";
  ec.memory.segment_size = segment_size;
  const uint64_t segments =
      groups.size() * (o.buffers_per_channel + 1) + o.floating_buffers + 4;
  ec.memory.network_memory = segments * segment_size;
  ec.options.credit.buffers_per_channel = o.buffers_per_channel;
  ec.options.credit.floating_per_gate = o.floating_buffers;
  ec.auth.secret = o.secret;
  auto env = shuffle::ShuffleEnvironment::Start(ec);
  if (!env.ok()) return env.status();
  state->env = std::move(*env);
  std::vector<shuffle::ChannelSpec> channels;
  for (auto& [node, g] : groups) {
    shuffle::ChannelSpec c;
    c.partition_id = g.partition_id;
    c.subpartition = o.subpartition;
    c.remote = g.endpoint;
    c.access_token = o.token;
    channels.push_back(std::move(c));
  }
  auto gate = state->env->CreateInputGate("reader " + o.job + "/" +
                                              std::to_string(o.subpartition), channels);
  if (!gate.ok()) return gate.status();
  state->gate = std::move(*gate);
  state->gate->SetMaxRecordSize(o.max_record_size);
  state->records = std::make_unique<shuffle::RecordReader>(state->gate.get());
  std::unique_ptr<Reader> reader(new Reader(std::move(state)));
  for (auto& [node, g] : groups) reader->nodes_.push_back(node);
  return reader;
}

Result<std::optional<std::span<const uint8_t>>> Reader::Next() {
  if (ended_) return std::optional<std::span<const uint8_t>>();
  while (true) {
    auto item = state_->records->Next(state_->timeout);
    if (!item.ok()) {
      return Status(item.status().code(),
                    "reading " + state_->what + ": " + item.status().message());
    }
    switch (item->kind) {
      case shuffle::RecordReader::Kind::kRecord:
        ++records_;
        return std::optional<std::span<const uint8_t>>(item->data);
      case shuffle::RecordReader::Kind::kEvent: continue;
      case shuffle::RecordReader::Kind::kEndOfInput:
        ended_ = true;
        return std::optional<std::span<const uint8_t>>();
      case shuffle::RecordReader::Kind::kTimeout: {
        std::string nodes;
        for (const auto& n : nodes_) nodes += (nodes.empty() ? "" : ", ") + n;
        return TimeoutError("reading " + state_->what + ": no data for " +
                            std::to_string(state_->timeout.count()) + " ms from " + nodes);
      }
    }
  }
}

}  // namespace sluice::client
