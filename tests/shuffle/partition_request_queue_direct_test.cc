// PartitionRequestQueue write-through without sockets: a view notified on a producer thread
// is served on that thread when the output writes at once, within credit, in sequence, and
// falls back to a post when the output is busy, other readers wait, or the loop holds the
// queue; and that a producer out of credit reads the AddCredits waiting on its connection
// (read-through). The test thread plays the loop. Every test ends with the leak check.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "buffer/network_buffer_pool.h"
#include "shuffle/partition_request_queue.h"
#include "shuffle/shuffle_server.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

using buffer::Buffer;
using buffer::DataType;

// A view the test fills from any thread (a mutex, as the real subpartition has).
class LockedView final : public SubpartitionView {
 public:
  explicit LockedView(SubpartitionListener* listener) : listener_(listener) {}

  void Push(Buffer b) {
    std::lock_guard lock(mu_);
    items_.push_back(std::move(b));
  }
  void Fail(Status st) {
    std::lock_guard lock(mu_);
    failure_ = std::move(st);
  }
  // The producer's notification, outside the view's lock.
  void Notify() { listener_->NotifyDataAvailable(); }

  Result<std::optional<BufferAndBacklog>> PollNext() override {
    std::lock_guard lock(mu_);
    if (released_) return ClosedError("view released");
    if (!failure_.ok()) return failure_;
    if (items_.empty()) return std::optional<BufferAndBacklog>();
    BufferAndBacklog out;
    out.buffer = std::move(items_.front());
    items_.pop_front();
    out.backlog = BacklogLocked();
    out.next_is_event = !items_.empty() && items_.front().type() != DataType::kData;
    return std::optional<BufferAndBacklog>(std::move(out));
  }
  bool IsAvailable(int32_t credit) const override {
    std::lock_guard lock(mu_);
    if (released_ || !failure_.ok()) return true;
    if (items_.empty()) return false;
    return items_.front().type() != DataType::kData || credit > 0;
  }
  uint32_t backlog() const override {
    std::lock_guard lock(mu_);
    return BacklogLocked();
  }
  void Release() override {
    std::deque<Buffer> drop;
    {
      std::lock_guard lock(mu_);
      released_ = true;
      drop.swap(items_);
    }
  }
  bool IsReleased() const override {
    std::lock_guard lock(mu_);
    return released_;
  }
  uint32_t SetBufferSize(uint32_t bytes) override { return bytes; }  // takes any size

 private:
  uint32_t BacklogLocked() const {
    uint32_t n = 0;
    for (const Buffer& b : items_) n += b.type() == DataType::kData ? 1 : 0;
    return n;
  }
  SubpartitionListener* const listener_;
  mutable std::mutex mu_;
  std::deque<Buffer> items_;
  Status failure_;
  bool released_ = false;
};

struct Sent {
  enum Kind { kBuffer, kBacklog, kError } kind;
  uint64_t receiver_id = 0;
  int32_t sequence = -1;
  int32_t backlog = -1;
  DataType data_type = DataType::kData;
  uint32_t item = 0;
  bool on_loop = false;  // sent on the test's loop thread
  fb::ErrorCode code = fb::ErrorCode::Unknown;
};

