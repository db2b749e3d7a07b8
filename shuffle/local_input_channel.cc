#include "shuffle/local_input_channel.h"

#include <limits>

#include "shuffle/result_partition.h"

namespace sluice::shuffle {

LocalInputChannel::LocalInputChannel(InputGate* gate, uint32_t index, PartitionRegistry* registry,
                                     std::string partition_id, uint32_t subpartition)
    : InputChannel(gate, index),
      registry_(registry),
      partition_id_(std::move(partition_id)),
      subpartition_(subpartition) {}

LocalInputChannel::~LocalInputChannel() { Release(); }

Status LocalInputChannel::Start() {
  const auto timeout = gate_->options().request_timeout;
  std::shared_ptr<ResultPartition> partition = registry_->WaitFor(partition_id_, timeout);
  if (!partition) {
    return NotFound("local channel " + std::to_string(index_) + " of gate '" + gate_->name() +
                    "': partition '" + partition_id_ + "' was not registered within " +
                    std::to_string(timeout.count()) + " ms");
  }
  auto view = partition->CreateView(subpartition_, this);
  if (!view.ok()) return view.status();
  std::lock_guard lock(mu_);
  partition_ = std::move(partition);
  view_ = std::move(*view);
  return Status::Ok();
}

Result<std::optional<InputChannel::Next>> LocalInputChannel::GetNext() {
  std::lock_guard lock(mu_);
  if (!view_ || released_) return std::optional<Next>();
  auto item = view_->PollNext();
  if (!item.ok()) {
    return Status(item.status().code(), "local channel " + std::to_string(index_) +
                                            " (partition '" + partition_id_ + "' subpartition " +
                                            std::to_string(subpartition_) +
                                            "): " + item.status().message());
  }
  if (!item->has_value()) return std::optional<Next>();
  Next n;
  n.buffer = std::move((*item)->buffer);
  if (n.buffer.type() == buffer::DataType::kEndOfPartition) finished_ = true;
  n.more_available = !finished_ && view_->IsAvailable(std::numeric_limits<int32_t>::max());
  ++consumed_;
  return std::optional<Next>(std::move(n));
}

void LocalInputChannel::Release() {
  std::unique_ptr<SubpartitionView> view;
  {
    std::lock_guard lock(mu_);
    if (released_) return;
    released_ = true;
    view = std::move(view_);
  }
  if (view) view->Release();
}

ChannelState LocalInputChannel::State() const {
  std::lock_guard lock(mu_);
  ChannelState s;
  s.index = index_;
  s.description = "local channel " + std::to_string(index_) + " (partition '" + partition_id_ +
                  "' subpartition " + std::to_string(subpartition_) + ")";
  s.sender_backlog = view_ ? view_->backlog() : 0;
  s.expected_sequence = static_cast<uint32_t>(consumed_);
  s.finished = finished_;
  return s;
}

}  // namespace sluice::shuffle
