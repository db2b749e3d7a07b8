// The producer half of the example shuffle: one ShuffleEnvironment serving `--producers`
// partitions, each with one subpartition per consumer task, filled with keyed records by one
// writer thread per partition (RecordWriter + KeyHashPartitioner on the record's key).
//
//   shuffle_producer --secret-file S --rendezvous R --done D
//                    --producers 3 --consumers 4 --records 20000 --keys 50
//
// Writes "<port> <job token>" to R once it serves (the consumer waits for it), waits until the
// consumer creates D (or 120 s), then releases everything and checks that every segment came
// home. Exit 0 when all went well, 1 otherwise. Progress goes to stderr.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sluice/shuffle/auth.h>
#include <sluice/shuffle/record_writer.h>
#include <sluice/shuffle/shuffle_environment.h>

#include "shuffle_example_common.h"

namespace {

using sluice::shuffle::RecordWriter;
using sluice::shuffle::ResultPartition;

// Tells the consumer where to connect and which job token to prove: written to a temporary
// name and renamed, so the consumer never reads half a file.
bool WriteRendezvous(const std::string& path, uint16_t port, const std::string& token) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << " " << token << "\n";
    if (!out) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return !ec;
}

// One writer thread: `records` records with keys 0..keys-1, then Finish.
sluice::Status WritePartition(std::shared_ptr<ResultPartition> partition, uint32_t producer,
                              uint64_t records, uint32_t keys) {
  RecordWriter writer(std::move(partition), std::make_unique<sluice::shuffle::KeyHashPartitioner>(
                                                example::MakePartitioner()));
  for (uint64_t seq = 0; seq < records; ++seq) {
    const std::string r = example::FormatRecord(
        {static_cast<uint32_t>((seq * 7 + producer) % keys), producer, seq});
    sluice::Status st = writer.Emit(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(r.data()), r.size()));
    if (!st.ok()) return st;
  }
  return writer.Finish();
}

bool WaitForFile(const std::string& path, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const example::Flags flags(argc, argv);
  const auto producers = static_cast<uint32_t>(flags.Int("producers"));
  const auto consumers = static_cast<uint32_t>(flags.Int("consumers"));
  const uint64_t records = flags.Int("records");
  const auto keys = static_cast<uint32_t>(flags.Int("keys"));
  if (producers == 0 || consumers == 0 || keys == 0) {
    std::fprintf(stderr, "producer: --producers, --consumers and --keys must be >= 1\n");
    return 2;
  }
  auto env = example::StartEnvironment("producer", flags.Get("secret-file"), /*listen=*/true);
  if (!env.ok()) {
    std::fprintf(stderr, "producer: %s\n", env.status().ToString().c_str());
    return 1;
  }
  // A job token: consumers must prove it in every partition request (docs/embedding.md).
  const std::string token = sluice::shuffle::auth::MakeJobToken();
  std::vector<std::shared_ptr<ResultPartition>> partitions;
  for (uint32_t p = 0; p < producers; ++p) {
    auto part = (*env)->CreatePartition(example::PartitionId(p), consumers, token);
    if (!part.ok()) {
      std::fprintf(stderr, "producer: %s\n", part.status().ToString().c_str());
      return 1;
    }
    partitions.push_back(*part);
  }
  if (!WriteRendezvous(flags.Get("rendezvous"), (*env)->port(), token)) {
    std::fprintf(stderr, "producer: cannot write %s\n", flags.Get("rendezvous").c_str());
    return 1;
  }
  std::fprintf(stderr, "producer: serving %u partitions on %s\n", producers,
               (*env)->endpoint().ToString().c_str());

  std::vector<sluice::Status> results(producers);
  std::vector<std::thread> writers;
  for (uint32_t p = 0; p < producers; ++p) {
    writers.emplace_back([&, p] { results[p] = WritePartition(partitions[p], p, records, keys); });
  }
  for (std::thread& t : writers) t.join();
  bool ok = true;
  for (uint32_t p = 0; p < producers; ++p) {
    if (!results[p].ok()) {
      std::fprintf(stderr, "producer: partition %u: %s\n", p, results[p].ToString().c_str());
      ok = false;
    }
  }
  if (!WaitForFile(flags.Get("done"), std::chrono::seconds(120))) {
    std::fprintf(stderr, "producer: the consumer never said it was done\n");
    ok = false;
  }
  partitions.clear();
  for (uint32_t p = 0; p < producers; ++p) (*env)->ReleasePartition(example::PartitionId(p));
  (*env)->Stop();
  if (!example::NoSegmentLeaked(**env)) {
    std::fprintf(stderr, "producer: segments leaked: %s\n",
                 (*env)->pool()->DebugString().c_str());
    ok = false;
  }
  std::fprintf(stderr, "producer: wrote %llu records: %s\n",
               static_cast<unsigned long long>(records * producers), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
