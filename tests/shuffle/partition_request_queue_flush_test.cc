// The server's reader over a real ResultPartition view with a flush per record, without
// sockets (issue 15's appendable flush): while the reader has no credit, records go into the
// flushed buffer it has not taken; the backlog it announces counts that buffer, and the next
// credit sends every record written so far in one BufferResponse. The test thread plays the
// IO loop (posted notifications run when the test says). Ends with the leak check.
#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <functional>
#include <vector>

#include "buffer/network_buffer_pool.h"
#include "shuffle/partition_request_queue.h"
#include "shuffle/result_partition.h"
#include "shuffle/shuffle_server.h"
#include "testutil/pools.h"

namespace sluice::shuffle {
namespace {

using buffer::DataType;

struct Frame {
  bool backlog_announcement = false;
  int32_t sequence = -1;
  int32_t backlog = -1;
  DataType type = DataType::kData;
  uint32_t size = 0;
};

// Records what the queue sends; always writable, never direct (every send is the loop's).
class RecordingOutput final : public QueueOutput {
 public:
  bool CanSend() const override { return true; }
  void SendBuffer(const schema::BufferResponseFields& f, buffer::Buffer payload) override {
    frames.push_back({false, f.sequence_number, f.backlog, f.data_type, payload.size()});
  }
  void SendBacklogAnnouncement(uint64_t, int32_t backlog) override {
    frames.push_back({true, -1, backlog, DataType::kData, 0});
  }
  void SendChannelError(uint64_t, fb::ErrorCode, const std::string& message) override {
    ADD_FAILURE() << "channel error: " << message;
  }
  std::vector<Frame> frames;
};

constexpr uint32_t kRecord = 100;
constexpr uint32_t kFramed = kRecord + 4;  // with its length prefix

class QueueFlushTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = testutil::MakeNetworkBufferPool(64, 4096);
    ShuffleOptions o;
    o.credit.segment_size = 4096;
    o.buffer_timeout = std::chrono::milliseconds(0);  // flush per record
    partition_ = ResultPartition::Create("p", 1, pool_, o).value();
    queue_ = std::make_unique<PartitionRequestQueue>(
        &out_, [this](std::function<void()> task) {
          posted_.push_back(std::move(task));
          return true;
        },
        &stats_, /*checksums=*/false);
    Status st = queue_->AddReader(1, /*initial_credit=*/0, "p/0", [&](SubpartitionListener* l) {
      return partition_->CreateView(0, l);
    });
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  void TearDown() override {
    queue_.reset();
    posted_.clear();
    partition_->Release();
    partition_.reset();
    EXPECT_EQ(stats_.active_readers.load(), 0u);
    EXPECT_EQ(pool_->available_segments(), pool_->total_segments()) << pool_->DebugString();
  }
  void Emit(int n) {
    const std::vector<uint8_t> record(kRecord, 0x5A);
    for (int i = 0; i < n; ++i) ASSERT_TRUE(partition_->Emit(record, 0).ok());
  }
  // The loop's turn: runs the notifications posted so far.
  void RunLoop() {
    std::deque<std::function<void()>> tasks;
    tasks.swap(posted_);
    for (auto& t : tasks) t();
  }

  std::shared_ptr<buffer::NetworkBufferPool> pool_;
  std::shared_ptr<ResultPartition> partition_;
  RecordingOutput out_;
  ShuffleServerStats stats_;
  std::deque<std::function<void()>> posted_;
  std::unique_ptr<PartitionRequestQueue> queue_;
};

TEST_F(QueueFlushTest, RecordsWrittenWithoutCreditLeaveInOneBuffer) {
  Emit(3);
  EXPECT_EQ(posted_.size(), 1u) << "one notification for the flushed buffer";
  RunLoop();
  ASSERT_EQ(out_.frames.size(), 1u);
  EXPECT_TRUE(out_.frames[0].backlog_announcement);
  EXPECT_EQ(out_.frames[0].backlog, 1) << "the flushed buffer counts as backlog";
  Emit(5);  // no credit: appended to the flushed buffer, no new notification
  EXPECT_TRUE(posted_.empty());
  EXPECT_EQ(partition_->Stats().pool.lent, 1u) << "eight records, one segment";
  ASSERT_TRUE(queue_->AddCredit(1, 1).ok());
  ASSERT_EQ(out_.frames.size(), 2u);
  EXPECT_FALSE(out_.frames[1].backlog_announcement);
  EXPECT_EQ(out_.frames[1].sequence, 0);
  EXPECT_EQ(out_.frames[1].size, 8 * kFramed) << "every record written so far, once";
  EXPECT_EQ(out_.frames[1].backlog, 0);
  // Taken: the next record starts a new buffer and notifies again (the poll re-armed).
  Emit(1);
  ASSERT_EQ(posted_.size(), 1u);
  RunLoop();
  ASSERT_EQ(out_.frames.size(), 3u);
  EXPECT_TRUE(out_.frames[2].backlog_announcement) << "a new stall, announced again";
  EXPECT_EQ(out_.frames[2].backlog, 1);
  ASSERT_TRUE(partition_->Finish().ok());  // finishes the buffer, queues end of partition
  ASSERT_TRUE(queue_->AddCredit(1, 1).ok());
  ASSERT_EQ(out_.frames.size(), 5u);
  EXPECT_EQ(out_.frames[3].sequence, 1);
  EXPECT_EQ(out_.frames[3].size, kFramed);
  EXPECT_EQ(out_.frames[3].type, DataType::kData);
  EXPECT_EQ(out_.frames[4].sequence, 2);
  EXPECT_EQ(out_.frames[4].type, DataType::kEndOfPartition);
  EXPECT_FALSE(queue_->HasReader(1)) << "released after the end of partition";
  EXPECT_EQ(stats_.buffers_out.load(), 2u);
  EXPECT_EQ(stats_.bytes_out.load(), 9 * kFramed);
}

}  // namespace
}  // namespace sluice::shuffle
