// Tests of ResultPartition and its subpartition views. Every test ends with the leak check
// (TearDown): every segment back in the global pool, no local pool alive.
#include "shuffle/result_partition.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/record_serializer.h"
#include "testutil/pools.h"
#include "testutil/records.h"
#include "testutil/sanitizer.h"
#include "testutil/wait.h"

namespace sluice::shuffle {
namespace {

using buffer::DataType;
using buffer::NetworkBufferPool;
using namespace std::chrono_literals;

int Scaled(int n) { return testutil::SanitizerScaled(n, 3); }

constexpr uint32_t kSegment = 4096;
// A record of this size fills exactly one buffer (4-byte length prefix + payload).
constexpr uint32_t kOneBufferRecord = kSegment - kRecordLengthBytes;

// --- Test records: testutil/records.h's sized records, at least 16 bytes -------------------

using testutil::sized::CheckRecord;
using testutil::sized::MakeRecord;
using testutil::sized::WriteRecord;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Wakes the consumer thread of a test; every listener of the test rings the same bell.
class Doorbell {
 public:
  void Ring() {
    {
      std::lock_guard lock(mu_);
      ++rings_;
    }
    cv_.notify_all();
  }
  void Wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    const uint64_t seen = rings_;
    cv_.wait_for(lock, timeout, [&] { return rings_ != seen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t rings_ = 0;
};

class CountingListener : public SubpartitionListener {
 public:
  explicit CountingListener(Doorbell* bell = nullptr) : bell_(bell) {}
  void NotifyDataAvailable() override {
    count_.fetch_add(1);
    if (bell_ != nullptr) bell_->Ring();
  }
  int count() const { return count_.load(); }

 private:
  Doorbell* bell_;
  std::atomic<int> count_{0};
};

// One consumer of one subpartition: polls its view, checks sequence numbers, deserializes.
class Reader {
 public:
  Reader(ResultPartition& p, uint32_t sp, Doorbell* bell = nullptr) : sp_(sp), listener_(bell) {
    Result<std::unique_ptr<SubpartitionView>> v = p.CreateView(sp, &listener_);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    if (v.ok()) view_ = std::move(v).value();
  }

  // Polls until nothing is readable. Returns the number of items, or the error.
  Result<int> Drain() {
    int items = 0;
    while (true) {
      Result<std::optional<BufferAndBacklog>> r = view_->PollNext();
      if (!r.ok()) return r.status();
      if (!r.value().has_value()) return items;
      BufferAndBacklog& item = *r.value();
      ++items;
      EXPECT_EQ(item.sequence_number, next_sequence_) << "subpartition " << sp_;
      next_sequence_ = item.sequence_number + 1;
      EXPECT_LE(item.backlog, view_->backlog()) << "the backlog only grows behind the consumer";
      EXPECT_FALSE(eop_) << "item after end of partition";
      const DataType type = item.buffer.type();
      if (type == DataType::kData) {
        ++data_buffers_;
        buffer_ranges_.emplace_back(item.buffer.data(), item.buffer.size());
        de_.SetNextBuffer(std::move(item.buffer));
        std::span<const uint8_t> rec;
        while (true) {
          Result<RecordDeserializer::Next> n = de_.GetNext(&rec);
          EXPECT_TRUE(n.ok()) << n.status().ToString();
          if (!n.ok() || n.value() == RecordDeserializer::Next::kNeedMoreData) break;
          const uint64_t seq = CheckRecord(rec, sp_);
          EXPECT_EQ(seq, records_) << "subpartition " << sp_ << ": lost, corrupt or reordered";
          ++records_;
          addresses_.push_back(rec.data());
        }
      } else if (type == DataType::kEndOfPartition) {
        EXPECT_FALSE(de_.HasPartialRecord());
        eop_ = true;
      } else {
        events_.emplace_back(reinterpret_cast<const char*>(item.buffer.data()), item.buffer.size());
      }
    }
  }

  SubpartitionView& view() { return *view_; }
  CountingListener& listener() { return listener_; }
  uint64_t records() const { return records_; }
  uint64_t data_buffers() const { return data_buffers_; }
  bool eop() const { return eop_; }
  const std::vector<std::string>& events() const { return events_; }
  // Where each record was read from: inside its buffer, or the deserializer's spill area for
  // a record that spanned buffers. Only compared, never dereferenced.
  const std::vector<const uint8_t*>& addresses() const { return addresses_; }
  // True when `p` lies in a data buffer this reader polled (segments stay mapped, so this
  // tells network memory from heap memory even after the buffers went home).
  bool InAPolledBuffer(const uint8_t* p) const {
    const auto at = reinterpret_cast<uintptr_t>(p);
    for (const auto& [data, size] : buffer_ranges_) {
      const auto begin = reinterpret_cast<uintptr_t>(data);
      if (at >= begin && at < begin + size) return true;
    }
    return false;
  }
  void ReleaseView() { view_->Release(); }

 private:
  const uint32_t sp_;
  CountingListener listener_;
  std::unique_ptr<SubpartitionView> view_;
  RecordDeserializer de_;
  uint32_t next_sequence_ = 0;
  uint64_t records_ = 0;
  uint64_t data_buffers_ = 0;
  bool eop_ = false;
  std::vector<std::string> events_;
  std::vector<const uint8_t*> addresses_;
  std::vector<std::pair<const uint8_t*, size_t>> buffer_ranges_;
};

// A consumer thread that drains every reader until each has seen its end of partition (or
// a minute passed).
std::thread DrainUntilEndOfPartition(std::vector<std::unique_ptr<Reader>>& readers,
                                     Doorbell& bell) {
  return std::thread([&readers, &bell] {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      bool all = true;
      for (auto& r : readers) {
        Result<int> n = r->Drain();
        ASSERT_TRUE(n.ok()) << n.status().ToString();
        all = all && r->eop();
      }
      if (all) return;
      bell.Wait(5ms);
    }
  });
}

ShuffleOptions Options(std::chrono::milliseconds buffer_timeout = kBufferTimeoutOff) {
  ShuffleOptions o;
  o.credit.segment_size = kSegment;
  o.buffer_timeout = buffer_timeout;
  o.emit_timeout = 30s;
  return o;
}

// Two subpartitions: pool min = max = 3, cap 2 per subpartition, overdraft 1.
ShuffleOptions TinyOptions() {
  ShuffleOptions o = Options();
  o.credit.buffers_per_channel = 1;
  o.credit.floating_per_gate = 0;
  o.credit.max_buffers_per_channel = 2;
  o.credit.overdraft = 1;
  return o;
}

class ResultPartitionTest : public ::testing::Test {
 protected:
  void SetUp() override { global_ = MakeGlobal(64); }

  static std::shared_ptr<NetworkBufferPool> MakeGlobal(uint32_t segments) {
    return testutil::MakeNetworkBufferPool(segments, kSegment);
  }

  std::shared_ptr<ResultPartition> NewPartition(const std::string& id, uint32_t n,
                                                const ShuffleOptions& o) {
    Result<std::shared_ptr<ResultPartition>> p = ResultPartition::Create(id, n, global_, o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : nullptr;
  }

  void ExpectNoLeaks() const {
    const buffer::NetworkBufferPoolStats s = global_->Stats();
    EXPECT_EQ(s.available, s.total) << "leak check: " << global_->DebugString();
    EXPECT_EQ(s.required, 0u) << global_->DebugString();
    EXPECT_EQ(s.local_pools, 0u) << global_->DebugString();
  }

  // The leak check ends every test (partitions and views of the test body are gone by now).
  void TearDown() override { ExpectNoLeaks(); }

  std::shared_ptr<NetworkBufferPool> global_;
};

// --- Round trip ---------------------------------------------------------------------------

class RoundTripTest : public ResultPartitionTest,
                      public ::testing::WithParamInterface<std::chrono::milliseconds> {};

// A writer and a concurrent consumer: random record sizes (some larger than a segment), every
// record arrives exactly once and in order, sequence numbers count 0, 1, 2, ... per subpartition.
TEST_P(RoundTripTest, EveryRecordOnceInOrder) {
  constexpr uint32_t kN = 4;
  std::shared_ptr<ResultPartition> p = NewPartition("round-trip", kN, Options(GetParam()));
  ASSERT_NE(p, nullptr);
  Doorbell bell;
  std::vector<std::unique_ptr<Reader>> readers;
  for (uint32_t i = 0; i < kN; ++i) readers.push_back(std::make_unique<Reader>(*p, i, &bell));

  std::thread consumer = DrainUntilEndOfPartition(readers, bell);

  std::mt19937 rng(42);
  std::vector<uint64_t> sent(kN, 0);
  const int records = Scaled(3000);
  uint64_t bytes = 0;
  for (int i = 0; i < records; ++i) {
    const uint32_t sp = rng() % kN;
    const uint32_t kind = rng() % 100;
    const uint32_t size = kind < 70   ? 16 + rng() % 200
                          : kind < 95 ? 200 + rng() % 3000
                                      : kSegment + rng() % (4 * kSegment);  // spans buffers
    const std::vector<uint8_t> rec = MakeRecord(sp, sent[sp]++, size);
    bytes += rec.size();
    ASSERT_TRUE(p->Emit(rec, sp).ok());
  }
  ASSERT_TRUE(p->Finish().ok());
  consumer.join();

  for (uint32_t i = 0; i < kN; ++i) {
    EXPECT_TRUE(readers[i]->eop()) << "subpartition " << i;
    EXPECT_EQ(readers[i]->records(), sent[i]) << "subpartition " << i;
  }
  const ResultPartitionStats s = p->Stats();
  EXPECT_EQ(s.records, static_cast<uint64_t>(records));
  EXPECT_EQ(s.events, kN);  // the end-of-partition events
  EXPECT_GE(s.bytes_out, bytes + records * kRecordLengthBytes);
  EXPECT_LE(s.pool.owned, s.pool.max + 5);
  readers.clear();
  p->Release();
  ExpectNoLeaks();
}

INSTANTIATE_TEST_SUITE_P(BufferTimeouts, RoundTripTest,
                         ::testing::Values(kBufferTimeoutOff, 0ms, 1ms),
                         [](const ::testing::TestParamInfo<std::chrono::milliseconds>& param) {
                           return param.param < 0ms    ? std::string("Off")
                                  : param.param == 0ms ? std::string("PerRecord")
                                                       : std::string("Flusher1ms");
                         });

// --- Backlog, events, end of partition ----------------------------------------------------

TEST_F(ResultPartitionTest, BacklogNextIsEventAndSequenceNumbers) {
  std::shared_ptr<ResultPartition> p = NewPartition("backlog", 1, Options());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, kOneBufferRecord), 0).ok());
  ASSERT_TRUE(p->EmitEvent(Bytes("ping"), 0).ok());
  ASSERT_TRUE(p->Finish().ok());

  CountingListener listener;
  auto view = std::move(p->CreateView(0, &listener)).value();
  EXPECT_EQ(listener.count(), 1) << "a view created on queued items is notified at once";
  EXPECT_EQ(view->backlog(), 3u);
  EXPECT_FALSE(view->IsAvailable(0)) << "data at the head needs credit";
  EXPECT_TRUE(view->IsAvailable(1));

