// Verifies a file-partition job from the outside: the consumers' part files hold exactly the
// input lines that have the key field (as a multiset), and every key went to one part only.
// Thread-compatible free function.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::harness {

struct FileCheck {
  uint64_t input_lines = 0;
  uint64_t keyless_lines = 0;  // lines without the key field (the producers skip them)
  uint64_t output_lines = 0;
  uint64_t missing = 0;        // expected lines not found in any part
  uint64_t unexpected = 0;     // part lines that are not (or too often) in the input
  uint64_t split_keys = 0;     // keys found in more than one part
  std::vector<std::string> errors;
};

FileCheck CheckFilePartition(const std::vector<std::string>& inputs, char delimiter,
                             uint32_t key_field, const std::vector<std::string>& parts);

}  // namespace sluice::harness
