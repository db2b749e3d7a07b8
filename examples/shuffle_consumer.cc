// The consumer half of the example shuffle: one ShuffleEnvironment (not listening) with one
// InputGate per consumer task; gate s reads subpartition s of every producer's partition over
// TCP, proving the job token, and a RecordReader turns its buffers back into records.
//
//   shuffle_consumer --secret-file S --rendezvous R --done D
//                    --producers 3 --consumers 4 --records 20000 --keys 50
//
// Checks what arrived: every (producer, seq) exactly once, every record on the subpartition
// its key hashes to, every key on one consumer task only. Creates D when done (the producer
// then shuts down), checks that every segment came home, and prints one summary line on
// stdout. Exit 0 when everything checked out, 1 otherwise.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sluice/shuffle/input_gate.h>
#include <sluice/shuffle/record_reader.h>
#include <sluice/shuffle/shuffle_environment.h>

#include "shuffle_example_common.h"

namespace {

using sluice::shuffle::RecordReader;

struct TaskResult {
  std::string error;                             // empty: no error
  std::set<std::pair<uint32_t, uint64_t>> seen;  // (producer, seq)
  std::set<uint32_t> keys;
  uint64_t records = 0;
  uint64_t duplicates = 0;
  uint64_t misrouted = 0;  // records whose key hashes to another subpartition
};

// Waits for the producer's "<port> <token>" (up to 60 s).
bool ReadRendezvous(const std::string& path, uint16_t* port, std::string* token) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path);
    if (in >> *port >> *token) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Reads gate `task` to its end and checks every record.
void RunTask(sluice::shuffle::InputGate* gate, uint32_t task, uint32_t consumers,
             TaskResult* out) {
  RecordReader reader(gate);
  auto partitioner = example::MakePartitioner();
  while (true) {
    auto item = reader.Next(std::chrono::seconds(30));
    if (!item.ok()) {
      out->error = item.status().ToString();
      return;
    }
    if (item->kind == RecordReader::Kind::kEndOfInput) return;
    if (item->kind == RecordReader::Kind::kTimeout) {
      out->error = "no record for 30 s on " + gate->name();
      return;
    }
    if (item->kind != RecordReader::Kind::kRecord) continue;
    example::Record r;
    if (!example::ParseRecord(item->data, &r)) {
      out->error = "malformed record on " + gate->name();
      return;
    }
    ++out->records;
    if (!out->seen.insert({r.producer, r.seq}).second) ++out->duplicates;
    if (partitioner.Select(item->data, consumers) != task) ++out->misrouted;
    out->keys.insert(r.key);
  }
}

// The checks over every task's result; prints what failed to stderr.
bool Verify(const std::vector<TaskResult>& results, uint32_t producers, uint64_t records,
            uint32_t keys) {
  bool ok = true;
  std::set<std::pair<uint32_t, uint64_t>> all;
  std::map<uint32_t, uint32_t> tasks_of_key;
  uint64_t total = 0;
  for (size_t t = 0; t < results.size(); ++t) {
    const TaskResult& r = results[t];
    if (!r.error.empty() || r.duplicates != 0 || r.misrouted != 0) {
      std::fprintf(stderr, "consumer task %zu: error '%s', %llu duplicates, %llu misrouted\n", t,
                   r.error.c_str(), static_cast<unsigned long long>(r.duplicates),
                   static_cast<unsigned long long>(r.misrouted));
      ok = false;
    }
    total += r.records;
    all.insert(r.seen.begin(), r.seen.end());
    for (uint32_t k : r.keys) ++tasks_of_key[k];
  }
  if (total != producers * records || all.size() != producers * records) {
    std::fprintf(stderr, "consumer: %llu records (%zu distinct), expected %llu\n",
                 static_cast<unsigned long long>(total), all.size(),
                 static_cast<unsigned long long>(producers * records));
    ok = false;
  }
  for (const auto& [key, tasks] : tasks_of_key) {
    if (tasks != 1) {
      std::fprintf(stderr, "consumer: key %u reached %u tasks\n", key, tasks);
      ok = false;
    }
  }
  if (tasks_of_key.size() != std::min<uint64_t>(keys, records * producers)) {
    std::fprintf(stderr, "consumer: %zu keys seen, expected %u\n", tasks_of_key.size(), keys);
    ok = false;
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const example::Flags flags(argc, argv);
  const auto producers = static_cast<uint32_t>(flags.Int("producers"));
  const auto consumers = static_cast<uint32_t>(flags.Int("consumers"));
  const uint64_t records = flags.Int("records");
  const auto keys = static_cast<uint32_t>(flags.Int("keys"));
  uint16_t port = 0;
  std::string token;
  if (!ReadRendezvous(flags.Get("rendezvous"), &port, &token)) {
    std::fprintf(stderr, "consumer: no producer rendezvous in %s\n", flags.Get("rendezvous").c_str());
    return 1;
  }
  auto env = example::StartEnvironment("consumer", flags.Get("secret-file"), /*listen=*/false);
  if (!env.ok()) {
    std::fprintf(stderr, "consumer: %s\n", env.status().ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<sluice::shuffle::InputGate>> gates;
  for (uint32_t s = 0; s < consumers; ++s) {
    std::vector<sluice::shuffle::ChannelSpec> channels;
    for (uint32_t p = 0; p < producers; ++p) {
      channels.push_back({example::PartitionId(p), s, sluice::transport::Endpoint{"127.0.0.1", port},
                          token});
    }
    auto gate = (*env)->CreateInputGate("task-" + std::to_string(s), channels);
    if (!gate.ok()) {
      std::fprintf(stderr, "consumer: %s\n", gate.status().ToString().c_str());
      return 1;
    }
    gates.push_back(std::move(*gate));
  }
  std::vector<TaskResult> results(consumers);
  std::vector<std::thread> tasks;
  for (uint32_t s = 0; s < consumers; ++s) {
    tasks.emplace_back([&, s] { RunTask(gates[s].get(), s, consumers, &results[s]); });
  }
  for (std::thread& t : tasks) t.join();
  bool ok = Verify(results, producers, records, keys);
  std::ofstream(flags.Get("done")) << "done\n";
  gates.clear();  // releases channels and floating buffers
  (*env)->Stop();
  if (!example::NoSegmentLeaked(**env)) {
    std::fprintf(stderr, "consumer: segments leaked: %s\n", (*env)->pool()->DebugString().c_str());
    ok = false;
  }
  uint64_t total = 0;
  for (const TaskResult& r : results) total += r.records;
  std::printf("consumer: %llu records from %u producers in %u tasks, %u keys each on one task: %s\n",
              static_cast<unsigned long long>(total), producers, consumers, keys,
              ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