  for (uint32_t i = 0; i < 3; ++i) {
    auto r = view->PollNext();
    ASSERT_TRUE(r.ok() && r.value().has_value());
    EXPECT_EQ(r.value()->buffer.type(), DataType::kData);
    EXPECT_EQ(r.value()->buffer.size(), kSegment);
    EXPECT_EQ(r.value()->sequence_number, i);
    EXPECT_EQ(r.value()->backlog, 2 - i);
    EXPECT_EQ(r.value()->next_is_event, i == 2);
  }
  EXPECT_TRUE(view->IsAvailable(0)) << "an event at the head needs no credit";
  auto ev = view->PollNext();
  ASSERT_TRUE(ev.ok() && ev.value().has_value());
  EXPECT_EQ(ev.value()->buffer.type(), DataType::kEvent);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ev.value()->buffer.data()),
                        ev.value()->buffer.size()),
            "ping");
  EXPECT_EQ(ev.value()->sequence_number, 3u);
  EXPECT_TRUE(ev.value()->next_is_event);
  auto eop = view->PollNext();
  ASSERT_TRUE(eop.ok() && eop.value().has_value());
  EXPECT_EQ(eop.value()->buffer.type(), DataType::kEndOfPartition);
  EXPECT_EQ(eop.value()->sequence_number, 4u);
  EXPECT_EQ(eop.value()->backlog, 0u);
  EXPECT_FALSE(eop.value()->next_is_event);
  for (int i = 0; i < 3; ++i) {
    auto after = view->PollNext();
    ASSERT_TRUE(after.ok());
    EXPECT_FALSE(after.value().has_value()) << "nothing after end of partition";
  }
  EXPECT_FALSE(view->IsAvailable(1));
  EXPECT_TRUE(p->Stats().subpartitions[0].consumed);
  EXPECT_EQ(listener.count(), 1);
  view.reset();
  p->Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, EventsWithoutData) {
  std::shared_ptr<ResultPartition> p = NewPartition("events", 2, Options());
  ASSERT_TRUE(p->EmitEvent(Bytes("only-event"), 1).ok());
  ASSERT_TRUE(p->Finish().ok());
  Reader r0(*p, 0), r1(*p, 1);
  ASSERT_TRUE(r0.Drain().ok());
  ASSERT_TRUE(r1.Drain().ok());
  EXPECT_TRUE(r0.eop());
  EXPECT_TRUE(r1.eop());
  EXPECT_EQ(r0.data_buffers(), 0u);
  EXPECT_EQ(r1.data_buffers(), 0u);
  EXPECT_TRUE(r0.events().empty());
  ASSERT_EQ(r1.events().size(), 1u);
  EXPECT_EQ(r1.events()[0], "only-event");
  EXPECT_EQ(global_->used_segments(), 0u) << "events take no network memory";
}

TEST_F(ResultPartitionTest, EventFollowsDataWrittenBeforeIt) {
  std::shared_ptr<ResultPartition> p = NewPartition("event-order", 1, Options());
  Reader r(*p, 0);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 100), 0).ok());
  ASSERT_TRUE(p->EmitEvent(Bytes("barrier"), 0).ok());  // finishes the partial buffer first
  auto first = r.view().PollNext();
  ASSERT_TRUE(first.ok() && first.value().has_value());
  EXPECT_EQ(first.value()->buffer.type(), DataType::kData);
  EXPECT_TRUE(first.value()->next_is_event);
  auto second = r.view().PollNext();
  ASSERT_TRUE(second.ok() && second.value().has_value());
  EXPECT_EQ(second.value()->buffer.type(), DataType::kEvent);
}

// consumer_events() moves when a consumer reads its end of partition or releases its view,
// and when the partition fails; WaitConsumerEvent wakes a thread waiting on it.
TEST_F(ResultPartitionTest, ConsumerEventsWakeAWaiter) {
  std::shared_ptr<ResultPartition> p = NewPartition("consumers", 2, Options());
  Reader r0(*p, 0), r1(*p, 1);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 100), 0).ok());
  ASSERT_TRUE(p->Finish().ok());
  const uint64_t start = p->consumer_events();
  EXPECT_EQ(p->WaitConsumerEvent(start, 10ms), start) << "nothing happened: the wait times out";

  // Reading data is not an event; reading the end of partition is.
  std::atomic<uint64_t> woken{0};
  std::thread waiter([&] { woken = p->WaitConsumerEvent(start, 60s); });
  ASSERT_TRUE(r0.Drain().ok());
  waiter.join();
  EXPECT_TRUE(r0.eop());
  EXPECT_GT(woken.load(), start);
  EXPECT_TRUE(p->Stats().subpartitions[0].consumed);

  // A view released before its end is an event too.
  const uint64_t before_release = p->consumer_events();
  r1.ReleaseView();
  EXPECT_GT(p->consumer_events(), before_release);
  EXPECT_TRUE(p->Stats().subpartitions[1].view_released);
  EXPECT_FALSE(p->Stats().subpartitions[1].consumed);

  const uint64_t before_fail = p->consumer_events();
  p->Fail(Cancelled("test"));
  EXPECT_GT(p->consumer_events(), before_fail);
}

TEST_F(ResultPartitionTest, FinishMakesPartialBuffersReadable) {
  std::shared_ptr<ResultPartition> p = NewPartition("finish", 2, Options());
  Reader r0(*p, 0), r1(*p, 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, 50), 0).ok());
  auto none = r0.view().PollNext();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none.value().has_value()) << "a partly filled buffer is not readable yet";
  EXPECT_FALSE(r0.view().IsAvailable(5));
  EXPECT_EQ(r0.view().backlog(), 0u);
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r0.Drain().ok());
  ASSERT_TRUE(r1.Drain().ok());
  EXPECT_EQ(r0.records(), 3u);
  EXPECT_EQ(r0.data_buffers(), 1u);
  EXPECT_TRUE(r0.eop());
  EXPECT_TRUE(r1.eop());
  EXPECT_TRUE(p->Finish().ok()) << "Finish is idempotent";
  const Status after = p->Emit(MakeRecord(0, 3, 50), 0);
  EXPECT_EQ(after.code(), StatusCode::kClosed) << after.ToString();
  EXPECT_EQ(p->EmitEvent(Bytes("late"), 0).code(), StatusCode::kClosed);
}

// --- Buffer timeout -------------------------------------------------------------------------

// Flushed per record, records go into the buffer the reader has not taken yet (Flink's flush:
// the buffer stays appendable): readable at once, one notification, one buffer for the three.
TEST_F(ResultPartitionTest, BufferTimeoutZeroFlushesEveryRecord) {
  std::shared_ptr<ResultPartition> p = NewPartition("timeout-zero", 1, Options(0ms));
  Reader r(*p, 0);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(p->Emit(MakeRecord(0, i, 40), 0).ok());
    EXPECT_EQ(r.view().backlog(), 1u) << "readable at once, in the one flushed buffer";
    EXPECT_TRUE(r.view().IsAvailable(1));
    EXPECT_FALSE(r.view().IsAvailable(0)) << "a data buffer needs credit";
  }
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 3u);
  EXPECT_EQ(r.data_buffers(), 1u);
  // Taken by the reader: the next record starts a new buffer, readable at once again.
  ASSERT_TRUE(p->Emit(MakeRecord(0, 3, 40), 0).ok());
  EXPECT_EQ(r.listener().count(), 2);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 4u);
  EXPECT_EQ(r.data_buffers(), 2u);
}

TEST_F(ResultPartitionTest, BufferTimeoutOffKeepsPartialBufferUntilFlush) {
  std::shared_ptr<ResultPartition> p = NewPartition("timeout-off", 1, Options(kBufferTimeoutOff));
  Reader r(*p, 0);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 40), 0).ok());
  std::this_thread::sleep_for(30ms);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 0u) << "no flusher: the partial buffer stays with the writer";
  EXPECT_EQ(r.listener().count(), 0);
  p->Flush(0);
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 1u);
  p->Flush(0);  // nothing to flush: no empty buffer is queued
  EXPECT_EQ(r.view().backlog(), 0u);
}

// The output flusher makes data readable without Finish. No timing is asserted: the test only
// waits (generously) for the data to show up.
TEST_F(ResultPartitionTest, FlusherMakesDataReadable) {
  std::shared_ptr<ResultPartition> p = NewPartition("flusher", 2, Options(5ms));
  Doorbell bell;
  Reader r(*p, 1, &bell);
  ASSERT_TRUE(p->Emit(MakeRecord(1, 0, 64), 1).ok());
  ASSERT_TRUE(testutil::PollUntil(
      [&] {
        bell.Wait(5ms);
        return r.Drain().ok() && r.records() == 1;
      },
      20s));
  // The flusher decides to notify under the subpartition's lock and calls the listener after
  // it: a poll that timed out can read the record in between. The notification still comes.
  EXPECT_TRUE(testutil::PollUntil([&] { return r.listener().count() >= 1; }, 20s));
  ASSERT_TRUE(p->Emit(MakeRecord(1, 1, 64), 1).ok());
  ASSERT_TRUE(testutil::PollUntil(
      [&] {
        bell.Wait(5ms);
        return r.Drain().ok() && r.records() == 2;
      },
      20s));
  p->Release();
  ExpectNoLeaks();
}

// --- Notifications --------------------------------------------------------------------------

TEST_F(ResultPartitionTest, NotifiesOnEmptyToReadableTransitionsOnly) {
  std::shared_ptr<ResultPartition> p = NewPartition("notify", 1, Options(0ms));
  CountingListener listener;
  auto view = std::move(p->CreateView(0, &listener)).value();
  EXPECT_EQ(listener.count(), 0);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, 30), 0).ok());
  EXPECT_EQ(listener.count(), 1) << "one notification for three flushes";
  ASSERT_TRUE(p->EmitEvent(Bytes("e0"), 0).ok());  // finishes the buffer, queues the event
  ASSERT_TRUE(p->Emit(MakeRecord(0, 3, 30), 0).ok());
  EXPECT_EQ(listener.count(), 1) << "still readable: no new notification";

  int polled = 0;
  while (true) {
    auto r = view->PollNext();
    ASSERT_TRUE(r.ok());
    if (!r.value().has_value()) break;
    ++polled;
  }
  EXPECT_EQ(polled, 3) << "buffer, event, flushed buffer";
  ASSERT_TRUE(p->Emit(MakeRecord(0, 4, 30), 0).ok());
  EXPECT_EQ(listener.count(), 2) << "readable again after a poll found nothing";

  // Polling the last readable item (backlog 0, no event next) also re-arms.
  auto last = view->PollNext();
  ASSERT_TRUE(last.ok() && last.value().has_value());
  EXPECT_EQ(last.value()->backlog, 0u);
  EXPECT_FALSE(last.value()->next_is_event);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 5, 30), 0).ok());
  ASSERT_TRUE(p->EmitEvent(Bytes("e"), 0).ok());
  EXPECT_EQ(listener.count(), 3);
  view.reset();
}

TEST_F(ResultPartitionTest, ViewCreatedAfterDataIsNotified) {
  std::shared_ptr<ResultPartition> p = NewPartition("late-view", 2, Options(0ms));
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 30), 0).ok());
  CountingListener l0, l1;
  auto v0 = std::move(p->CreateView(0, &l0)).value();
  auto v1 = std::move(p->CreateView(1, &l1)).value();
  EXPECT_EQ(l0.count(), 1);
  EXPECT_EQ(l1.count(), 0) << "nothing readable in subpartition 1";
  ASSERT_TRUE(p->Emit(MakeRecord(1, 0, 30), 1).ok());
  EXPECT_EQ(l1.count(), 1);
}

