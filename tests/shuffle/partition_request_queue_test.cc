// PartitionRequestQueue without sockets: fake subpartition views and a recording output. The
// credit arithmetic is checked against a model over randomised sequences; every test ends with
// the leak check (every segment back in the NetworkBufferPool).
#include "shuffle/partition_request_queue.h"

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <functional>
#include <random>

#include "buffer/network_buffer_pool.h"
#include "shuffle/result_partition.h"
#include "shuffle/shuffle_server.h"
#include "testutil/pools.h"
#include "testutil/heap.h"

namespace sluice::shuffle {
namespace {

using buffer::Buffer;
using buffer::DataType;

// A subpartition view over a queue the test fills. Loop thread only (the test's thread).
class FakeView final : public SubpartitionView {
 public:
  explicit FakeView(SubpartitionListener* listener) : listener_(listener) {}

  void Push(Buffer b) { items_.push_back(std::move(b)); }
  void Fail(Status st) { failure_ = std::move(st); }
  // As a producer thread would, after adding an item.
  void NotifyListener() { listener_->NotifyDataAvailable(); }

  Result<std::optional<BufferAndBacklog>> PollNext() override {
    if (released_) return ClosedError("view released");
    if (!failure_.ok()) return failure_;
    if (items_.empty()) return std::optional<BufferAndBacklog>();
    BufferAndBacklog out;
    out.buffer = std::move(items_.front());
    items_.pop_front();
    out.backlog = backlog();
    out.next_is_event = !items_.empty() && items_.front().type() != DataType::kData;
    out.sequence_number = polled_++;
    return std::optional<BufferAndBacklog>(std::move(out));
  }
  bool IsAvailable(int32_t credit) const override {
    if (released_ || !failure_.ok()) return true;
    if (items_.empty()) return false;
    return items_.front().type() != DataType::kData || credit > 0;
  }
  uint32_t backlog() const override {
    uint32_t n = 0;
    for (const Buffer& b : items_) n += b.type() == DataType::kData ? 1 : 0;
    return n;
  }
  void Release() override {
    released_ = true;
    items_.clear();
  }
  bool IsReleased() const override { return released_; }
  size_t queued() const { return items_.size(); }

 private:
  SubpartitionListener* const listener_;
  std::deque<Buffer> items_;
  Status failure_;
  bool released_ = false;
  uint32_t polled_ = 0;
};

struct SentFrame {
  enum Kind { kBuffer, kBacklog, kError } kind;
  uint64_t receiver_id = 0;
  int32_t sequence = -1;
  int32_t backlog = -1;
  DataType data_type = DataType::kData;
  uint32_t item = 0;  // the item number the test wrote into the payload
  fb::ErrorCode code = fb::ErrorCode::Unknown;
  std::string message;
};

class RecordingOutput final : public QueueOutput {
 public:
  bool CanSend() const override { return can_send; }
  void SendBuffer(const schema::BufferResponseFields& f, Buffer payload) override {
    SentFrame s{SentFrame::kBuffer};
    s.receiver_id = f.receiver_id;
    s.sequence = f.sequence_number;
    s.backlog = f.backlog;
    s.data_type = f.data_type;
    std::memcpy(&s.item, payload.data(), sizeof(s.item));
    EXPECT_EQ(f.payload_size, payload.size());
    frames.push_back(s);
    // The payload is released here, as after its write completes.
  }
  void SendBacklogAnnouncement(uint64_t receiver_id, int32_t backlog) override {
    SentFrame s{SentFrame::kBacklog};
    s.receiver_id = receiver_id;
    s.backlog = backlog;
    frames.push_back(s);
  }
  void SendChannelError(uint64_t receiver_id, fb::ErrorCode code,
                        const std::string& message) override {
    SentFrame s{SentFrame::kError};
    s.receiver_id = receiver_id;
    s.code = code;
    s.message = message;
    frames.push_back(s);
  }