// Records frames with the thread they were sent on. The test thread is the loop.
class ThreadOutput final : public QueueOutput {
 public:
  bool CanSend() const override { return can_send.load(); }
  bool DirectWritable() const override {
    direct_writable_calls.fetch_add(1);
    return direct_writable.load();
  }
  bool OnLoopThread() const override { return std::this_thread::get_id() == loop_thread; }
  void SendBuffer(const schema::BufferResponseFields& f, Buffer payload) override {
    Sent s{Sent::kBuffer};
    s.receiver_id = f.receiver_id;
    s.sequence = f.sequence_number;
    s.backlog = f.backlog;
    s.data_type = f.data_type;
    std::memcpy(&s.item, payload.data(), sizeof(s.item));
    Record(s);
    if (on_send) on_send();
  }
  void SendBacklogAnnouncement(uint64_t receiver_id, int32_t backlog) override {
    Sent s{Sent::kBacklog};
    s.receiver_id = receiver_id;
    s.backlog = backlog;
    Record(s);
  }
  void SendChannelError(uint64_t receiver_id, fb::ErrorCode code, const std::string&) override {
    Sent s{Sent::kError};
    s.receiver_id = receiver_id;
    s.code = code;
    Record(s);
  }
  std::vector<Sent> frames() {
    std::lock_guard lock(mu);
    return frames_;
  }
  // Read-through: AddCredits "on the socket", taken in order while the sink accepts them. The
  // socket's mutex is only tried, as the connection's read mutex is.
  size_t ReadCredits(CreditSink& sink) override {
    std::unique_lock lock(socket_mu, std::try_to_lock);
    if (!lock.owns_lock()) return 0;
    ++read_calls;
    size_t n = 0;
    while (!socket.empty() && sink.Accepts(socket.front().first, socket.front().second)) {
      const auto [id, credit] = socket.front();
      socket.pop_front();
      sink.Apply(id, credit);
      ++n;
    }
    return n;
  }
  void PutCredit(uint64_t receiver_id, int32_t credit) {
    std::lock_guard lock(socket_mu);
    socket.emplace_back(receiver_id, credit);
  }
  size_t SocketCredits() {
    std::lock_guard lock(socket_mu);
    return socket.size();
  }
  // The loop reads the socket: every AddCredit waiting goes through AddCredit.
  std::vector<Status> LoopReadsCredits(PartitionRequestQueue& queue) {
    std::lock_guard lock(socket_mu);
    std::vector<Status> out;
    for (; !socket.empty(); socket.pop_front()) {
      out.push_back(queue.AddCredit(socket.front().first, socket.front().second));
    }
    return out;
  }

  std::thread::id loop_thread = std::this_thread::get_id();
  std::atomic<bool> can_send{true};
  std::atomic<bool> direct_writable{true};
  std::function<void()> on_send;  // after each SendBuffer (set before use)
  std::mutex socket_mu;
  std::deque<std::pair<uint64_t, int32_t>> socket;  // GUARDED_BY(socket_mu)
  std::atomic<uint32_t> read_calls{0};
  mutable std::atomic<uint32_t> direct_writable_calls{0};

 private:
  void Record(Sent s) {
    s.on_loop = OnLoopThread();
    std::lock_guard lock(mu);
    frames_.push_back(s);
  }
  std::mutex mu;
  std::vector<Sent> frames_;
};

class QueueDirectTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kPoolSegments = 2048;
  void SetUp() override {
    // Producers here are not held back by a pool of their own (LockedView takes any buffer):
    // a race may hold all its items at once, so the pool has room for every one of them.
    pool_ = testutil::MakeNetworkBufferPool(kPoolSegments, 4096);
    queue_ = std::make_unique<PartitionRequestQueue>(
        &out_,
        [this](std::function<void()> task) {
          std::lock_guard lock(post_mu_);
          posted_.push_back(std::move(task));
          return true;
        },
        &stats_, /*checksums=*/false);
  }
  void TearDown() override {
    queue_.reset();
    posted_.clear();
    EXPECT_EQ(stats_.active_readers.load(), 0u);
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << pool_->DebugString();
  }

  LockedView* AddReader(uint64_t id, int32_t credit) {
    LockedView* view = nullptr;
    Status st = queue_->AddReader(
        id, credit, "p/" + std::to_string(id),
        [&](SubpartitionListener* l) -> Result<std::unique_ptr<SubpartitionView>> {
          auto v = std::make_unique<LockedView>(l);
          view = v.get();
          return std::unique_ptr<SubpartitionView>(std::move(v));
        });
    EXPECT_TRUE(st.ok()) << st.ToString();
    return view;
  }
  // A reader without credit holding one data buffer, its backlog announced on the loop (the
  // last frame sent).
  void AddAnnouncedReader(uint64_t id) {
    LockedView* v = AddReader(id, 0);
    v->Push(Item(DataType::kData));
    v->Notify();  // on the loop: a post, then the backlog announcement
    RunPosted();
    const auto f = out_.frames();
    ASSERT_FALSE(f.empty());
    EXPECT_EQ(f.back().kind, Sent::kBacklog);
    EXPECT_EQ(f.back().receiver_id, id);
  }
  Buffer Item(DataType type) {
    buffer::MemorySegment* seg = pool_->TryRequestSegment();
    SLUICE_CHECK(seg != nullptr, "test pool exhausted");
    Buffer b = Buffer::Wrap(seg, pool_->direct_recycler(), type);
    const uint32_t n = next_item_.fetch_add(1);
    std::memcpy(b.data(), &n, sizeof(n));
    b.SetSize(type == DataType::kData ? 100 : 8);
    return b;
  }
  // On a producer thread: push the items, then one notification (as a flush would).
  void ProduceOnThread(LockedView* v, std::vector<DataType> types) {
    std::thread producer([&] {
      for (DataType t : types) v->Push(Item(t));
      v->Notify();
    });
    producer.join();
  }
  // Reader `id`, revived by credit read on a producer's thread, was left to the loop through
  // one post: running it sends reader `id`'s buffer there, as frame number `frame`.
  void ExpectTheLoopServesRevived(uint64_t id, size_t frame) {
    EXPECT_EQ(PostedCount(), 1u) << "reader " << id << "'s own post";
    RunPosted();
    const auto f = out_.frames();
    ASSERT_EQ(f.size(), frame + 1);
    EXPECT_EQ(f[frame].receiver_id, id);
    EXPECT_TRUE(f[frame].on_loop);
  }
  size_t PostedCount() {
    std::lock_guard lock(post_mu_);
    return posted_.size();
  }
  void RunPosted() {
    while (true) {
      std::vector<std::function<void()>> tasks;
      {
        std::lock_guard lock(post_mu_);
        tasks.swap(posted_);
      }
      if (tasks.empty()) return;
      for (auto& t : tasks) t();
    }
  }

  // Readers 1..readers with credit 2 each; a producer thread per reader flushes `items`
  // buffers one by one, while this thread plays the loop: it runs the posts, checks each
  // reader's sequence numbers (no gaps: never more data than credit), calls `credit` for every
  // buffer sent (the index of the frame, the receiver) and `each_turn` (if set) once a turn,
  // until every buffer arrived.
  void RaceProducersAgainstTheLoop(uint32_t readers, uint32_t items,
                                   const std::function<void(size_t, uint64_t)>& credit,
                                   const std::function<void(uint32_t)>& each_turn) {
    ASSERT_LE(readers * items, kPoolSegments) << "a race must fit the pool at once";
    std::vector<LockedView*> views;
    for (uint32_t r = 0; r < readers; ++r) views.push_back(AddReader(r + 1, 2));
    std::vector<std::thread> producers;
    for (uint32_t r = 0; r < readers; ++r) {
      producers.emplace_back([&, r] {
        for (uint32_t i = 0; i < items; ++i) {
          views[r]->Push(Item(DataType::kData));
          views[r]->Notify();
          if (i % 8 == 0) std::this_thread::yield();
        }
      });
    }
    std::vector<uint32_t> seen(readers, 0);
    size_t handled = 0;
    uint32_t total = 0;
    for (uint32_t turn = 0; total < readers * items && !HasFatalFailure(); ++turn) {
      RunPosted();
      auto f = out_.frames();
      for (; handled < f.size(); ++handled) {
        if (f[handled].kind != Sent::kBuffer) continue;
        const uint32_t r = static_cast<uint32_t>(f[handled].receiver_id - 1);
        EXPECT_EQ(f[handled].sequence, static_cast<int32_t>(seen[r])) << "reader " << r + 1;
        ++seen[r];
        ++total;
        credit(handled, r + 1);
      }
      if (each_turn) each_turn(turn);
      std::this_thread::yield();
    }
    for (auto& t : producers) t.join();
    for (uint32_t r = 0; r < readers; ++r) EXPECT_EQ(seen[r], items) << "reader " << r + 1;
  }

  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  ThreadOutput out_;
  ShuffleServerStats stats_;
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::unique_ptr<PartitionRequestQueue> queue_;
  std::atomic<uint32_t> next_item_{0};
};