TEST_F(ResultPartitionTest, NoNotificationAfterViewRelease) {
  std::shared_ptr<ResultPartition> p = NewPartition("no-notify", 1, Options(0ms));
  CountingListener listener;
  auto view = std::move(p->CreateView(0, &listener)).value();
  view->Release();
  EXPECT_TRUE(view->IsReleased());
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 30), 0).ok());  // dropped
  EXPECT_EQ(listener.count(), 0);
  EXPECT_EQ(p->Stats().subpartitions[0].dropped_records, 1u);
  EXPECT_EQ(view->PollNext().status().code(), StatusCode::kClosed);
}

// A listener must never run after its view's Release() returned, even when the notification
// comes from the writer's thread at the same moment.
TEST_F(ResultPartitionTest, ListenerNeverCalledAfterReleaseReturns) {
  for (int round = 0; round < Scaled(30); ++round) {
    std::shared_ptr<ResultPartition> p = NewPartition("release-race", 1, Options(0ms));
    struct Checking : SubpartitionListener {
      std::atomic<bool> released{false};
      std::atomic<int> late{0};
      void NotifyDataAvailable() override {
        if (released.load()) late.fetch_add(1);
      }
    } listener;
    auto view = std::move(p->CreateView(0, &listener)).value();
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      for (uint64_t i = 0; !stop.load(); ++i) {
        if (!p->Emit(MakeRecord(0, i, 30), 0).ok()) return;
      }
    });
    for (int i = 0; i < 20; ++i) {
      auto r = view->PollNext();
      ASSERT_TRUE(r.ok());
      if (!r.value().has_value()) std::this_thread::yield();
    }
    view->Release();
    listener.released.store(true);
    std::this_thread::sleep_for(1ms);
    stop.store(true);
    writer.join();
    EXPECT_EQ(listener.late.load(), 0);
    view.reset();
    p->Release();
  }
  ExpectNoLeaks();
}

// --- Backpressure -------------------------------------------------------------------------

// Waits until the writer stopped making progress while the partition reports unavailable.
bool WaitBlocked(const std::atomic<uint64_t>& progress, ResultPartition& p) {
  uint64_t last = ~0ull;
  int stable = 0;
  return testutil::PollUntil(
      [&] {
        std::this_thread::sleep_for(20ms);
        const uint64_t now = progress.load();
        stable = now == last ? stable + 1 : 0;
        last = now;
        return stable >= 5 && !p.IsAvailable();
      },
      20s);
}

// Samples the output pool: it never holds more than max + overdraft segments.
class PoolSampler {
 public:
  explicit PoolSampler(const ResultPartition& p)
      : thread_([this, &p] {
          const uint32_t limit = p.pool().max_segments() + max_overdraft_;
          while (!stop_.load()) {
            const buffer::LocalBufferPoolStats s = p.pool().Stats();
            if (s.owned > limit) exceeded_.store(true);
            max_owned_.store(std::max(max_owned_.load(), s.owned));
            std::this_thread::sleep_for(1ms);
          }
        }) {}
  ~PoolSampler() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  bool exceeded() const { return exceeded_.load(); }
  uint32_t max_owned() const { return max_owned_.load(); }
  static constexpr uint32_t max_overdraft_ = 1;  // TinyOptions

 private:
  std::atomic<bool> stop_{false};
  std::atomic<bool> exceeded_{false};
  std::atomic<uint32_t> max_owned_{0};
  std::thread thread_;
};

// No consumer reads: the writer blocks on the tiny pool, holds at most max + overdraft
// segments, and Cancel() wakes it with Cancelled.
TEST_F(ResultPartitionTest, WriterBlocksWithoutConsumerAndCancelWakesIt) {
  std::shared_ptr<ResultPartition> p = NewPartition("blocked", 2, TinyOptions());
  ASSERT_EQ(p->pool().max_segments(), 3u);
  PoolSampler sampler(*p);
  std::atomic<uint64_t> emitted{0};
  auto writer = std::async(std::launch::async, [&] {
    for (uint64_t i = 0;; ++i) {
      const uint32_t sp = i % 2;
      Status s = p->Emit(MakeRecord(sp, i / 2, kOneBufferRecord), sp);
      if (!s.ok()) return s;
      emitted.fetch_add(1);
    }
  });
  ASSERT_TRUE(WaitBlocked(emitted, *p));
  EXPECT_FALSE(p->IsAvailable());
  EXPECT_EQ(writer.wait_for(0ms), std::future_status::timeout) << "the writer must be blocked";
  EXPECT_EQ(p->pool().SubpartitionBuffers(0), 2u) << "subpartition 0 reached its cap";
  p->Cancel();
  ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
  const Status s = writer.get();
  EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
  EXPECT_EQ(p->Emit(MakeRecord(0, 0, 20), 0).code(), StatusCode::kCancelled);
  sampler.Stop();
  EXPECT_FALSE(sampler.exceeded()) << "held " << sampler.max_owned();
  EXPECT_FALSE(p->Stats().failed) << "cancel at a record boundary does not fail the partition";
  p->Release();
  ExpectNoLeaks();
}

// One slow subpartition blocks the writer (its cap makes the pool unavailable) although the
// other one is drained; when it is drained too, the writer resumes and nothing is lost.
TEST_F(ResultPartitionTest, SlowSubpartitionBlocksWriterUntilDrained) {
  std::shared_ptr<ResultPartition> p = NewPartition("slow-sub", 2, TinyOptions());
  PoolSampler sampler(*p);
  Doorbell bell;
  Reader fast(*p, 1, &bell), slow(*p, 0, &bell);
  std::atomic<bool> drain_slow{false};
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    while (!stop.load()) {
      ASSERT_TRUE(fast.Drain().ok());
      if (drain_slow.load()) {
        ASSERT_TRUE(slow.Drain().ok());
      }
      if (fast.eop() && slow.eop()) return;
      bell.Wait(5ms);
    }
  });
  const uint64_t kRecords = static_cast<uint64_t>(Scaled(400));
  std::atomic<uint64_t> emitted{0};
  auto writer = std::async(std::launch::async, [&] {
    std::mt19937 rng(7);
    for (uint64_t i = 0; i < kRecords; ++i) {
      const uint32_t sp = i % 2;
      // Sizes from tiny to several segments: large records need overdraft mid-record.
      const uint32_t size =
          (rng() % 10 == 0) ? 2 * kSegment + rng() % kSegment : 16 + rng() % kSegment;
      Status s = p->Emit(MakeRecord(sp, i / 2, size), sp);
      if (!s.ok()) return s;
      emitted.fetch_add(1);
    }
    return p->Finish();
  });
  ASSERT_TRUE(WaitBlocked(emitted, *p));
  EXPECT_LT(emitted.load(), kRecords);
  EXPECT_EQ(writer.wait_for(0ms), std::future_status::timeout);
  EXPECT_GE(p->pool().SubpartitionBuffers(0), 2u) << "the slow subpartition is at its cap";
  EXPECT_EQ(fast.view().backlog(), 0u) << "the fast subpartition is drained";

  drain_slow.store(true);
  bell.Ring();
  ASSERT_EQ(writer.wait_for(40s), std::future_status::ready);
  const Status s = writer.get();
  EXPECT_TRUE(s.ok()) << s.ToString();
  consumer.join();
  stop.store(true);
  EXPECT_EQ(fast.records() + slow.records(), kRecords);
  EXPECT_EQ(slow.records(), (kRecords + 1) / 2);
  EXPECT_TRUE(fast.eop() && slow.eop());
  sampler.Stop();
  EXPECT_FALSE(sampler.exceeded()) << "held " << sampler.max_owned();
  EXPECT_GT(p->Stats().backpressure_ns, 0u);
  p->Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, EmitTimeoutBeforeRecordStartKeepsPartitionUsable) {
  ShuffleOptions o = TinyOptions();
  o.emit_timeout = 30ms;
  std::shared_ptr<ResultPartition> p = NewPartition("emit-timeout", 2, o);
  Status s;
  uint64_t sent = 0;
  for (int i = 0; i < 10 && s.ok(); ++i) {
    s = p->Emit(MakeRecord(0, sent, kOneBufferRecord), 0);
    if (s.ok()) ++sent;
  }
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("emit-timeout"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("backpressure"), std::string::npos) << s.message();
  EXPECT_FALSE(p->Stats().failed);
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  ASSERT_TRUE(p->Emit(MakeRecord(0, sent++, kOneBufferRecord), 0).ok()) << "usable again";
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), sent);
}

TEST_F(ResultPartitionTest, TimeoutInTheMiddleOfARecordFailsThePartition) {
  ShuffleOptions o = TinyOptions();
  o.emit_timeout = 30ms;
  std::shared_ptr<ResultPartition> p = NewPartition("cut-short", 2, o);
  // Pool 3 + overdraft 1: a record of 8 segments cannot be written without a consumer.
  const Status s = p->Emit(MakeRecord(0, 0, 8 * kSegment), 0);
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("cut short"), std::string::npos) << s.message();
  EXPECT_TRUE(p->Stats().failed);
  EXPECT_EQ(p->pool().Stats().lent, 0u) << "the queued part of the record was recycled";
  auto view = p->CreateView(0, nullptr);
  EXPECT_EQ(view.status().code(), StatusCode::kTimeout);
}

// A writer blocked in the middle of a record (overdraft used up) is woken by Cancel too; the
// half-written record fails the partition, so consumers see the error instead of a torn record.
TEST_F(ResultPartitionTest, CancelMidRecordFailsThePartition) {
  std::shared_ptr<ResultPartition> p = NewPartition("cancel-mid", 2, TinyOptions());
  Reader r(*p, 0);
  std::atomic<uint64_t> progress{0};
  auto writer = std::async(std::launch::async, [&] {
    return p->Emit(MakeRecord(0, 0, 8 * kSegment), 0);  // pool 3 + overdraft 1 is not enough
  });
  ASSERT_TRUE(WaitBlocked(progress, *p));
  EXPECT_EQ(p->pool().Stats().overdraft, 1u);
  p->Cancel();
  ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
  const Status s = writer.get();
  EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
  EXPECT_NE(s.message().find("cut short"), std::string::npos) << s.message();
  EXPECT_TRUE(p->Stats().failed);
  EXPECT_EQ(r.Drain().status().code(), StatusCode::kCancelled);
  p->Release();
  ExpectNoLeaks();
}

// --- Release, fail ----------------------------------------------------------------------------