  bool can_send = true;
  std::vector<SentFrame> frames;
};

class PartitionRequestQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = testutil::MakeNetworkBufferPool(512, 4096);
    queue_ = std::make_unique<PartitionRequestQueue>(
        &out_,
        [this](std::function<void()> task) {
          posted_.push_back(std::move(task));
          return true;
        },
        &stats_, /*checksums=*/true);
  }
  void TearDown() override {
    queue_.reset();
    posted_.clear();
    EXPECT_EQ(stats_.active_readers.load(), 0u);
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << pool_->DebugString();
  }

  // Adds a reader over a new FakeView; returns the view (owned by the queue).
  FakeView* AddReader(uint64_t id, int32_t credit) {
    FakeView* view = nullptr;
    Status st = queue_->AddReader(
        id, credit, "p/" + std::to_string(id),
        [&](SubpartitionListener* l) -> Result<std::unique_ptr<SubpartitionView>> {
          auto v = std::make_unique<FakeView>(l);
          view = v.get();
          return std::unique_ptr<SubpartitionView>(std::move(v));
        });
    EXPECT_TRUE(st.ok()) << st.ToString();
    return view;
  }

  Buffer Item(DataType type) {
    buffer::MemorySegment* seg = pool_->TryRequestSegment();
    SLUICE_CHECK(seg != nullptr, "test pool exhausted");
    Buffer b = Buffer::Wrap(seg, pool_->direct_recycler(), type);
    const uint32_t n = next_item_++;
    std::memcpy(b.data(), &n, sizeof(n));
    b.SetSize(type == DataType::kData ? 100 : 8);
    return b;
  }
  // Pushes an item and notifies as a producer would; the notification arrives through Post.
  uint32_t Produce(FakeView* v, DataType type) {
    const uint32_t n = next_item_;
    v->Push(Item(type));
    v->NotifyListener();
    RunPosted();
    return n;
  }
  void RunPosted() {
    while (!posted_.empty()) {
      auto tasks = std::move(posted_);
      posted_.clear();
      for (auto& t : tasks) t();
    }
  }
  size_t Count(SentFrame::Kind kind) const {
    size_t n = 0;
    for (const SentFrame& f : out_.frames) n += f.kind == kind ? 1 : 0;
    return n;
  }

  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  RecordingOutput out_;
  ShuffleServerStats stats_;
  std::vector<std::function<void()>> posted_;
  std::unique_ptr<PartitionRequestQueue> queue_;
  uint32_t next_item_ = 0;
};

// Randomised AddCredit / data / event / output blocked sequences against a model: never more
// data buffers than credit, events never wait for credit and keep their order, sequence numbers
// run without gaps, every backlog is right, and exactly one BacklogAnnouncement per stall in
// which the backlog grew beyond what the last buffer sent told the receiver (none otherwise).
TEST_F(PartitionRequestQueueTest, NeverMoreDataThanCreditAgainstAModel) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    out_.frames.clear();
    const uint64_t id = seed;
    const int32_t initial = static_cast<int32_t>(rng() % 3);
    FakeView* v = AddReader(id, initial);
    int64_t credit_given = initial;
    int64_t data_sent = 0;
    std::deque<std::pair<uint32_t, DataType>> pending;  // written, not yet seen sent
    bool announced = false;
    uint64_t expected_announcements = 0;
    int32_t told = 0;  // the backlog the last buffer sent carried
    int32_t next_seq = 0;
    size_t seen = 0;
    for (int op = 0; op < 1500; ++op) {
      const uint32_t dice = rng() % 100;
      if (dice < 25) {
        const int32_t c = 1 + static_cast<int32_t>(rng() % 3);
        ASSERT_TRUE(queue_->AddCredit(id, c).ok());
        credit_given += c;
        announced = false;
      } else if (dice < 70) {
        pending.emplace_back(Produce(v, DataType::kData), DataType::kData);
      } else if (dice < 85) {
        pending.emplace_back(Produce(v, DataType::kEvent), DataType::kEvent);
      } else {
        out_.can_send = !out_.can_send;
        if (out_.can_send) queue_->WriteMore();
      }
      // Check every frame sent since the last step against what was written.
      for (; seen < out_.frames.size(); ++seen) {
        const SentFrame& f = out_.frames[seen];
        ASSERT_EQ(f.receiver_id, id);
        if (f.kind == SentFrame::kBacklog) {
          EXPECT_EQ(f.backlog, static_cast<int32_t>(v->backlog()));
          EXPECT_GT(f.backlog, told) << "an announcement that tells nothing new";
          continue;
        }
        ASSERT_EQ(f.kind, SentFrame::kBuffer);
        ASSERT_FALSE(pending.empty());
        EXPECT_EQ(f.item, pending.front().first) << "seed " << seed << " op " << op;
        EXPECT_EQ(f.data_type, pending.front().second);
        pending.pop_front();
        EXPECT_EQ(f.sequence, next_seq++);
        int32_t data_left = 0;
        for (const auto& p : pending) data_left += p.second == DataType::kData ? 1 : 0;
        EXPECT_EQ(f.backlog, data_left);
        told = f.backlog;
        if (f.data_type == DataType::kData) ++data_sent;
        ASSERT_LE(data_sent, credit_given) << "seed " << seed << " op " << op;
      }
      if (!out_.can_send) continue;
      // Drained: what is left waits for credit, and a stall was announced exactly once.
      const int64_t credit = credit_given - data_sent;
      EXPECT_EQ(queue_->credit(id), credit);
      if (!pending.empty()) {
        EXPECT_EQ(pending.front().second, DataType::kData) << "an event waited";
        EXPECT_EQ(credit, 0) << "data waited with credit";
        if (!announced && static_cast<int32_t>(v->backlog()) > told) {
          announced = true;
          ++expected_announcements;
        }
      }
      ASSERT_EQ(Count(SentFrame::kBacklog), expected_announcements)
          << "seed " << seed << " op " << op;
    }
    queue_->CancelReader(id);
    EXPECT_FALSE(queue_->HasReader(id));
    out_.can_send = true;
  }
  EXPECT_GT(stats_.backlog_announcements.load(), 20u);
}

