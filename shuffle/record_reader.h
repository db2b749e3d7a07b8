// RecordReader: records out of an InputGate, reassembled across buffers per channel, with the
// channel each came from. Thread-compatible (the consumer's thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "sluice/shuffle/input_gate.h"
#include "sluice/shuffle/record_serializer.h"

namespace sluice::shuffle {

class RecordReader {
 public:
  enum class Kind {
    kRecord,      // a record (view valid until the next call)
    kEvent,       // a user event (its payload in `data`)
    kEndOfInput,  // every channel finished
    kTimeout,     // nothing arrived within the timeout
  };
  struct Item {
    Kind kind = Kind::kTimeout;
    std::span<const uint8_t> data;
    uint32_t channel = 0;
  };

  // The gate must outlive the reader. Records longer than gate->max_record_size() are refused.
  explicit RecordReader(InputGate* gate);

  // The next record or event. Errors: a channel failed, or a channel ended inside a record.
  // A record longer than the limit fails its channel alone (the error names the channel, the
  // length and the limit; the channel is released, which cancels its request); later calls
  // go on with the other channels.
  Result<Item> Next(std::chrono::milliseconds timeout);
  // Changes the record limit of every channel (e.g. to a job's record_size_max).
  void SetMaxRecordSize(uint32_t bytes);

 private:
  InputGate* const gate_;
  Status FailChannel(uint32_t channel, const Status& error);

  std::vector<RecordDeserializer> deserializers_;
  std::vector<uint8_t> failed_;    // channels failed here: what still arrives is dropped
  std::vector<uint32_t> pending_;  // channels whose deserializer may hold more records
  buffer::Buffer event_;           // keeps an event's payload alive until the next call
};

}  // namespace sluice::shuffle
