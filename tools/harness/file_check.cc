#include "tools/harness/file_check.h"

#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_map>

namespace sluice::harness {
namespace {

std::optional<std::string_view> KeyOf(std::string_view line, char delimiter, uint32_t field) {
  for (uint32_t i = 0; i < field; ++i) {
    auto pos = line.find(delimiter);
    if (pos == std::string_view::npos) return std::nullopt;
    line.remove_prefix(pos + 1);
  }
  return line.substr(0, line.find(delimiter));
}

}  // namespace

FileCheck CheckFilePartition(const std::vector<std::string>& inputs, char delimiter,
                             uint32_t key_field, const std::vector<std::string>& parts) {
  FileCheck r;
  std::unordered_map<std::string, int64_t> lines;  // expected count minus seen count
  for (const auto& path : inputs) {
    std::ifstream in(path);
    if (!in) {
      r.errors.push_back("cannot read input " + path);
      continue;
    }
    std::string line;
    while (std::getline(in, line)) {
      ++r.input_lines;
      if (!KeyOf(line, delimiter, key_field)) {
        ++r.keyless_lines;
        continue;
      }
      ++lines[line];
    }
  }
  std::unordered_map<std::string, size_t> key_part;
  for (size_t p = 0; p < parts.size(); ++p) {
    std::ifstream in(parts[p]);
    if (!in) {
      r.errors.push_back("consumer " + std::to_string(p) + " wrote no output file " + parts[p]);
      continue;
    }
    std::string line;
    while (std::getline(in, line)) {
      ++r.output_lines;
      auto it = lines.find(line);
      if (it == lines.end() || it->second <= 0) {
        ++r.unexpected;
      } else {
        --it->second;
      }
      if (auto key = KeyOf(line, delimiter, key_field)) {
        auto [k, inserted] = key_part.emplace(std::string(*key), p);
        if (!inserted && k->second != p && k->second != parts.size()) {
          ++r.split_keys;
          k->second = parts.size();  // count each key once
        }
      }
    }
  }
  for (const auto& [line, left] : lines) {
    if (left > 0) r.missing += static_cast<uint64_t>(left);
  }
  if (r.missing > 0) {
    r.errors.push_back(std::to_string(r.missing) + " input lines are in no output part");
  }
  if (r.unexpected > 0) {
    r.errors.push_back(std::to_string(r.unexpected) +
                       " output lines are not in the input (or appear more often)");
  }
  if (r.split_keys > 0) {
    r.errors.push_back(std::to_string(r.split_keys) + " keys went to more than one consumer");
  }
  return r;
}

}  // namespace sluice::harness