// A receiver learns its sender's backlog from every buffer; a stall is announced once, and only
// when the backlog grew beyond what the last buffer told it.
TEST_F(PartitionRequestQueueTest, OneBacklogAnnouncementPerZeroCreditStallWhenItTellsSomethingNew) {
  FakeView* v = AddReader(7, 0);
  for (int i = 0; i < 3; ++i) Produce(v, DataType::kData);
  // Announced when the first buffer found no credit; the next two join the same stall.
  ASSERT_EQ(out_.frames.size(), 1u);
  EXPECT_EQ(out_.frames[0].kind, SentFrame::kBacklog);
  EXPECT_EQ(out_.frames[0].backlog, 1);
  // More data during the same stall: no second announcement.
  Produce(v, DataType::kData);
  queue_->WriteMore();
  EXPECT_EQ(out_.frames.size(), 1u);
  // One credit: one buffer, which carries the backlog of 3; the stall that begins again needs
  // no announcement.
  ASSERT_TRUE(queue_->AddCredit(7, 1).ok());
  ASSERT_EQ(out_.frames.size(), 2u);
  EXPECT_EQ(out_.frames[1].kind, SentFrame::kBuffer);
  EXPECT_EQ(out_.frames[1].backlog, 3);
  // The backlog grows during it: announced once.
  Produce(v, DataType::kData);
  ASSERT_EQ(out_.frames.size(), 3u);
  EXPECT_EQ(out_.frames[2].kind, SentFrame::kBacklog);
  EXPECT_EQ(out_.frames[2].backlog, 4);
  Produce(v, DataType::kData);
  EXPECT_EQ(out_.frames.size(), 3u);
  // Enough credit: the rest goes, no announcement.
  ASSERT_TRUE(queue_->AddCredit(7, 6).ok());
  EXPECT_EQ(out_.frames.size(), 8u);
  EXPECT_EQ(Count(SentFrame::kBacklog), 2u);
  EXPECT_EQ(queue_->credit(7), 1);
  EXPECT_EQ(stats_.backlog_announcements.load(), 2u);
  EXPECT_EQ(stats_.buffers_out.load(), 6u);
  EXPECT_EQ(stats_.credits_in.load(), 7u);
}