// The consumer of subpartition 0 goes away while the writer keeps writing: its buffers are
// recycled, later records for it are dropped, and the writer is not blocked forever.
TEST_F(ResultPartitionTest, ViewReleaseWhileWriterWrites) {
  std::shared_ptr<ResultPartition> p = NewPartition("view-release", 2, TinyOptions());
  Doorbell bell;
  Reader r0(*p, 0, &bell), r1(*p, 1, &bell);
  std::atomic<bool> released{false};
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    while (!stop.load()) {
      ASSERT_TRUE(r1.Drain().ok());
      if (!released.load()) {
        ASSERT_TRUE(r0.Drain().ok());
        if (r0.records() >= 5) {
          r0.ReleaseView();
          released.store(true);
        }
      }
      if (r1.eop()) return;
      bell.Wait(5ms);
    }
  });
  const uint64_t kRecords = static_cast<uint64_t>(Scaled(300));
  auto writer = std::async(std::launch::async, [&] {
    for (uint64_t i = 0; i < kRecords; ++i) {
      const uint32_t sp = i % 2;
      Status s = p->Emit(MakeRecord(sp, i / 2, 700 + (i % 7) * 500), sp);
      if (!s.ok()) return s;
    }
    return p->Finish();
  });
  ASSERT_EQ(writer.wait_for(40s), std::future_status::ready) << "writer blocked forever";
  const Status s = writer.get();
  EXPECT_TRUE(s.ok()) << s.ToString();
  consumer.join();
  stop.store(true);
  EXPECT_TRUE(released.load());
  EXPECT_EQ(r1.records(), kRecords / 2);
  EXPECT_TRUE(r1.eop());
  const ResultPartitionStats st = p->Stats();
  EXPECT_GT(st.subpartitions[0].dropped_records, 0u);
  EXPECT_TRUE(st.subpartitions[0].view_released);
  EXPECT_EQ(p->pool().SubpartitionBuffers(0), 0u) << "the released subpartition holds nothing";
  auto again = p->CreateView(0, nullptr);
  EXPECT_EQ(again.status().code(), StatusCode::kClosed);
  EXPECT_NE(again.status().message().find("cannot be read again"), std::string::npos);
  p->Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, FailReturnsErrorFromPollNextAndRecyclesBuffers) {
  std::shared_ptr<ResultPartition> p = NewPartition("failing", 2, Options(0ms));
  Reader r(*p, 0);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 30), 0).ok());
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());  // armed again
  ASSERT_TRUE(p->Emit(MakeRecord(0, 1, 30), 0).ok());
  ASSERT_TRUE(p->Emit(MakeRecord(1, 0, 30), 1).ok());
  EXPECT_EQ(r.listener().count(), 2);
  ASSERT_TRUE(r.Drain().ok());  // armed again
  ASSERT_TRUE(p->Emit(MakeRecord(0, 2, 30), 0).ok());
  EXPECT_EQ(r.listener().count(), 3);  // not armed now: the queue holds a buffer

  p->Fail(IoError("disk of producer 7 is on fire"));
  EXPECT_EQ(p->pool().Stats().lent, 0u) << "queued buffers are recycled at once";
  EXPECT_TRUE(r.view().IsAvailable(0)) << "the error is readable";
  Result<std::optional<BufferAndBacklog>> polled = r.view().PollNext();
  ASSERT_FALSE(polled.ok());
  EXPECT_EQ(polled.status().code(), StatusCode::kIoError);
  EXPECT_EQ(polled.status().message(), "disk of producer 7 is on fire");
  EXPECT_EQ(p->Emit(MakeRecord(0, 3, 30), 0).code(), StatusCode::kIoError);
  EXPECT_EQ(p->Finish().code(), StatusCode::kIoError);
  EXPECT_EQ(p->CreateView(1, nullptr).status().code(), StatusCode::kIoError);
  p->Fail(InternalError("second failure"));  // the first one wins
  EXPECT_EQ(r.view().PollNext().status().message(), "disk of producer 7 is on fire");
  EXPECT_TRUE(p->Stats().failed);
}

TEST_F(ResultPartitionTest, FailNotifiesAWaitingConsumer) {
  std::shared_ptr<ResultPartition> p = NewPartition("fail-notify", 1, Options());
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.listener().count(), 0);
  p->Fail(IoError("boom"));
  EXPECT_EQ(r.listener().count(), 1);
  EXPECT_EQ(r.view().PollNext().status().code(), StatusCode::kIoError);
}

TEST_F(ResultPartitionTest, FailWakesBlockedWriter) {
  std::shared_ptr<ResultPartition> p = NewPartition("fail-blocked", 2, TinyOptions());
  std::atomic<uint64_t> emitted{0};
  auto writer = std::async(std::launch::async, [&] {
    for (uint64_t i = 0;; ++i) {
      Status s = p->Emit(MakeRecord(0, i, kOneBufferRecord), 0);
      if (!s.ok()) return s;
      emitted.fetch_add(1);
    }
  });
  ASSERT_TRUE(WaitBlocked(emitted, *p));
  p->Fail(IoError("downstream task failed"));
  ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
  const Status s = writer.get();
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
  p->Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, ReleaseWithBuffersQueuedReturnsEverySegment) {
  std::shared_ptr<ResultPartition> p = NewPartition("release", 2, Options(0ms));
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, 100), 0).ok());
  ASSERT_TRUE(p->Emit(MakeRecord(1, 0, 3 * kSegment), 1).ok());
  ASSERT_TRUE(p->EmitEvent(Bytes("evt"), 1).ok());
  CountingListener listener;
  auto view = std::move(p->CreateView(0, &listener)).value();
  Result<std::optional<BufferAndBacklog>> held = view->PollNext();
  ASSERT_TRUE(held.ok() && held.value().has_value());
  EXPECT_GT(global_->used_segments(), 1u);

  p->Release();
  EXPECT_EQ(global_->used_segments(), 1u) << "only the buffer the consumer holds is out";
  EXPECT_EQ(global_->Stats().local_pools, 0u) << "the output pool is destroyed";
  EXPECT_EQ(view->PollNext().status().code(), StatusCode::kClosed);
  EXPECT_EQ(p->Emit(MakeRecord(0, 9, 10), 0).code(), StatusCode::kClosed);
  EXPECT_EQ(p->CreateView(1, nullptr).status().code(), StatusCode::kClosed);
  p->Release();  // idempotent
  held.value()->buffer.Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, ReleaseWakesBlockedWriter) {
  std::shared_ptr<ResultPartition> p = NewPartition("release-blocked", 2, TinyOptions());
  std::atomic<uint64_t> emitted{0};
  auto writer = std::async(std::launch::async, [&] {
    for (uint64_t i = 0;; ++i) {
      Status s = p->Emit(MakeRecord(1, i, 2 * kSegment + 100), 1);
      if (!s.ok()) return s;
      emitted.fetch_add(1);
    }
  });
  ASSERT_TRUE(WaitBlocked(emitted, *p));
  p->Release();
  ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
  EXPECT_EQ(writer.get().code(), StatusCode::kClosed);
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, DestructorReleases) {
  {
    std::shared_ptr<ResultPartition> p = NewPartition("dtor", 3, Options(10ms));
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(p->Emit(MakeRecord(i % 3, i, 5000), i % 3).ok());
    EXPECT_GT(global_->used_segments(), 0u);
  }
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, ViewKeepsPartitionAlive) {
  std::shared_ptr<ResultPartition> p = NewPartition("alive", 1, Options(0ms));
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 30), 0).ok());
  auto view = std::move(p->CreateView(0, nullptr)).value();
  p.reset();
  auto r = view->PollNext();
  ASSERT_TRUE(r.ok() && r.value().has_value());
  r.value()->buffer.Release();
  view.reset();  // the last reference: the partition releases everything
  ExpectNoLeaks();
}

// --- Errors -------------------------------------------------------------------------------

TEST_F(ResultPartitionTest, AdmissionFailureNamesPartitionAndOption) {
  std::shared_ptr<NetworkBufferPool> small = MakeGlobal(8);
  Result<std::shared_ptr<ResultPartition>> p =
      ResultPartition::Create("too-big", 16, small, Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
  const std::string m = p.status().message();
  EXPECT_NE(m.find("too-big"), std::string::npos) << m;
  EXPECT_NE(m.find("17"), std::string::npos) << "segments required: " << m;
  EXPECT_NE(m.find("network_memory"), std::string::npos) << m;
  EXPECT_EQ(small->Stats().local_pools, 0u);
  EXPECT_EQ(ResultPartition::Create("none", 0, small, Options()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ResultPartition::Create("null", 1, nullptr, Options()).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(ResultPartitionTest, PoolSizedFromCreditOptions) {
  std::shared_ptr<ResultPartition> p = NewPartition("sized", 4, Options());
  EXPECT_EQ(p->pool().min_segments(), 5u);          // n + 1
  EXPECT_EQ(p->pool().max_segments(), 4u * 2 + 8);  // n * buffers_per_channel + floating
  EXPECT_EQ(p->num_subpartitions(), 4u);
  EXPECT_EQ(p->id(), "sized");
}

TEST_F(ResultPartitionTest, OneViewPerSubpartition) {
  std::shared_ptr<ResultPartition> p = NewPartition("views", 2, Options());
  auto first = p->CreateView(1, nullptr);
  ASSERT_TRUE(first.ok());
  auto second = p->CreateView(1, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second.status().message().find("subpartition 1"), std::string::npos);
  EXPECT_NE(second.status().message().find("'views'"), std::string::npos);
  auto bad = p->CreateView(2, nullptr);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(p->CreateView(0, nullptr).ok()) << "another subpartition is fine";
}

TEST_F(ResultPartitionTest, InvalidArguments) {
  std::shared_ptr<ResultPartition> p = NewPartition("args", 2, Options());
  const Status bad_sp = p->Emit(MakeRecord(0, 0, 20), 2);
  EXPECT_EQ(bad_sp.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_sp.message().find("'args'"), std::string::npos) << bad_sp.message();
  const std::vector<uint8_t> big_event(kSegment + 1, 0);
  EXPECT_EQ(p->EmitEvent(big_event, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p->EmitEvent(Bytes("x"), 5).code(), StatusCode::kInvalidArgument);
  const std::vector<uint8_t> empty_event;
  EXPECT_TRUE(p->EmitEvent(empty_event, 0).ok());
  EXPECT_TRUE(p->Emit({}, 0).ok()) << "an empty record is a record";
  Reader r(*p, 0);
  p->FlushAll();
  ASSERT_TRUE(r.view().PollNext().value().has_value());  // the empty event
  auto rec = r.view().PollNext();
  ASSERT_TRUE(rec.ok() && rec.value().has_value());
  EXPECT_EQ(rec.value()->buffer.size(), kRecordLengthBytes);
}

TEST_F(ResultPartitionTest, StatsCountRecordsBuffersEvents) {
  std::shared_ptr<ResultPartition> p = NewPartition("stats", 2, Options());
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, kOneBufferRecord), 0).ok());
  ASSERT_TRUE(p->Emit(MakeRecord(0, 1, 96), 0).ok());
  ASSERT_TRUE(p->Broadcast(MakeRecord(0, 2, 60)).ok());
  ASSERT_TRUE(p->BroadcastEvent(Bytes("marker")).ok());
  const ResultPartitionStats s = p->Stats();
  ASSERT_EQ(s.subpartitions.size(), 2u);
  EXPECT_EQ(s.subpartitions[0].records, 3u);
  EXPECT_EQ(s.subpartitions[1].records, 1u);
  EXPECT_EQ(s.records, 4u);
  EXPECT_EQ(s.subpartitions[0].backlog, 2u);  // the full buffer and the one the event finished
  EXPECT_EQ(s.subpartitions[0].buffers_out, 2u);
  EXPECT_EQ(s.subpartitions[0].bytes_out, kSegment + 100 + 64);
  EXPECT_EQ(s.subpartitions[0].queued_items, 3u);
  EXPECT_EQ(s.subpartitions[0].queued_bytes, kSegment + 164 + 6);
  EXPECT_EQ(s.subpartitions[1].backlog, 1u);
  EXPECT_EQ(s.events, 2u);
  EXPECT_EQ(s.pool.lent, 3u);
  EXPECT_FALSE(s.finished || s.failed || s.released);
  EXPECT_FALSE(s.subpartitions[0].has_view);
}

}  // namespace
// --- EmitBatch -------------------------------------------------------------------------------

std::vector<std::span<const uint8_t>> Spans(const std::vector<std::vector<uint8_t>>& records) {
  return {records.begin(), records.end()};
}

// Batches of mixed sizes (some spanning buffers) to random subpartitions while a consumer
// reads: every record once, in order, with Emit and EmitBatch interleaved.
TEST_F(ResultPartitionTest, EmitBatchRoundTrip) {
  constexpr uint32_t kN = 3;
  std::shared_ptr<ResultPartition> p = NewPartition("batch", kN, Options(1ms));
  ASSERT_NE(p, nullptr);
  Doorbell bell;
  std::vector<std::unique_ptr<Reader>> readers;
  for (uint32_t i = 0; i < kN; ++i) readers.push_back(std::make_unique<Reader>(*p, i, &bell));
  std::thread consumer = DrainUntilEndOfPartition(readers, bell);
  std::mt19937 rng(7);
  std::vector<uint64_t> sent(kN, 0);
  uint64_t total = 0;
  for (int b = 0; b < Scaled(300); ++b) {
    const uint32_t sp = rng() % kN;
    if (b % 5 == 0) {
      ASSERT_TRUE(p->Emit(MakeRecord(sp, sent[sp]++, 40), sp).ok());
      ++total;
    }
    std::vector<std::vector<uint8_t>> batch;
    const uint32_t n = rng() % 40;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t size = rng() % 20 == 0 ? kSegment + rng() % (2 * kSegment) : 16 + rng() % 300;
      batch.push_back(MakeRecord(sp, sent[sp]++, size));
    }
    size_t written = 99;
    ASSERT_TRUE(p->EmitBatch(Spans(batch), sp, &written).ok());
    EXPECT_EQ(written, batch.size());
    total += batch.size();
  }
  ASSERT_TRUE(p->Finish().ok());
  consumer.join();
  for (uint32_t i = 0; i < kN; ++i) {
    EXPECT_TRUE(readers[i]->eop()) << "subpartition " << i;
    EXPECT_EQ(readers[i]->records(), sent[i]) << "subpartition " << i;
  }
  EXPECT_EQ(p->Stats().records, total);
  readers.clear();
  p->Release();
  ExpectNoLeaks();
}

