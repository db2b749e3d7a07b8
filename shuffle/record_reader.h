// RecordReader: records out of an InputGate, reassembled across buffers per channel, with the
// channel each came from. Thread-compatible (the consumer's thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "shuffle/input_gate.h"
#include "shuffle/record_serializer.h"

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

  // The gate must outlive the reader.
  explicit RecordReader(InputGate* gate);

  // The next record or event. Errors: a channel failed, or a channel ended inside a record.
  Result<Item> Next(std::chrono::milliseconds timeout);

 private:
  InputGate* const gate_;
  std::vector<RecordDeserializer> deserializers_;
  std::vector<uint32_t> pending_;  // channels whose deserializer may hold more records
  buffer::Buffer event_;           // keeps an event's payload alive until the next call
};

}  // namespace sluice::shuffle