// Credit 2, five buffers flushed: two go out on the producer's thread (sequence 0 and 1); the
// second carried the backlog of 3, so the stall needs no announcement and nothing is left to
// the loop until credit comes; the loop's AddCredit sends the rest.
TEST_F(QueueDirectTest, ProducerThreadSendsWithinCreditAndLeavesTheRestToTheLoop) {
  LockedView* v = AddReader(1, 2);
  ProduceOnThread(v, std::vector<DataType>(5, DataType::kData));
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(f[i].kind, Sent::kBuffer);
    EXPECT_FALSE(f[i].on_loop) << "frame " << i << " should go out on the producer thread";
    EXPECT_EQ(f[i].sequence, i);
    EXPECT_EQ(f[i].item, static_cast<uint32_t>(i));
    EXPECT_EQ(f[i].backlog, 4 - i);
  }
  EXPECT_EQ(queue_->credit(1), 0);
  EXPECT_EQ(PostedCount(), 0u) << "the receiver knows the backlog: nothing for the loop";
  ASSERT_TRUE(queue_->AddCredit(1, 3).ok());
  f = out_.frames();
  ASSERT_EQ(f.size(), 5u);
  for (int i = 2; i < 5; ++i) {
    EXPECT_EQ(f[i].kind, Sent::kBuffer);
    EXPECT_TRUE(f[i].on_loop);
    EXPECT_EQ(f[i].sequence, i);
    EXPECT_EQ(f[i].item, static_cast<uint32_t>(i));
  }
  EXPECT_EQ(stats_.buffers_out.load(), 5u);
  EXPECT_EQ(stats_.backlog_announcements.load(), 0u);
  queue_->ReleaseAll();
}

// A reader just sent a full buffer is streaming: its next buffers go through the loop (the
// producer fills while the loop writes); after a partly filled one, direct writes resume.
TEST_F(QueueDirectTest, AfterAFullBufferTheLoopWritesAfterAPartialOneTheProducer) {
  LockedView* v = AddReader(1, 10);
  std::thread([&] {
    Buffer full = Item(DataType::kData);
    full.SetSize(full.capacity());
    v->Push(std::move(full));
    v->Notify();
  }).join();
  ASSERT_EQ(out_.frames().size(), 1u);
  EXPECT_FALSE(out_.frames()[0].on_loop) << "the first buffer goes direct";
  const uint32_t asked = out_.direct_writable_calls.load();
  ProduceOnThread(v, {DataType::kData});  // 100 bytes, after a full one
  EXPECT_EQ(out_.frames().size(), 1u) << "not written on the producer thread";
  // Nor does the producer ask the connection (whose write mutex the loop holds while it
  // writes): a streaming reader's notification costs it no wait on the loop.
  EXPECT_EQ(out_.direct_writable_calls.load(), asked);
  EXPECT_EQ(PostedCount(), 1u);
  RunPosted();
  ASSERT_EQ(out_.frames().size(), 2u);
  EXPECT_TRUE(out_.frames()[1].on_loop);
  ProduceOnThread(v, {DataType::kData});  // after a partly filled one: direct again
  ASSERT_EQ(out_.frames().size(), 3u);
  EXPECT_FALSE(out_.frames()[2].on_loop);
  queue_->ReleaseAll();
}

