#include "shuffle_example_common.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <sluice/shuffle/auth.h>

namespace example {

std::string FormatRecord(const Record& r) {
  return "k" + std::to_string(r.key) + "|p" + std::to_string(r.producer) + "|" +
         std::to_string(r.seq);
}

bool ParseRecord(std::span<const uint8_t> bytes, Record* out) {
  const std::string s(bytes.begin(), bytes.end());
  unsigned key = 0, producer = 0;
  unsigned long long seq = 0;
  int used = 0;
  if (std::sscanf(s.c_str(), "k%u|p%u|%llu%n", &key, &producer, &seq, &used) != 3 ||
      static_cast<size_t>(used) != s.size()) {
    return false;
  }
  *out = {key, producer, seq};
  return true;
}

std::span<const uint8_t> KeyBytes(std::span<const uint8_t> record) {
  size_t n = 0;
  while (n < record.size() && record[n] != '|') ++n;
  return record.first(n);
}

sluice::shuffle::KeyHashPartitioner MakePartitioner() {
  return sluice::shuffle::KeyHashPartitioner::OnKeyBytes(&KeyBytes);
}

std::string PartitionId(uint32_t producer) { return "example/p" + std::to_string(producer); }

Flags::Flags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.substr(0, 2) != "--" || i + 1 >= argc) {
      std::fprintf(stderr, "usage: %s --name value ... (bad argument '%s')\n", argv[0], argv[i]);
      std::exit(2);
    }
    values_[std::string(arg.substr(2))] = argv[++i];
  }
}

std::string Flags::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    std::fprintf(stderr, "missing --%s\n", name.c_str());
    std::exit(2);
  }
  return it->second;
}

uint64_t Flags::Int(const std::string& name) const {
  const std::string v = Get(name);
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0') {
    std::fprintf(stderr, "--%s: '%s' is not a number\n", name.c_str(), v.c_str());
    std::exit(2);
  }
  return n;
}

sluice::Result<std::unique_ptr<sluice::shuffle::ShuffleEnvironment>> StartEnvironment(
    const std::string& node_name, const std::string& secret_file, bool listen) {
  auto secret = sluice::shuffle::auth::ReadSecretFile(secret_file);
  if (!secret.ok()) return secret.status();
  sluice::shuffle::EnvironmentConfig config;
  config.node_name = node_name;
  config.memory.network_memory = 16u << 20;
  config.memory.segment_size = 32u << 10;
  config.options.buffer_timeout = std::chrono::milliseconds(10);
  config.listen = listen;
  config.bind_host = "127.0.0.1";
  config.auth.secret = *secret;
  return sluice::shuffle::ShuffleEnvironment::Start(config);
}

bool NoSegmentLeaked(sluice::shuffle::ShuffleEnvironment& env) {
  const auto& pool = env.pool();
  for (int i = 0; i < 500 && pool->available_segments() != pool->total_segments(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pool->available_segments() == pool->total_segments();
}

}  // namespace example
