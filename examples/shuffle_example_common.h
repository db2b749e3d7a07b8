// What the example's producer and consumer agree on: the record format, the key, the
// partitioner, the environment configuration, and a tiny flag reader.
//
// A record is text: "k<key>|p<producer>|<seq>". The key is everything before the first '|';
// records with the same key go to the same subpartition (KeyHashPartitioner on the key bytes),
// so one consumer task sees every record of a key.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include <sluice/shuffle/record_writer.h>
#include <sluice/shuffle/shuffle_environment.h>

namespace example {

struct Record {
  uint32_t key = 0;
  uint32_t producer = 0;
  uint64_t seq = 0;
};

std::string FormatRecord(const Record& r);
// False when `bytes` is not a record of this example.
bool ParseRecord(std::span<const uint8_t> bytes, Record* out);
// The key bytes of a record: up to the first '|'.
std::span<const uint8_t> KeyBytes(std::span<const uint8_t> record);
// The partitioner both processes use (the consumer re-checks the producer's choice).
sluice::shuffle::KeyHashPartitioner MakePartitioner();
// "example/p<producer>": the partition id of one producer.
std::string PartitionId(uint32_t producer);

// --name value flags; every value is a string (Int parses, exiting 2 on a bad number).
class Flags {
 public:
  Flags(int argc, char** argv);
  std::string Get(const std::string& name) const;  // exits 2 when missing
  uint64_t Int(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

// An environment with the shared secret from `secret_file` (auth on, as in production).
sluice::Result<std::unique_ptr<sluice::shuffle::ShuffleEnvironment>> StartEnvironment(
    const std::string& node_name, const std::string& secret_file, bool listen);

// Every segment back in the environment's NetworkBufferPool (buffers come home
// asynchronously after the last write: waits up to 5 s).
bool NoSegmentLeaked(sluice::shuffle::ShuffleEnvironment& env);

}  // namespace example