// An output that would not write at once (frames queued, fault shim): nothing is sent on the
// producer thread; one post, and the loop sends.
TEST_F(QueueDirectTest, BusyOutputLeavesEverythingToTheLoop) {
  LockedView* v = AddReader(1, 2);
  out_.direct_writable = false;
  ProduceOnThread(v, {DataType::kData, DataType::kData});
  EXPECT_TRUE(out_.frames().empty());
  EXPECT_EQ(PostedCount(), 1u);
  RunPosted();
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_TRUE(f[0].on_loop && f[1].on_loop);
  EXPECT_EQ(f[0].sequence, 0);
  EXPECT_EQ(f[1].sequence, 1);
  queue_->ReleaseAll();
}

// Round robin: a reader waiting in the ready queue (the output was full) goes before a reader
// a producer notifies; that producer posts instead of sending ahead of it.
TEST_F(QueueDirectTest, ReadersWaitingOnTheLoopGoFirst) {
  out_.can_send = false;
  LockedView* a = AddReader(1, 5);
  a->Push(Item(DataType::kData));
  a->Notify();  // on the loop thread: a post
  RunPosted();  // queued for sending, but the output takes nothing
  EXPECT_TRUE(out_.frames().empty());
  LockedView* b = AddReader(2, 5);
  out_.can_send = true;  // reader 1 still waits in the ready queue
  ProduceOnThread(b, {DataType::kData});
  EXPECT_TRUE(out_.frames().empty()) << "reader 2 overtook reader 1";
  EXPECT_EQ(PostedCount(), 1u);
  queue_->WriteMore();
  RunPosted();
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].receiver_id, 1u);
  EXPECT_EQ(f[1].receiver_id, 2u);
  queue_->ReleaseAll();
}

// The end of partition served on the producer thread releases the reader there, once.
TEST_F(QueueDirectTest, EndOfPartitionOnTheProducerThreadReleasesTheReader) {
  LockedView* v = AddReader(7, 1);
  ProduceOnThread(v, {DataType::kData, DataType::kEndOfPartition});
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].data_type, DataType::kData);
  EXPECT_EQ(f[1].data_type, DataType::kEndOfPartition);
  EXPECT_EQ(f[1].sequence, 1);
  EXPECT_FALSE(f[1].on_loop);
  EXPECT_FALSE(queue_->HasReader(7));
  EXPECT_EQ(stats_.active_readers.load(), 0u);
  EXPECT_EQ(stats_.events_out.load(), 1u);
  EXPECT_EQ(PostedCount(), 0u);
}

// A failed partition found on the producer thread fails its channel there (ProducerFailed)
// and releases the reader.
TEST_F(QueueDirectTest, FailureOnTheProducerThreadFailsTheChannel) {
  LockedView* v = AddReader(3, 2);
  std::thread producer([&] {
    v->Fail(IoError("disk gone"));
    v->Notify();
  });
  producer.join();
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].kind, Sent::kError);
  EXPECT_EQ(f[0].code, fb::ErrorCode::ProducerFailed);
  EXPECT_EQ(f[0].receiver_id, 3u);
  EXPECT_FALSE(queue_->HasReader(3));
}

// A producer's notification while the loop holds the queue (here: in the middle of sending)
// does not wait for it: it posts, and the loop serves it afterwards. No deadlock, no frame lost.
TEST_F(QueueDirectTest, NotificationWhileTheLoopHoldsTheQueuePosts) {
  LockedView* a = AddReader(1, 0);
  LockedView* b = AddReader(2, 1);
  a->Push(Item(DataType::kData));
  bool raced = false;
  out_.on_send = [&] {
    if (raced) return;
    raced = true;
    ProduceOnThread(b, {DataType::kData});  // joins: the notification ran while we hold it
  };
  ASSERT_TRUE(queue_->AddCredit(1, 1).ok());  // the loop sends a's buffer, holding the queue
  EXPECT_TRUE(raced);
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].receiver_id, 1u);
  EXPECT_EQ(PostedCount(), 1u);
  RunPosted();
  f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[1].receiver_id, 2u);
  EXPECT_TRUE(f[1].on_loop);
  out_.on_send = nullptr;
  queue_->ReleaseAll();
}