TEST_F(PartitionRequestQueueTest, EventsNeedNoCreditAndKeepTheirOrder) {
  FakeView* v = AddReader(1, 0);
  const uint32_t e1 = Produce(v, DataType::kEvent);
  const uint32_t d1 = Produce(v, DataType::kData);
  const uint32_t e2 = Produce(v, DataType::kEvent);
  // e1 goes at once; d1 waits for credit (announced); e2 stays behind d1.
  ASSERT_EQ(out_.frames.size(), 2u);
  EXPECT_EQ(out_.frames[0].item, e1);
  EXPECT_EQ(out_.frames[0].sequence, 0);
  EXPECT_EQ(out_.frames[1].kind, SentFrame::kBacklog);
  EXPECT_EQ(out_.frames[1].backlog, 1);
  ASSERT_TRUE(queue_->AddCredit(1, 1).ok());
  ASSERT_EQ(out_.frames.size(), 4u);
  EXPECT_EQ(out_.frames[2].item, d1);
  EXPECT_EQ(out_.frames[2].sequence, 1);
  EXPECT_EQ(out_.frames[3].item, e2);
  EXPECT_EQ(out_.frames[3].sequence, 2);
  EXPECT_EQ(stats_.events_out.load(), 2u);
}

TEST_F(PartitionRequestQueueTest, CreditOverTheBoundIsACreditViolation) {
  FakeView* v = AddReader(3, 5);
  ASSERT_NE(v, nullptr);
  Status st = queue_->AddCredit(3, static_cast<int32_t>(PartitionRequestQueue::kMaxCredit - 4));
  EXPECT_EQ(st.code(), StatusCode::kProtocolError);
  EXPECT_NE(st.message().find("receiver 3"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("above the bound"), std::string::npos) << st.message();
  EXPECT_EQ(queue_->credit(3), 5);  // unchanged
  EXPECT_TRUE(
      queue_->AddCredit(3, static_cast<int32_t>(PartitionRequestQueue::kMaxCredit - 5)).ok());
  EXPECT_EQ(queue_->credit(3), PartitionRequestQueue::kMaxCredit);
  EXPECT_EQ(queue_->AddCredit(3, 1).code(), StatusCode::kProtocolError);
}

TEST_F(PartitionRequestQueueTest, CreditForAReleasedReceiverIsIgnored) {
  FakeView* v = AddReader(9, 0);
  Produce(v, DataType::kData);
  queue_->CancelReader(9);
  EXPECT_FALSE(queue_->HasReader(9));
  const size_t frames = out_.frames.size();
  EXPECT_TRUE(queue_->AddCredit(9, 4).ok());
  EXPECT_TRUE(queue_->AddCredit(12345, 4).ok());  // never known
  EXPECT_EQ(out_.frames.size(), frames);
  EXPECT_EQ(stats_.credits_in.load(), 0u);
}

TEST_F(PartitionRequestQueueTest, EndOfPartitionReleasesTheReader) {
  FakeView* v = AddReader(4, 2);
  Produce(v, DataType::kData);
  v->Push(Item(DataType::kEndOfPartition));
  v->Push(Item(DataType::kData));  // after the end: never sent, recycled by the release
  v->NotifyListener();
  RunPosted();
  ASSERT_EQ(out_.frames.size(), 2u);
  EXPECT_EQ(out_.frames[1].data_type, DataType::kEndOfPartition);
  EXPECT_FALSE(queue_->HasReader(4));
  EXPECT_EQ(stats_.active_readers.load(), 0u);
  EXPECT_TRUE(queue_->AddCredit(4, 1).ok());  // credit crossing the release: ignored
  EXPECT_EQ(out_.frames.size(), 2u);
}

TEST_F(PartitionRequestQueueTest, AReceiverIdInUseIsRefusedAndTheFirstReaderGoesOn) {
  FakeView* first = AddReader(5, 1);
  bool factory_called = false;
  Status st = queue_->AddReader(
      5, 100, "other/0", [&](SubpartitionListener*) -> Result<std::unique_ptr<SubpartitionView>> {
        factory_called = true;
        return InvalidArgument("unused");
      });
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(factory_called);
  EXPECT_EQ(queue_->credit(5), 1);
  Produce(first, DataType::kData);
  ASSERT_EQ(out_.frames.size(), 1u);
  EXPECT_EQ(out_.frames[0].receiver_id, 5u);
}

TEST_F(PartitionRequestQueueTest, AViewThatCannotBeCreatedAddsNoReader) {
  Status st = queue_->AddReader(
      6, 1, "p/6", [](SubpartitionListener*) -> Result<std::unique_ptr<SubpartitionView>> {
        return InvalidArgument("subpartition 0 of partition 'p' already has a consumer");
      });
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(queue_->HasReader(6));
  EXPECT_EQ(stats_.active_readers.load(), 0u);
}

TEST_F(PartitionRequestQueueTest, AFailedViewFailsItsChannelOnly) {
  FakeView* bad = AddReader(1, 2);
  FakeView* good = AddReader(2, 2);
  bad->Fail(Status(StatusCode::kCancelled, "producer of 'p' failed: disk full"));
  bad->NotifyListener();
  RunPosted();
  ASSERT_EQ(out_.frames.size(), 1u);
  EXPECT_EQ(out_.frames[0].kind, SentFrame::kError);
  EXPECT_EQ(out_.frames[0].receiver_id, 1u);
  EXPECT_EQ(out_.frames[0].code, fb::ErrorCode::ProducerFailed);
  EXPECT_EQ(out_.frames[0].message, "producer of 'p' failed: disk full");
  EXPECT_FALSE(queue_->HasReader(1));
  Produce(good, DataType::kData);
  ASSERT_EQ(out_.frames.size(), 2u);
  EXPECT_EQ(out_.frames[1].receiver_id, 2u);
}

TEST_F(PartitionRequestQueueTest, ReadersTakeTurns) {
  FakeView* a = AddReader(1, 10);
  FakeView* b = AddReader(2, 10);
  out_.can_send = false;
  for (int i = 0; i < 3; ++i) {
    Produce(a, DataType::kData);
    Produce(b, DataType::kData);
  }
  EXPECT_TRUE(out_.frames.empty());
  out_.can_send = true;
  queue_->WriteMore();
  ASSERT_EQ(out_.frames.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(out_.frames[i].receiver_id, i % 2 == 0 ? 1u : 2u);
}

TEST_F(PartitionRequestQueueTest, ANotificationAfterTheQueueIsGoneDoesNothing) {
  FakeView* v = AddReader(1, 1);
  v->Push(Item(DataType::kData));
  v->NotifyListener();  // posted, not run yet
  ASSERT_FALSE(posted_.empty()) << "the notification posted no task: nothing stale to run";
  queue_.reset();       // releases the reader and its view (the item is recycled)
  RunPosted();          // the stale task finds no reader
  EXPECT_TRUE(out_.frames.empty());
}

// The producer's whole side of a wide shuffle, per channel: a subpartition of a partition of
// several thousand, its view, and the server's reader serving it (credit, queue slot, the
// receiver-id map) stay under 1 KiB of heap together before data flows.
TEST_F(PartitionRequestQueueTest, HeapPerWideChannelWithItsReaderUnderOneKiB) {
  if (testutil::kHeapUnmeasurable) GTEST_SKIP() << testutil::kHeapUnmeasurableReason;
  constexpr uint32_t kChannels = 4000;
  ShuffleOptions options;
  options.credit.segment_size = 4096;
  options.credit.wide_gate_buffers = 256;
  const size_t before = testutil::HeapInUse();
  auto part = ResultPartition::Create("wide", kChannels, pool_, options);
  ASSERT_TRUE(part.ok()) << part.status().ToString();
  for (uint32_t i = 0; i < kChannels; ++i) {
    Status st = queue_->AddReader(
        i + 1, 2, "wide/" + std::to_string(i),
        [&](SubpartitionListener* l) { return (*part)->CreateView(i, l); });
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  // Subpartition, view and reader together.
  testutil::ExpectHeapPerItemBelow(before, kChannels, 1024.0, "heap_bytes_per_producer_channel");
  for (uint32_t i = 0; i < kChannels; ++i) queue_->CancelReader(i + 1);
  for (auto& task : posted_) task();
  posted_.clear();
  (*part)->Release();
}

}  // namespace
}  // namespace sluice::shuffle
