#include "client/map_output.h"

#include <charconv>
#include <limits>
#include <vector>

namespace sluice::client {
namespace {

constexpr std::string_view kVersion = "v1";
constexpr char kHex[] = "0123456789ABCDEF";

void AppendEscaped(std::string& out, std::string_view s) {
  for (unsigned char c : s) {
    if (c == ';' || c == '%' || c < 0x21 || c > 0x7e) {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

Result<std::string> Unescape(std::string_view s, std::string_view field) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    int hi = i + 2 < s.size() ? HexValue(s[i + 1]) : -1;
    int lo = i + 2 < s.size() ? HexValue(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return InvalidArgument("map output: bad %-escape in " + std::string(field));
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

template <typename T>
Result<T> ParseNumber(std::string_view s, std::string_view field) {
  T value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) {
    return InvalidArgument("map output: " + std::string(field) + " '" + std::string(s) +
                           "' is not a number in range");
  }
  return value;
}

}  // namespace

std::string EncodeMapOutput(const MapOutput& o) {
  std::string out(kVersion);
  out.push_back(';');
  AppendEscaped(out, o.node);
  out.push_back(';');
  AppendEscaped(out, o.job);
  for (uint64_t v : {uint64_t{o.partition}, uint64_t{o.attempt}, uint64_t{o.subpartitions},
                     o.bytes, o.records}) {
    out.push_back(';');
    out += std::to_string(v);
  }
  return out;
}

Result<MapOutput> DecodeMapOutput(std::string_view text) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  while (true) {
    size_t semi = text.find(';', start);
    fields.push_back(text.substr(start, semi == std::string_view::npos ? semi : semi - start));
    if (semi == std::string_view::npos) break;
    start = semi + 1;
  }
  if (fields.size() != 8) {
    return InvalidArgument("map output: expected 8 ';'-separated fields, got " +
                           std::to_string(fields.size()) + " (use EncodeMapOutput's text)");
  }
  if (fields[0] != kVersion) {
    return InvalidArgument("map output: unknown version '" + std::string(fields[0]) +
                           "' (this library reads v1)");
  }
  MapOutput o;
  auto node = Unescape(fields[1], "node");
  if (!node.ok()) return node.status();
  auto job = Unescape(fields[2], "job");
  if (!job.ok()) return job.status();
  if (node->empty() || job->empty()) return InvalidArgument("map output: empty node or job");
  o.node = std::move(*node);
  o.job = std::move(*job);
  auto partition = ParseNumber<uint32_t>(fields[3], "partition");
  if (!partition.ok()) return partition.status();
  auto attempt = ParseNumber<uint32_t>(fields[4], "attempt");
  if (!attempt.ok()) return attempt.status();
  auto subs = ParseNumber<uint32_t>(fields[5], "subpartitions");
  if (!subs.ok()) return subs.status();
  auto bytes = ParseNumber<uint64_t>(fields[6], "bytes");
  if (!bytes.ok()) return bytes.status();
  auto records = ParseNumber<uint64_t>(fields[7], "records");
  if (!records.ok()) return records.status();
  o.partition = *partition;
  o.attempt = *attempt;
  o.subpartitions = *subs;
  o.bytes = *bytes;
  o.records = *records;
  return o;
}

}  // namespace sluice::client