// Many producer threads flushing into their readers while the loop adds credit: per reader,
// sequence numbers without gaps and never more data than credit.
TEST_F(QueueDirectTest, ConcurrentProducersAndLoopCreditKeepSequenceAndCredit) {
  constexpr uint32_t kReaders = 4;
  constexpr uint32_t kItems = 200;
  // The loop answers every buffer with one credit.
  RaceProducersAgainstTheLoop(kReaders, kItems, [&](size_t, uint64_t id) {
    ASSERT_TRUE(queue_->AddCredit(id, 1).ok());
  }, nullptr);
  for (uint32_t r = 0; r < kReaders; ++r) {
    EXPECT_EQ(queue_->credit(r + 1), 2) << "reader " << r + 1;  // 2 + kItems given - kItems used
  }
  queue_->ReleaseAll();
}

// Debloating's BufferSizeAnnouncement reaches the queue on the loop while producer threads
// write their end of partition through, which releases their readers (the reader map shrinks
// on those threads). Each announcement finds its reader alive (the size comes back) or gone
// (0), never a reader half removed; every reader ends with its data and end of partition in
// sequence. Run under ThreadSanitizer in CI (label concurrency): an announcement that looked
// the reader up without the queue's mutex raced the producers' erase.
TEST_F(QueueDirectTest, BufferSizeAnnouncementsRaceProducersReleasingTheirReaders) {
  constexpr uint32_t kReaders = 16;
  std::vector<LockedView*> views;
  for (uint32_t r = 0; r < kReaders; ++r) views.push_back(AddReader(r + 1, 1));
  for (uint32_t r = 0; r < kReaders; ++r) {
    EXPECT_EQ(queue_->AnnounceBufferSize(r + 1, 4096), 4096u) << "reader " << r + 1;
  }
  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (uint32_t r = 0; r < kReaders; ++r) {
    producers.emplace_back([&, r] {
      while (!go.load()) std::this_thread::yield();
      views[r]->Push(Item(DataType::kData));
      views[r]->Push(Item(DataType::kEndOfPartition));
      views[r]->Notify();
    });
  }
  go.store(true);
  // The loop: announcements, and what was posted to it. (How many find their reader gone
  // depends on the scheduler; the race is what ThreadSanitizer looks for.)
  while (queue_->reader_count() > 0) {
    for (uint32_t r = 0; r < kReaders; ++r) {
      const uint32_t size = queue_->AnnounceBufferSize(r + 1, 2048 + r);
      EXPECT_TRUE(size == 0 || size == 2048 + r) << size;
    }
    RunPosted();
  }
  for (auto& t : producers) t.join();
  RunPosted();
  for (uint32_t r = 0; r < kReaders; ++r) EXPECT_EQ(queue_->AnnounceBufferSize(r + 1, 4096), 0u);
  std::vector<int32_t> data_seq(kReaders, -1), end_seq(kReaders, -1);
  for (const Sent& f : out_.frames()) {
    ASSERT_EQ(f.kind, Sent::kBuffer);
    const uint32_t r = static_cast<uint32_t>(f.receiver_id - 1);
    (f.data_type == DataType::kData ? data_seq : end_seq)[r] = f.sequence;
  }
  for (uint32_t r = 0; r < kReaders; ++r) {
    EXPECT_EQ(data_seq[r], 0) << "reader " << r + 1;
    EXPECT_EQ(end_seq[r], 1) << "reader " << r + 1;
  }
  EXPECT_EQ(stats_.active_readers.load(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Read-through: credit read on the producer's thread.

// Credit 1, four buffers flushed, two AddCredits waiting on the socket: the producer sends one,
// runs out, reads both AddCredits itself and sends two more on its own thread; the last buffer
// waits (the third buffer told the receiver of it: no announcement). Nothing waited for the
// loop to read, and nothing is left to it.
TEST_F(QueueDirectTest, ProducerOutOfCreditReadsTheCreditWaitingOnTheSocket) {
  LockedView* v = AddReader(1, 1);
  out_.PutCredit(1, 1);
  out_.PutCredit(1, 1);
  ProduceOnThread(v, std::vector<DataType>(4, DataType::kData));
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(f[i].kind, Sent::kBuffer);
    EXPECT_FALSE(f[i].on_loop) << "frame " << i;
    EXPECT_EQ(f[i].sequence, i);
  }
  EXPECT_EQ(out_.SocketCredits(), 0u);
  EXPECT_EQ(stats_.credits_in.load(), 2u);
  EXPECT_EQ(f[2].backlog, 1);
  EXPECT_EQ(queue_->credit(1), 0);
  EXPECT_EQ(PostedCount(), 0u);
  ASSERT_TRUE(queue_->AddCredit(1, 1).ok());
  f = out_.frames();
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[3].kind, Sent::kBuffer);
  EXPECT_TRUE(f[3].on_loop);
  queue_->ReleaseAll();
}

// A reader with credit in hand never reads the socket; one with no data waiting neither.
TEST_F(QueueDirectTest, OnlyAReaderOutOfCreditWithDataWaitingReadsTheSocket) {
  LockedView* v = AddReader(1, 5);
  out_.PutCredit(1, 1);
  ProduceOnThread(v, std::vector<DataType>(2, DataType::kData));
  EXPECT_EQ(out_.frames().size(), 2u);
  EXPECT_EQ(out_.read_calls.load(), 0u);
  EXPECT_EQ(out_.SocketCredits(), 1u);
  EXPECT_EQ(queue_->credit(1), 3);
  EXPECT_EQ(PostedCount(), 0u);
  queue_->ReleaseAll();
}

// Hostile credit: an AddCredit that would take the reader above kMaxCredit is not applied on
// the producer's thread; it stays on the socket, and the loop, reading it, refuses it with the
// ProtocolError the connection closes with (CreditViolation), as without read-through.
TEST_F(QueueDirectTest, CreditOverTheBoundIsLeftToTheLoopWhichRefusesIt) {
  LockedView* v = AddReader(1, 1);
  out_.PutCredit(1, static_cast<int32_t>(PartitionRequestQueue::kMaxCredit + 1));
  out_.PutCredit(1, 1);  // behind it: not read either
  ProduceOnThread(v, std::vector<DataType>(2, DataType::kData));
  EXPECT_EQ(out_.frames().size(), 1u);
  EXPECT_EQ(out_.SocketCredits(), 2u);
  EXPECT_EQ(queue_->credit(1), 0);
  EXPECT_EQ(stats_.credits_in.load(), 0u);
  const std::vector<Status> loop = out_.LoopReadsCredits(*queue_);
  ASSERT_EQ(loop.size(), 2u);
  EXPECT_EQ(loop[0].code(), StatusCode::kProtocolError) << loop[0].ToString();
  EXPECT_NE(loop[0].message().find("above the bound"), std::string::npos) << loop[0].ToString();
  queue_->ReleaseAll();
  RunPosted();
}

// Credit read for other readers (one waiting with data, one unknown: released meanwhile) is
// applied as the loop would apply it: the waiting reader is queued and served by the loop (the
// producer posts), the unknown id is ignored.
TEST_F(QueueDirectTest, CreditReadForOtherReadersQueuesThemForTheLoop) {
  LockedView* v1 = AddReader(1, 1);
  AddAnnouncedReader(2);
  ASSERT_EQ(out_.frames().size(), 1u);
  out_.PutCredit(99, 4);
  out_.PutCredit(2, 1);
  out_.PutCredit(1, 1);
  ProduceOnThread(v1, std::vector<DataType>(2, DataType::kData));
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[1].receiver_id, 1u);
  EXPECT_EQ(f[2].receiver_id, 1u);
  EXPECT_FALSE(f[2].on_loop);
  EXPECT_EQ(out_.SocketCredits(), 0u);
  ExpectTheLoopServesRevived(2, 3);
  EXPECT_EQ(stats_.credits_in.load(), 2u);  // reader 99's was ignored
  queue_->ReleaseAll();
}

