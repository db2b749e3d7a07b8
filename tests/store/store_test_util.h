// Test helpers (not API) for the external store: write records into pool buffers the way a
// writer does, and drain a SubpartitionView the way the network server does.
#pragma once

#include <gtest/gtest.h>

#include <cstring>

#include <memory>
#include <string>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/record_serializer.h"
#include "shuffle/subpartition_view.h"
#include "store/partition_store.h"

namespace sluice::store::testing {

// "p<partition>a<attempt>s<sub>#<seq>": which writer wrote it, in which order.
inline std::string RecordText(uint32_t partition, uint32_t attempt, uint32_t sub, uint64_t seq) {
  return "p" + std::to_string(partition) + "a" + std::to_string(attempt) + "s" +
         std::to_string(sub) + "#" + std::to_string(seq);
}

// Packs records into buffers from `pool` (direct recycler: a released buffer goes straight
// home) and appends each full buffer, then the last one. Records never span buffers here, which
// the store does not care about either way.
class TestWriter {
 public:
  TestWriter(PartitionStore* store, std::shared_ptr<buffer::NetworkBufferPool> pool, WriterId id)
      : store_(store), pool_(std::move(pool)), id_(id) {}

  // Appends `n` records "RecordText(...)" of `pad` extra bytes to subpartition `sub`.
  Status Write(uint32_t partition, uint32_t attempt, uint32_t sub, uint64_t first, uint64_t n,
               size_t pad = 0) {
    buffer::Buffer b;
    uint32_t in_buffer = 0;
    for (uint64_t i = first; i < first + n; ++i) {
      std::string rec = RecordText(partition, attempt, sub, i) + std::string(pad, '.');
      const size_t need = shuffle::kRecordLengthBytes + rec.size();
      if (b.valid() && b.size() + need > b.capacity()) {
        if (Status st = Append(sub, std::move(b), in_buffer); !st.ok()) return st;
        b = buffer::Buffer();
        in_buffer = 0;
      }
      if (!b.valid()) {
        buffer::MemorySegment* seg = pool_->TryRequestSegment();
        if (seg == nullptr) return ResourceExhausted("test pool is empty");
        b = buffer::Buffer::Wrap(seg, pool_->direct_recycler());
      }
      uint8_t* p = b.data() + b.size();
      shuffle::StoreRecordLength(p, static_cast<uint32_t>(rec.size()));
      std::memcpy(p + shuffle::kRecordLengthBytes, rec.data(), rec.size());
      b.SetSize(static_cast<uint32_t>(b.size() + need));
      ++in_buffer;
    }
    if (b.valid()) return Append(sub, std::move(b), in_buffer);
    return Status::Ok();
  }
  WriterId id() const { return id_; }

 private:
  // Appends and waits for the spill it may have asked for (the store spills on its own thread),
  // so a test sees the same memory and disk figures after every buffer.
  Status Append(uint32_t sub, buffer::Buffer b, uint32_t records) {
    Status st = store_->Append(id_, sub, std::move(b), records);
    store_->WaitForSpills();
    return st;
  }

  PartitionStore* store_;
  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  WriterId id_;
};

class CountingListener : public shuffle::SubpartitionListener {
 public:
  void NotifyDataAvailable() override { notifications.fetch_add(1); }
  std::atomic<int> notifications{0};
};

struct Drained {
  std::vector<std::string> records;
  bool ended = false;   // the end-of-partition event arrived
  Status error;         // PollNext's error, if any
  uint64_t buffers = 0;
};

// Polls until nothing is readable (or the end / an error), releasing every buffer.
inline void DrainAvailable(shuffle::SubpartitionView* view, Drained* d) {
  shuffle::RecordDeserializer des;
  while (true) {
    auto item = view->PollNext();
    if (!item.ok()) {
      d->error = item.status();
      return;
    }
    if (!item->has_value()) return;
    buffer::Buffer b = std::move((*item)->buffer);
    if (b.type() == buffer::DataType::kEndOfPartition) {
      d->ended = true;
      return;
    }
    ++d->buffers;
    des.SetNextBuffer(std::move(b));
    std::span<const uint8_t> rec;
    while (true) {
      auto n = des.GetNext(&rec);
      if (!n.ok()) {
        d->error = n.status();
        return;
      }
      if (*n != shuffle::RecordDeserializer::Next::kRecord) break;
      d->records.emplace_back(reinterpret_cast<const char*>(rec.data()), rec.size());
    }
    des.Clear();
  }
}

// Strips the padding: "p1a0s2#7...." -> "p1a0s2#7".
inline std::vector<std::string> Stripped(const std::vector<std::string>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.substr(0, r.find('.')));
  return out;
}

inline std::vector<std::string> Expected(uint32_t partition, uint32_t attempt, uint32_t sub,
                                         uint64_t n) {
  std::vector<std::string> out;
  for (uint64_t i = 0; i < n; ++i) out.push_back(RecordText(partition, attempt, sub, i));
  return out;
}

}  // namespace sluice::store::testing