TEST_F(ResultPartitionTest, EmitBatchChecksEverySizeFirstAndWritesNothing) {
  std::shared_ptr<ResultPartition> p = NewPartition("batch-size", 1, Options());
  const std::vector<uint8_t> small = MakeRecord(0, 0, 20);
  // Never read: the size check comes before any copy.
  const std::vector<std::span<const uint8_t>> batch = {
      small, std::span<const uint8_t>(small.data(), size_t{kMaxRecordLength} + 1)};
  size_t written = 99;
  const Status s = p->EmitBatch(batch, 0, &written);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("batch-size"), std::string::npos) << s.message();
  EXPECT_EQ(written, 0u);
  EXPECT_EQ(p->Stats().records, 0u);
  EXPECT_EQ(p->EmitBatch(batch, 1).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(p->Finish().ok());
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 0u);
  EXPECT_TRUE(r.eop());
}

// Backpressure in the middle of a batch: the records before the wait are written and counted
// in `written`, the partition stays usable, and the rest can be sent again.
TEST_F(ResultPartitionTest, EmitBatchTimeoutReportsWhatWasWritten) {
  ShuffleOptions o = TinyOptions();
  o.emit_timeout = 30ms;
  std::shared_ptr<ResultPartition> p = NewPartition("batch-timeout", 2, o);
  std::vector<std::vector<uint8_t>> batch;
  for (uint64_t i = 0; i < 10; ++i) batch.push_back(MakeRecord(0, i, kOneBufferRecord));
  size_t written = 99;
  const Status s = p->EmitBatch(Spans(batch), 0, &written);
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_GT(written, 0u);
  EXPECT_LT(written, batch.size());
  EXPECT_FALSE(p->Stats().failed);
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), written);
  const std::vector<std::vector<uint8_t>> rest(batch.begin() + static_cast<ptrdiff_t>(written),
                                               batch.begin() + static_cast<ptrdiff_t>(written) + 1);
  ASSERT_TRUE(p->EmitBatch(Spans(rest), 0).ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), written + 1);
}

TEST_F(ResultPartitionTest, EmitBatchToReleasedViewIsDroppedAndCounted) {
  std::shared_ptr<ResultPartition> p = NewPartition("batch-dropped", 2, Options());
  {
    Reader r(*p, 0);
    r.ReleaseView();
  }
  std::vector<std::vector<uint8_t>> batch;
  for (uint64_t i = 0; i < 5; ++i) batch.push_back(MakeRecord(0, i, 100));
  size_t written = 0;
  ASSERT_TRUE(p->EmitBatch(Spans(batch), 0, &written).ok());
  EXPECT_EQ(written, 5u);
  EXPECT_EQ(p->Stats().subpartitions[0].dropped_records, 5u);
  EXPECT_EQ(p->Stats().records, 0u);
  p->Release();
  EXPECT_EQ(p->EmitBatch(Spans(batch), 1).code(), StatusCode::kClosed);
}

// buffer_timeout 0 inside a batch: every record is readable when the call returns, packed into
// the flushed buffer the reader has not taken.
TEST_F(ResultPartitionTest, EmitBatchFlushesPerRecordWithTimeoutZero) {
  std::shared_ptr<ResultPartition> p = NewPartition("batch-flush", 1, Options(0ms));
  Reader r(*p, 0);
  std::vector<std::vector<uint8_t>> batch;
  for (uint64_t i = 0; i < 3; ++i) batch.push_back(MakeRecord(0, i, 50));
  ASSERT_TRUE(p->EmitBatch(Spans(batch), 0).ok());
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 3u);
  EXPECT_EQ(r.data_buffers(), 1u);
}

// --- In-place records (EmitInPlace, EmitInPlaceBatch) ---------------------------------------

namespace {

// Fills records made like MakeRecord and remembers where each fill wrote, to tell records
// written in place (read back at the same address) from those that went through the scratch
// area (read back from elsewhere).
class Filler {
 public:
  explicit Filler(uint32_t sp) : sp_(sp) {}
  // A fill for EmitInPlace: the next sequence number.
  auto One() {
    return [this](std::span<uint8_t> out) { Write(out); };
  }
  // A fill for EmitInPlaceBatch.
  auto Batch() {
    return [this](size_t, std::span<uint8_t> out) { Write(out); };
  }
  uint64_t calls() const { return next_seq_; }
  const std::vector<const uint8_t*>& addresses() const { return addresses_; }

 private:
  void Write(std::span<uint8_t> out) {
    WriteRecord(out, sp_, next_seq_++);
    addresses_.push_back(out.data());
  }
  const uint32_t sp_;
  uint64_t next_seq_ = 0;
  std::vector<const uint8_t*> addresses_;
};

// Drains `r`: it read `records` records in `buffers` buffers, each where `fill` wrote it.
void ExpectReadInPlace(Reader& r, const Filler& fill, uint64_t records, uint64_t buffers) {
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), records);
  EXPECT_EQ(fill.calls(), records);
  EXPECT_EQ(r.data_buffers(), buffers);
  EXPECT_EQ(r.addresses(), fill.addresses()) << "every record was read where it was filled";
}

}  // namespace

// The lost wake-up behind sluice-bench's in-place hang: a record flushed per record notifies
// the consumer; before the consumer looks, the writer claims that flushed buffer to fill the
// next record in place, so the consumer finds nothing available and stops. Putting the buffer
// back must notify it again; it did not (the consumer had not polled, so nothing re-armed the
// notification) and a server reader with credit and ten queued buffers waited forever.
TEST_F(ResultPartitionTest, AConsumerThatFindsTheFlushedBufferClaimedIsNotifiedWhenItIsBack) {
  std::shared_ptr<ResultPartition> p = NewPartition("claimed", 1, Options(0ms));
  CountingListener listener;
  auto view = std::move(p->CreateView(0, &listener)).value();
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, 40, fill.One()).ok());
  ASSERT_EQ(listener.count(), 1) << "flushed per record: readable, one notification";
  bool seen_available = true;
  ASSERT_TRUE(p->EmitInPlace(0, 40, [&](std::span<uint8_t> out) {
                 // The writer holds the flushed buffer: the consumer, notified, looks now.
                 seen_available = view->IsAvailable(/*credit=*/2);
                 fill.One()(out);
               }).ok());
  EXPECT_FALSE(seen_available) << "the buffer was claimed while the consumer looked";
  EXPECT_EQ(listener.count(), 2) << "the consumer stopped on 'not available': it must hear "
                                    "when the buffer is back";
  EXPECT_TRUE(view->IsAvailable(2));
  auto item = view->PollNext();
  ASSERT_TRUE(item.ok() && item->has_value());
  EXPECT_EQ((*item)->buffer.size(), 2u * (kRecordLengthBytes + 40));
  (*item)->buffer.Release();
  view->Release();
  p->Release();
  ExpectNoLeaks();
}

// Records that fit are filled where the consumer reads them (zero copy), in order, byte-exact,
// across several buffers.
TEST_F(ResultPartitionTest, InPlaceRecordsAreReadWhereTheyWereFilled) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place", 2, Options());
  Reader r(*p, 1);
  Filler fill(1);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(p->EmitInPlace(1, 16 + i * 3, fill.One()).ok());
  const std::vector<uint32_t> sizes = {16, 500, 17, 1000, 40, 33};
  size_t written = 99;
  ASSERT_TRUE(p->EmitInPlaceBatch(1, sizes, fill.Batch(), &written).ok());
  EXPECT_EQ(written, sizes.size());
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_TRUE(r.eop());
  EXPECT_EQ(r.records(), 106u);
  EXPECT_EQ(fill.calls(), 106u) << "fill runs once per record";
  EXPECT_GT(r.data_buffers(), 2u);
  EXPECT_EQ(r.addresses(), fill.addresses()) << "every record was read where it was filled";
  EXPECT_EQ(p->Stats().records, 106u);
  EXPECT_EQ(p->Stats().subpartitions[0].records, 0u);
}

// A record that fills a buffer exactly finishes it at once; two halves fill one buffer.
TEST_F(ResultPartitionTest, InPlaceRecordsThatExactlyFillABuffer) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-exact", 1, Options());
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, kOneBufferRecord, fill.One()).ok());
  EXPECT_EQ(r.view().backlog(), 1u) << "a full buffer is queued without a flush";
  const uint32_t half = kSegment / 2 - kRecordLengthBytes;
  const std::vector<uint32_t> halves = {half, half};
  ASSERT_TRUE(p->EmitInPlaceBatch(0, halves, fill.Batch()).ok());
  EXPECT_EQ(r.view().backlog(), 2u);
  EXPECT_EQ(p->Stats().bytes_out, 2u * kSegment);
  ExpectReadInPlace(r, fill, 3, 2);
}

