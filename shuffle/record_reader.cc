#include "shuffle/record_reader.h"

#include <string>

namespace sluice::shuffle {

RecordReader::RecordReader(InputGate* gate)
    : gate_(gate), deserializers_(gate->num_channels()), failed_(gate->num_channels(), 0) {
  SetMaxRecordSize(gate->max_record_size());
}

void RecordReader::SetMaxRecordSize(uint32_t bytes) {
  for (RecordDeserializer& d : deserializers_) d.SetMaxRecordLength(bytes);
}

Status RecordReader::FailChannel(uint32_t channel, const Status& error) {
  failed_[channel] = 1;
  deserializers_[channel].Clear();
  InputChannel* ch = gate_->channel(channel);
  Status st(error.code(), ch->State().description + ": " + error.message());
  ch->Release();  // gives its buffers back and cancels its request; siblings go on
  return st;
}

Result<RecordReader::Item> RecordReader::Next(std::chrono::milliseconds timeout) {
  if (event_) event_.Release();
  while (true) {
    // Records left in a buffer we already have come first.
    while (!pending_.empty()) {
      const uint32_t ch = pending_.back();
      std::span<const uint8_t> rec;
      auto r = deserializers_[ch].GetNext(&rec);
      if (!r.ok()) {
        pending_.pop_back();
        return FailChannel(ch, r.status());
      }
      if (*r == RecordDeserializer::Next::kRecord) return Item{Kind::kRecord, rec, ch};
      pending_.pop_back();
    }
    auto next = gate_->GetNext(timeout);
    if (!next.ok()) return next.status();
    if (!next->has_value()) {
      return Item{gate_->IsFinished() ? Kind::kEndOfInput : Kind::kTimeout, {}, 0};
    }
    BufferOrEvent& boe = **next;
    if (failed_[boe.channel]) continue;  // in flight when its channel failed
    switch (boe.buffer.type()) {
      case buffer::DataType::kData:
        deserializers_[boe.channel].SetNextBuffer(std::move(boe.buffer));
        pending_.push_back(boe.channel);
        break;
      case buffer::DataType::kEvent:
        event_ = std::move(boe.buffer);
        return Item{Kind::kEvent, event_.bytes(), boe.channel};
      case buffer::DataType::kEndOfPartition:
        if (deserializers_[boe.channel].HasPartialRecord()) {
          return ProtocolError("channel " + std::to_string(boe.channel) +
                               " ended in the middle of a record");
        }
        deserializers_[boe.channel].Clear();
        break;
    }
  }
}

}  // namespace sluice::shuffle