// The reader served on the producer's thread reads credit that revives another reader, then
// sends its end of partition, which releases it: the notification must not touch the released
// reader afterwards (a use-after-free the example's two-process shuffle met, 2 runs in 100
// under load), and the revived reader still gets to the loop through its own post.
TEST_F(QueueDirectTest, EndOfPartitionAfterCreditForAnotherReaderLeavesThatReaderToTheLoop) {
  LockedView* v1 = AddReader(1, 0);
  AddAnnouncedReader(2);
  ASSERT_EQ(out_.frames().size(), 1u);
  out_.PutCredit(2, 1);
  out_.PutCredit(1, 1);
  ProduceOnThread(v1, {DataType::kData, DataType::kEndOfPartition});
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[1].receiver_id, 1u);
  EXPECT_EQ(f[2].receiver_id, 1u);
  EXPECT_EQ(f[2].data_type, DataType::kEndOfPartition);
  EXPECT_FALSE(f[2].on_loop);
  EXPECT_FALSE(queue_->HasReader(1));
  ExpectTheLoopServesRevived(2, 3);
  queue_->ReleaseAll();
}

// A post is pending (the loop has not woken up for the buffer that found no credit) when the
// consumer's AddCredit reaches the socket: the producer's next flush reads it and sends both
// buffers itself instead of leaving every buffer behind the post to the slow loop. The post,
// when the loop runs it at last, finds nothing to do.
TEST_F(QueueDirectTest, WhileAPostIsPendingFlushedBuffersStillGoOutOnTheProducersThread) {
  LockedView* v = AddReader(1, 0);
  ProduceOnThread(v, {DataType::kData});
  EXPECT_EQ(PostedCount(), 1u);  // no credit: left to the loop, which does not run yet
  EXPECT_TRUE(out_.frames().empty());
  out_.PutCredit(1, 2);
  ProduceOnThread(v, {DataType::kData});
  auto f = out_.frames();
  ASSERT_EQ(f.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(f[i].kind, Sent::kBuffer);
    EXPECT_FALSE(f[i].on_loop) << "frame " << i;
    EXPECT_EQ(f[i].sequence, i);
  }
  EXPECT_EQ(PostedCount(), 1u) << "no second post";
  RunPosted();
  EXPECT_EQ(out_.frames().size(), 2u);
  EXPECT_EQ(queue_->credit(1), 0);
  queue_->ReleaseAll();
}