// The record does not fit in the rest of the current buffer, and that rest is small (at most
// 1/8 of a segment): the buffer is finished early and the record is filled in a fresh one.
TEST_F(ResultPartitionTest, InPlaceRecordAfterASmallTailFinishesTheBufferEarly) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-tail", 1, Options());
  Reader r(*p, 0);
  Filler fill(0);
  constexpr uint32_t kTail = 200;  // below kSegment / 8
  ASSERT_TRUE(p->EmitInPlace(0, kSegment - kTail - kRecordLengthBytes, fill.One()).ok());
  EXPECT_EQ(r.view().backlog(), 0u);
  ASSERT_TRUE(p->EmitInPlace(0, kTail, fill.One()).ok());  // needs kTail + 4 bytes
  EXPECT_EQ(r.view().backlog(), 1u) << "the first buffer was finished with its tail unused";
  EXPECT_EQ(p->Stats().bytes_out, kSegment - kTail);
  ASSERT_TRUE(p->Finish().ok());
  ExpectReadInPlace(r, fill, 2, 2);
}

// The rest of the current buffer is large: the record is filled into the scratch area and
// split across that rest and the next buffer, so no more than 1/8 of a buffer is wasted.
TEST_F(ResultPartitionTest, InPlaceRecordAfterALargeTailIsSplitThroughScratch) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-split", 1, Options());
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, 1000, fill.One()).ok());
  ASSERT_TRUE(p->EmitInPlace(0, 3500, fill.One()).ok());  // 3504 > 4096 - 1004
  EXPECT_EQ(r.view().backlog(), 1u) << "the first buffer is full";
  EXPECT_EQ(p->Stats().bytes_out, kSegment);
  ASSERT_TRUE(p->EmitInPlace(0, 100, fill.One()).ok());  // in place after the split record
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 3u);
  EXPECT_EQ(r.data_buffers(), 2u);
  EXPECT_EQ(p->Stats().bytes_out, 1004u + 3504u + 104u);
  ASSERT_EQ(r.addresses().size(), 3u);
  EXPECT_EQ(r.addresses()[0], fill.addresses()[0]);
  EXPECT_FALSE(r.InAPolledBuffer(fill.addresses()[1])) << "filled in scratch, not in a buffer";
  EXPECT_EQ(r.addresses()[2], fill.addresses()[2]);
}

// Records larger than a segment (less its 4-byte prefix) go through the scratch area, in the
// single and the batch form, between records written in place.
TEST_F(ResultPartitionTest, InPlaceRecordsLargerThanASegmentUseScratch) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-large", 1, Options());
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, kOneBufferRecord + 1, fill.One()).ok());
  ASSERT_TRUE(p->EmitInPlace(0, 3 * kSegment + 5, fill.One()).ok());
  ASSERT_TRUE(r.Drain().ok());
  const std::vector<uint32_t> sizes = {50, 2 * kSegment, 60};
  ASSERT_TRUE(p->EmitInPlaceBatch(0, sizes, fill.Batch()).ok());
  ASSERT_TRUE(p->EmitInPlace(0, 70, fill.One()).ok());
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_TRUE(r.eop());
  EXPECT_EQ(r.records(), 6u);
  EXPECT_EQ(fill.calls(), 6u);
  ASSERT_EQ(r.addresses().size(), 6u);
  for (const size_t i : {0, 1, 3}) {
    EXPECT_FALSE(r.InAPolledBuffer(fill.addresses()[i])) << "record " << i << " is not in place";
  }
  for (const size_t i : {2, 4, 5}) {
    EXPECT_EQ(r.addresses()[i], fill.addresses()[i]) << "record " << i << " is in place";
  }
  EXPECT_EQ(p->Stats().records, 6u);
}

TEST_F(ResultPartitionTest, InPlaceSizeZero) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-empty", 1, Options());
  std::vector<size_t> seen;
  ASSERT_TRUE(
      p->EmitInPlace(0, 0, [&](std::span<uint8_t> out) { seen.push_back(out.size()); }).ok());
  const std::vector<uint32_t> zeros = {0, 0};
  ASSERT_TRUE(p->EmitInPlaceBatch(0, zeros, [&](size_t, std::span<uint8_t> out) {
                 seen.push_back(out.size());
               }).ok());
  EXPECT_EQ(seen, (std::vector<size_t>{0, 0, 0}));
  ASSERT_TRUE(p->Finish().ok());
  auto view = std::move(p->CreateView(0, nullptr)).value();
  auto item = view->PollNext();
  ASSERT_TRUE(item.ok() && item->has_value());
  RecordDeserializer de;
  de.SetNextBuffer(std::move((*item)->buffer));
  std::span<const uint8_t> rec;
  int records = 0;
  while (de.GetNext(&rec).value() == RecordDeserializer::Next::kRecord) {
    EXPECT_TRUE(rec.empty());
    ++records;
  }
  EXPECT_EQ(records, 3);
  EXPECT_EQ(p->Stats().bytes_out, 3 * kRecordLengthBytes);
}

TEST_F(ResultPartitionTest, InPlaceTooLargeOrBadSubpartitionWritesNothing) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-invalid", 2, Options());
  int calls = 0;
  auto count = [&](std::span<uint8_t>) { ++calls; };
  auto count_batch = [&](size_t, std::span<uint8_t>) { ++calls; };
  Status s = p->EmitInPlace(0, kMaxRecordLength + 1, count);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("in-place-invalid"), std::string::npos) << s.message();
  const std::vector<uint32_t> sizes = {20, 30, kMaxRecordLength + 1};
  size_t written = 99;
  s = p->EmitInPlaceBatch(0, sizes, count_batch, &written);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_EQ(written, 0u);
  s = p->EmitInPlace(2, 10, count);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("EmitInPlace to subpartition 2"), std::string::npos) << s.message();
  EXPECT_EQ(calls, 0) << "fill is never called for a refused record";
  EXPECT_EQ(p->Stats().records, 0u);
  EXPECT_EQ(p->Stats().bytes_out, 0u);
  ASSERT_TRUE(p->Finish().ok());
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 0u);
  EXPECT_TRUE(r.eop());
  EXPECT_EQ(p->EmitInPlace(0, 10, count).code(), StatusCode::kClosed);
  EXPECT_EQ(calls, 0);
}

// No buffer within emit_timeout: Timeout with nothing written and fill not called; the
// partition stays usable. The batch form reports how many records it wrote.
TEST_F(ResultPartitionTest, InPlaceTimeoutUnderBackpressureKeepsPartitionUsable) {
  ShuffleOptions o = TinyOptions();
  o.emit_timeout = 30ms;
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-timeout", 2, o);
  Filler fill(0);
  Status s;
  uint64_t sent = 0;
  for (int i = 0; i < 10 && s.ok(); ++i) {
    s = p->EmitInPlace(0, kOneBufferRecord, fill.One());
    if (s.ok()) ++sent;
  }
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("before the record started"), std::string::npos) << s.message();
  EXPECT_EQ(fill.calls(), sent) << "no fill for the record that timed out";
  EXPECT_FALSE(p->Stats().failed);
  Reader r(*p, 0);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), sent);
  const std::vector<uint32_t> sizes(10, kOneBufferRecord);
  size_t written = 99;
  s = p->EmitInPlaceBatch(0, sizes, fill.Batch(), &written);
  ASSERT_EQ(s.code(), StatusCode::kTimeout) << s.ToString();
  EXPECT_GT(written, 0u);
  EXPECT_LT(written, sizes.size());
  EXPECT_EQ(fill.calls(), sent + written);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), sent + written);
  ASSERT_TRUE(p->EmitInPlace(0, 100, fill.One()).ok()) << "usable again";
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), fill.calls());
  EXPECT_TRUE(r.eop());
}

// A writer blocked before a record is woken by Cancel (the partition stays intact); one blocked
// in the middle of a large (scratch) record fails the partition, as Emit does.
TEST_F(ResultPartitionTest, InPlaceCancelWhileWaiting) {
  {
    std::shared_ptr<ResultPartition> p = NewPartition("in-place-cancel", 2, TinyOptions());
    std::atomic<uint64_t> emitted{0};
    auto writer = std::async(std::launch::async, [&] {
      Filler fill(0);
      while (true) {
        Status s = p->EmitInPlace(0, kOneBufferRecord, fill.One());
        if (!s.ok()) return s;
        emitted.fetch_add(1);
      }
    });
    ASSERT_TRUE(WaitBlocked(emitted, *p));
    p->Cancel();
    ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
    const Status s = writer.get();
    EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
    EXPECT_FALSE(p->Stats().failed) << "cancel at a record boundary does not fail the partition";
    EXPECT_EQ(p->Stats().records, emitted.load());
    p->Release();
  }
  {
    std::shared_ptr<ResultPartition> p = NewPartition("in-place-cancel-mid", 2, TinyOptions());
    std::atomic<uint64_t> progress{0};
    auto writer = std::async(std::launch::async, [&] {
      Filler fill(0);
      return p->EmitInPlace(0, 8 * kSegment, fill.One());  // more than pool + overdraft
    });
    ASSERT_TRUE(WaitBlocked(progress, *p));
    p->Cancel();
    ASSERT_EQ(writer.wait_for(20s), std::future_status::ready);
    const Status s = writer.get();
    EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
    EXPECT_NE(s.message().find("cut short"), std::string::npos) << s.message();
    EXPECT_TRUE(p->Stats().failed);
    p->Release();
  }
  ExpectNoLeaks();
}

// A Flush while the writer fills in place must not publish the half-written buffer: it is
// done when the fill returns. The flush runs on another thread in the middle of the fill.
TEST_F(ResultPartitionTest, FlushDuringAnInPlaceFillIsDeferredUntilTheFillEnds) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-flush", 1, Options());
  Reader r(*p, 0);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 100), 0).ok());  // a record already in the buffer
  uint32_t backlog_during_fill = 99;
  ASSERT_TRUE(p->EmitInPlace(0, 300, [&](std::span<uint8_t> out) {
                 std::memset(out.data(), 0xEE, out.size());  // not a valid record yet
                 std::thread([&] { p->Flush(0); }).join();
                 backlog_during_fill = r.view().backlog();
                 WriteRecord(out, 0, 1);
               }).ok());
  EXPECT_EQ(backlog_during_fill, 0u) << "nothing was published while the fill ran";
  EXPECT_EQ(r.view().backlog(), 1u) << "the flush was done when the fill returned";
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 2u);
  ASSERT_TRUE(p->EmitInPlace(0, 50, [](std::span<uint8_t> out) { WriteRecord(out, 0, 2); }).ok());
  EXPECT_EQ(r.view().backlog(), 0u) << "the flush request was used up";
}

// The output flusher (1 ms) runs while a writer fills in place, some fills slowly: every record
// arrives once, in order, byte-exact (ThreadSanitizer checks the hand-off of the filled bytes).
TEST_F(ResultPartitionTest, InPlaceWithAConcurrentFlusher) {
  constexpr uint32_t kN = 3;
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-flusher", kN, Options(1ms));
  Doorbell bell;
  std::vector<std::unique_ptr<Reader>> readers;
  for (uint32_t i = 0; i < kN; ++i) readers.push_back(std::make_unique<Reader>(*p, i, &bell));
  std::thread consumer = DrainUntilEndOfPartition(readers, bell);
  std::mt19937 rng(11);
  std::vector<uint64_t> sent(kN, 0);
  std::vector<uint32_t> sizes;
  for (int round = 0; round < Scaled(600); ++round) {
    const uint32_t sp = rng() % kN;
    const bool slow = round % 50 == 0;
    auto fill_one = [&](std::span<uint8_t> out) {
      if (slow) std::this_thread::sleep_for(2ms);  // the flusher comes by meanwhile
      WriteRecord(out, sp, sent[sp]++);
    };
    if (round == 10) {
      // Above the scratch area's keep limit (1 MiB): allocated and freed for this record.
      ASSERT_TRUE(p->EmitInPlace(sp, (3u << 20) / 2, fill_one).ok());
    } else if (round % 3 == 0) {
      const uint32_t size = rng() % 25 == 0 ? kSegment + rng() % kSegment : 16 + rng() % 900;
      ASSERT_TRUE(p->EmitInPlace(sp, size, fill_one).ok());
    } else {
      sizes.resize(rng() % 30);
      for (uint32_t& n : sizes) n = rng() % 40 == 0 ? 2 * kSegment : 16 + rng() % 300;
      size_t written = 0;
      ASSERT_TRUE(p->EmitInPlaceBatch(
                       sp, sizes, [&](size_t, std::span<uint8_t> out) { fill_one(out); }, &written)
                      .ok());
      EXPECT_EQ(written, sizes.size());
    }
  }
  ASSERT_TRUE(p->Finish().ok());
  consumer.join();
  uint64_t total = 0;
  for (uint32_t i = 0; i < kN; ++i) {
    EXPECT_TRUE(readers[i]->eop()) << "subpartition " << i;
    EXPECT_EQ(readers[i]->records(), sent[i]) << "subpartition " << i;
    total += sent[i];
  }
  EXPECT_EQ(p->Stats().records, total);
  readers.clear();
  p->Release();
  ExpectNoLeaks();
}

// In place with buffer_timeout 0: every record is readable at once, and records filled before
// the reader takes the flushed buffer go into it (in place still).
TEST_F(ResultPartitionTest, InPlaceFlushesPerRecordWithTimeoutZero) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-per-record", 1, Options(0ms));
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, 40, fill.One()).ok());
  EXPECT_EQ(r.view().backlog(), 1u);
  EXPECT_EQ(r.listener().count(), 1);
  const std::vector<uint32_t> sizes = {50, 60, 70};
  ASSERT_TRUE(p->EmitInPlaceBatch(0, sizes, fill.Batch()).ok());
  EXPECT_EQ(r.view().backlog(), 1u) << "appended to the flushed buffer";
  ExpectReadInPlace(r, fill, 4, 1);
}

// Records for a released view are dropped and counted; fill is not even called. A record
// being filled when the view goes away is dropped and counted too, its buffer recycled.
TEST_F(ResultPartitionTest, InPlaceToAReleasedViewIsDroppedAndCounted) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-dropped", 2, Options());
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, 100, fill.One()).ok());
  ASSERT_TRUE(p->EmitInPlace(0, 200, [&](std::span<uint8_t> out) {
                 std::thread([&] { r.ReleaseView(); }).join();
                 WriteRecord(out, 0, 1);
               }).ok());
  EXPECT_EQ(p->Stats().subpartitions[0].dropped_records, 1u) << "filled, then dropped";
  EXPECT_EQ(p->pool().SubpartitionBuffers(0), 0u) << "its buffer was recycled";
  int calls = 0;
  ASSERT_TRUE(p->EmitInPlace(0, 100, [&](std::span<uint8_t>) { ++calls; }).ok());
  const std::vector<uint32_t> sizes = {10, 20, 3 * kSegment, 30};
  size_t written = 0;
  ASSERT_TRUE(p->EmitInPlaceBatch(
                   0, sizes, [&](size_t, std::span<uint8_t>) { ++calls; }, &written)
                  .ok());
  EXPECT_EQ(written, sizes.size());
  EXPECT_EQ(calls, 0) << "no fill for a record dropped up front";
  const ResultPartitionStats st = p->Stats();
  EXPECT_EQ(st.subpartitions[0].dropped_records, 6u);
  EXPECT_EQ(st.subpartitions[0].records, 1u);
  p->Release();
  EXPECT_EQ(p->EmitInPlace(1, 10, fill.One()).code(), StatusCode::kClosed);
  ExpectNoLeaks();
}

// The partition fails while a record is being filled: the call returns the failure and the
// buffer taken for the fill goes home.
TEST_F(ResultPartitionTest, InPlaceFillRacingAFailureReturnsItAndRecyclesTheBuffer) {
  std::shared_ptr<ResultPartition> p = NewPartition("in-place-fail", 1, Options());
  const Status s = p->EmitInPlace(0, 100, [&](std::span<uint8_t> out) {
    std::thread([&] { p->Fail(Cancelled("stop the job")); }).join();
    WriteRecord(out, 0, 0);
  });
  EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
  EXPECT_NE(s.message().find("stop the job"), std::string::npos) << s.message();
  EXPECT_EQ(p->pool().Stats().lent, 0u) << "the filled buffer was recycled";
  EXPECT_EQ(p->Stats().records, 0u);
  p->Release();
  ExpectNoLeaks();
}

// --- Buffer debloating (SetBufferSize) -----------------------------------------------------

// Every data buffer of subpartition 0 still queued, by size (events are skipped).
std::vector<uint32_t> QueuedDataSizes(SubpartitionView& view) {
  std::vector<uint32_t> sizes;
  while (true) {
    auto item = view.PollNext();
    EXPECT_TRUE(item.ok()) << item.status().ToString();
    if (!item.ok() || !item->has_value()) return sizes;
    if ((*item)->buffer.type() == DataType::kData) sizes.push_back((*item)->buffer.size());
  }
}

// Sizes are clamped to [1 KiB, segment]; Emit and EmitInPlace finish a buffer at the first
// record that reaches the size; the queue cap is ceil(10 x size / segment).
TEST_F(ResultPartitionTest, DebloatedBuffersAreCutAtTheAnnouncedSize) {
  std::shared_ptr<ResultPartition> p = NewPartition("debloat-cut", 1, Options());
  auto view = p->CreateView(0, nullptr);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(p->SetBufferSize(0, 1), ResultPartition::kMinBufferSize);
  EXPECT_EQ(p->SetBufferSize(0, UINT32_MAX), kSegment);
  EXPECT_EQ(p->Stats().subpartitions[0].queue_cap, 0u) << "a segment: no cap";
  EXPECT_EQ(p->SetBufferSize(7, 100), kSegment) << "unknown subpartition: ignored";
  EXPECT_EQ((*view)->SetBufferSize(2000), 2000u);
  EXPECT_EQ(p->buffer_size(0), 2000u);
  EXPECT_EQ(p->Stats().subpartitions[0].queue_cap, 5u);  // ceil(10 x 2000 / 4096)
  // Ten copied records of 500 bytes with the prefix: two buffers of 2000, 1000 left current.
  const std::vector<uint8_t> record(496, 9);
  std::vector<std::span<const uint8_t>> batch(10, std::span<const uint8_t>(record));
  ASSERT_TRUE(p->EmitBatch(batch, 0).ok());
  EXPECT_EQ((*view)->backlog(), 2u);
  // Four in place: the current buffer reaches 2000 after two, the last two start another.
  Filler fill(0);
  const std::vector<uint32_t> sizes(4, 496);
  ASSERT_TRUE(p->EmitInPlaceBatch(0, sizes, fill.Batch()).ok());
  EXPECT_EQ((*view)->backlog(), 3u);
  ASSERT_TRUE(p->Finish().ok());
  EXPECT_EQ(QueuedDataSizes(**view), (std::vector<uint32_t>{2000, 2000, 2000, 1000}));
  (*view)->Release();
  p->Release();
  ExpectNoLeaks();
}

// Debloated, the writer starts a record only while fewer than queue_cap finished buffers are
// queued: it waits (backpressure) until the consumer polls one, or until a segment-sized
// announcement lifts the cap; Cancel wakes a writer waiting for room.
class DebloatCapTest : public ResultPartitionTest {
 protected:
  // A writer of 1020-byte records (1024 with the prefix: one debloated buffer each) into
  // subpartition 0 of a partition debloated to 1 KiB, blocked with three buffers queued.
  void StartBlockedWriter() {
    p_ = NewPartition("debloat-cap", 1, Options());
    auto view = p_->CreateView(0, nullptr);
    ASSERT_TRUE(view.ok());
    view_ = std::move(*view);
    ASSERT_EQ(p_->SetBufferSize(0, 1024), 1024u);
    ASSERT_EQ(p_->Stats().subpartitions[0].queue_cap, 3u);  // ceil(10 x 1024 / 4096)
    writer_ = std::async(std::launch::async, [this] {
      const std::vector<uint8_t> record(1020, 5);
      while (true) {
        Status s = p_->Emit(record, 0);
        if (!s.ok()) return s;
        emitted_.fetch_add(1);
      }
    });
    ASSERT_TRUE(testutil::PollUntil([&] { return emitted_.load() == 3; }, 10s, 1ms));
    std::this_thread::sleep_for(50ms);
    ASSERT_EQ(emitted_.load(), 3u) << "the writer must wait for queue room";
    EXPECT_EQ(view_->backlog(), 3u);
    EXPECT_EQ(p_->pool().Stats().lent, 3u) << "three segments, not the pool's ten";
  }
  void CancelAndEnd() {
    p_->Cancel();
    ASSERT_EQ(writer_.wait_for(20s), std::future_status::ready);
    const Status s = writer_.get();
    EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
    EXPECT_GT(p_->Stats().backpressure_ns, 0u);
    view_->Release();
    p_->Release();
    p_.reset();
    ExpectNoLeaks();
  }

  std::shared_ptr<ResultPartition> p_;
  std::unique_ptr<SubpartitionView> view_;
  std::atomic<uint64_t> emitted_{0};
  std::future<Status> writer_;
};

TEST_F(DebloatCapTest, PollMakesRoomAndASegmentSizeLiftsTheCap) {
  StartBlockedWriter();
  ASSERT_TRUE(view_->PollNext().ok());  // one polled: room for one more record
  ASSERT_TRUE(testutil::PollUntil([&] { return emitted_.load() == 4; }, 10s, 1ms));
  EXPECT_EQ(view_->backlog(), 3u);
  p_->SetBufferSize(0, kSegment);  // debloating ends: the writer goes on to the pool's limits
  ASSERT_TRUE(testutil::PollUntil([&] { return emitted_.load() > 5; }, 10s, 1ms));
  EXPECT_EQ(p_->Stats().subpartitions[0].queue_cap, 0u);
  CancelAndEnd();
}

TEST_F(DebloatCapTest, CancelWakesAWriterWaitingForRoom) {
  StartBlockedWriter();
  CancelAndEnd();
  EXPECT_EQ(emitted_.load(), 3u);
}

// --- Flush keeps the buffer appendable (Flink's flush) --------------------------------------