// Producer threads read credit off the "socket" while the loop adds credit and reads the socket
// too: per reader, sequence numbers without gaps and never more data than credit (TSan).
TEST_F(QueueDirectTest, CreditReadOnProducerThreadsRacesTheLoopsCredit) {
  constexpr uint32_t kReaders = 4;
  constexpr uint32_t kItems = 300;
  // The loop answers every buffer with one credit, half of them through the socket, and now
  // and then reads the socket itself.
  RaceProducersAgainstTheLoop(
      kReaders, kItems,
      [&](size_t handled, uint64_t id) {
        if (handled % 2 == 0) {
          out_.PutCredit(id, 1);
        } else {
          ASSERT_TRUE(queue_->AddCredit(id, 1).ok());
        }
      },
      [&](uint32_t turn) {
        if (turn % 4 != 0) return;
        for (const Status& st : out_.LoopReadsCredits(*queue_)) ASSERT_TRUE(st.ok());
      });
  for (const Status& st : out_.LoopReadsCredits(*queue_)) ASSERT_TRUE(st.ok());
  for (uint32_t r = 0; r < kReaders; ++r) {
    EXPECT_EQ(queue_->credit(r + 1), 2) << "reader " << r + 1;
  }
  EXPECT_GT(out_.read_calls.load(), 0u);
  queue_->ReleaseAll();
}

}  // namespace
}  // namespace sluice::shuffle