// Records written after a flush go into the flushed buffer the reader has not taken: read in
// order, once, byte-exact (the buffer holds exactly the records' bytes), and only one
// notification for the flush.
TEST_F(ResultPartitionTest, RecordsAppendedAfterAFlushAreReadWithIt) {
  std::shared_ptr<ResultPartition> p = NewPartition("append-after-flush", 1, Options());
  {
    Reader r(*p, 0);
    ASSERT_TRUE(p->Emit(MakeRecord(0, 0, 100), 0).ok());
    p->Flush(0);
    EXPECT_EQ(r.listener().count(), 1);
    EXPECT_EQ(p->Stats().subpartitions[0].backlog, 0u) << "flushed, not finished";
    EXPECT_EQ(r.view().backlog(), 1u) << "the reader sees the flushed buffer";
    ASSERT_TRUE(p->Emit(MakeRecord(0, 1, 200), 0).ok());
    ASSERT_TRUE(p->Emit(MakeRecord(0, 2, 300), 0).ok());
    EXPECT_EQ(r.listener().count(), 1) << "one notification per readable transition";
    EXPECT_EQ(r.view().backlog(), 1u);
    Result<std::optional<BufferAndBacklog>> item = r.view().PollNext();
    ASSERT_TRUE(item.ok() && item.value().has_value());
    const buffer::Buffer& taken = item.value()->buffer;
    EXPECT_EQ(taken.size(), 3 * kRecordLengthBytes + 600) << "no byte twice";
    EXPECT_EQ(item.value()->backlog, 0u);
    EXPECT_EQ(item.value()->sequence_number, 0u);
    // Taken: the writer starts a new buffer (not flushed: not readable until a flush).
    ASSERT_TRUE(p->Emit(MakeRecord(0, 3, 50), 0).ok());
    EXPECT_EQ(taken.size(), 3 * kRecordLengthBytes + 600) << "the taken buffer is not written";
    EXPECT_EQ(r.view().backlog(), 0u);
    EXPECT_FALSE(r.view().IsAvailable(1));
    Result<std::optional<BufferAndBacklog>> none = r.view().PollNext();
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none.value().has_value());
    p->FlushAll();
    EXPECT_EQ(r.listener().count(), 2) << "re-armed by the poll that found nothing";
    Result<std::optional<BufferAndBacklog>> second = r.view().PollNext();
    ASSERT_TRUE(second.ok() && second.value().has_value());
    EXPECT_NE(second.value()->buffer.data(), taken.data()) << "a new segment";
    EXPECT_EQ(second.value()->sequence_number, 1u);
    EXPECT_EQ(second.value()->buffer.size(), kRecordLengthBytes + 50);
    const ResultPartitionStats s = p->Stats();
    EXPECT_EQ(s.buffers_out, 2u);
    EXPECT_EQ(s.bytes_out, 4 * kRecordLengthBytes + 650);
    EXPECT_EQ(s.subpartitions[0].polled, 2u);
  }
  p->Release();
  p.reset();
  ExpectNoLeaks();
}

// A flushed buffer that fills up is finished (queued) as before; an event finishes it too, so
// records and events stay in order; the reader reads everything exactly once.
TEST_F(ResultPartitionTest, AFlushedBufferIsFinishedWhenFullOrByAnEvent) {
  std::shared_ptr<ResultPartition> p = NewPartition("flushed-full", 1, Options(0ms));
  Reader r(*p, 0);
  constexpr uint32_t kRecord = kSegment / 4 - kRecordLengthBytes;  // four fill a buffer
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, kRecord), 0).ok());
  EXPECT_EQ(p->Stats().subpartitions[0].backlog, 1u) << "full: finished";
  EXPECT_EQ(r.view().backlog(), 1u);
  ASSERT_TRUE(p->Emit(MakeRecord(0, 4, 40), 0).ok());
  EXPECT_EQ(r.view().backlog(), 2u) << "the full one and the new flushed one";
  ASSERT_TRUE(p->EmitEvent(Bytes("mark"), 0).ok());
  ASSERT_TRUE(p->Emit(MakeRecord(0, 5, 40), 0).ok());
  ASSERT_TRUE(p->Finish().ok());
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), 6u);
  EXPECT_EQ(r.data_buffers(), 3u);
  EXPECT_EQ(r.events(), std::vector<std::string>{"mark"});
  EXPECT_TRUE(r.eop());
}

// The late producer of issue 15: with a flush per record, a writer that runs ahead of its
// reader packs its records into the buffer the reader has not taken, instead of one buffer
// (segment) per record; with few segments it does not even wait for one.
TEST_F(ResultPartitionTest, AWriterAheadOfItsReaderPacksRecordsIntoOneBuffer) {
  ShuffleOptions o = TinyOptions();
  o.buffer_timeout = 0ms;
  std::shared_ptr<ResultPartition> p = NewPartition("late-writer", 2, o);
  Reader r(*p, 0);
  constexpr int kRecords = 30;  // 30 x 104 bytes: one 4 KiB buffer
  for (int i = 0; i < kRecords; ++i) ASSERT_TRUE(p->Emit(MakeRecord(0, i, 100), 0).ok());
  EXPECT_EQ(p->Stats().pool.lent, 1u) << "one segment for all of them";
  EXPECT_EQ(r.listener().count(), 1);
  ASSERT_TRUE(r.Drain().ok());
  EXPECT_EQ(r.records(), static_cast<uint64_t>(kRecords));
  EXPECT_EQ(r.data_buffers(), 1u);
}

// An in-place fill of the flushed buffer hides it from the reader only while the fill runs:
// the reader polls nothing meanwhile (and is re-armed), the backlog it was told stays, and
// putting the buffer back notifies it.
TEST_F(ResultPartitionTest, AnInPlaceFillOfTheFlushedBufferNotifiesWhenPutBack) {
  std::shared_ptr<ResultPartition> p = NewPartition("flushed-in-place", 1, Options(0ms));
  Reader r(*p, 0);
  Filler fill(0);
  ASSERT_TRUE(p->EmitInPlace(0, 40, fill.One()).ok());
  EXPECT_EQ(r.listener().count(), 1);
  bool polled_during_fill = true;
  uint32_t backlog_during_fill = 0;
  ASSERT_TRUE(p->EmitInPlace(0, 60, [&](std::span<uint8_t> out) {
                 std::thread([&] {
                   Result<std::optional<BufferAndBacklog>> item = r.view().PollNext();
                   polled_during_fill = !item.ok() || item.value().has_value();
                   backlog_during_fill = r.view().backlog();
                 }).join();
                 fill.One()(out);
               }).ok());
  EXPECT_FALSE(polled_during_fill) << "the buffer being filled is not readable";
  EXPECT_EQ(backlog_during_fill, 1u);
  EXPECT_EQ(r.listener().count(), 2) << "put back: readable again";
  ExpectReadInPlace(r, fill, 2, 1);
}

// FlushAll visits only subpartitions written since their last FlushAll: the listeners of the
// others are not notified, and a subpartition written again is flushed again.
TEST_F(ResultPartitionTest, FlushAllFlushesOnlyTheSubpartitionsWritten) {
  constexpr uint32_t kN = 200;
  global_ = MakeGlobal(kN + 64);
  std::shared_ptr<ResultPartition> p = NewPartition("flush-list", kN, Options());
  {
    std::vector<std::unique_ptr<Reader>> readers;
    for (uint32_t i = 0; i < kN; ++i) readers.push_back(std::make_unique<Reader>(*p, i));
    for (const uint32_t i : {7u, 199u, 3u}) ASSERT_TRUE(p->Emit(MakeRecord(i, 0, 64), i).ok());
    ASSERT_TRUE(p->Emit(MakeRecord(7, 1, 64), 7).ok());  // listed once
    p->FlushAll();
    for (uint32_t i = 0; i < kN; ++i) {
      const int expected = (i == 3 || i == 7 || i == 199) ? 1 : 0;
      EXPECT_EQ(readers[i]->listener().count(), expected) << "subpartition " << i;
      ASSERT_TRUE(readers[i]->Drain().ok());
    }
    EXPECT_EQ(readers[7]->records(), 2u);
    p->FlushAll();  // nothing written since: nobody notified
    ASSERT_TRUE(p->Emit(MakeRecord(199, 1, 64), 199).ok());
    p->FlushAll();
    EXPECT_EQ(readers[199]->listener().count(), 2);
    EXPECT_EQ(readers[7]->listener().count(), 1);
    ASSERT_TRUE(readers[199]->Drain().ok());
    EXPECT_EQ(readers[199]->records(), 2u);
    // Flushed by Flush(i) alone, then by FlushAll: flushed once, read once.
    ASSERT_TRUE(p->Emit(MakeRecord(3, 1, 64), 3).ok());
    p->Flush(3);
    p->FlushAll();
    EXPECT_EQ(readers[3]->listener().count(), 2);
    ASSERT_TRUE(readers[3]->Drain().ok());
    EXPECT_EQ(readers[3]->records(), 2u);
  }
  p->Release();
  p.reset();
  ExpectNoLeaks();
}

// Concurrency (ThreadSanitizer): a writer flushing per record (copied, batched and in-place
// records, some spanning buffers), a consumer polling on its own thread and another thread
// calling Flush/FlushAll: every record exactly once, in order, byte-exact, then the leak check.
TEST_F(ResultPartitionTest, FlushedBufferAppendsRaceTheReaderAndFlushers) {
  constexpr uint32_t kN = 3;
  std::shared_ptr<ResultPartition> p = NewPartition("flush-race", kN, Options(0ms));
  {
    Doorbell bell;
    std::vector<std::unique_ptr<Reader>> readers;
    for (uint32_t i = 0; i < kN; ++i) readers.push_back(std::make_unique<Reader>(*p, i, &bell));
    std::thread consumer = DrainUntilEndOfPartition(readers, bell);
    std::atomic<bool> stop{false};
    std::thread flusher([&] {
      uint32_t i = 0;
      while (!stop.load()) {
        if (++i % 2 == 0) {
          p->FlushAll();
        } else {
          p->Flush(i % kN);
        }
        std::this_thread::yield();
      }
    });
    std::mt19937 rng(15);
    std::vector<uint64_t> sent(kN, 0);
    std::vector<std::vector<uint8_t>> batch;
    for (int round = 0; round < Scaled(3000); ++round) {
      const uint32_t sp = rng() % kN;
      switch (round % 3) {
        case 0: {
          const uint32_t size = rng() % 30 == 0 ? kSegment + rng() % kSegment : 16 + rng() % 200;
          ASSERT_TRUE(p->Emit(MakeRecord(sp, sent[sp]++, size), sp).ok());
          break;
        }
        case 1: {
          batch.clear();
          for (uint32_t k = rng() % 8; k > 0; --k) {
            batch.push_back(MakeRecord(sp, sent[sp]++, 16 + rng() % 300));
          }
          ASSERT_TRUE(p->EmitBatch(Spans(batch), sp).ok());
          break;
        }
        default:
          ASSERT_TRUE(p->EmitInPlace(sp, 16 + rng() % 500, [&](std::span<uint8_t> out) {
                         WriteRecord(out, sp, sent[sp]++);
                       }).ok());
      }
    }
    ASSERT_TRUE(p->Finish().ok());
    consumer.join();
    stop = true;
    flusher.join();
    for (uint32_t i = 0; i < kN; ++i) {
      EXPECT_TRUE(readers[i]->eop()) << "subpartition " << i;
      EXPECT_EQ(readers[i]->records(), sent[i]) << "subpartition " << i;
    }
  }
  p->Release();
  p.reset();
  ExpectNoLeaks();
}

}  // namespace sluice::shuffle
