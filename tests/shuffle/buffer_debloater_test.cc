#include "shuffle/buffer_debloater.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

namespace sluice::shuffle {
namespace {

using std::chrono::milliseconds;

BufferDebloaterOptions Options() {
  BufferDebloaterOptions o;
  o.target = milliseconds(10);
  o.min_buffer_size = 1024;
  o.segment_size = 32 * 1024;
  o.channels = 4;
  o.buffers_per_channel = 2;
  o.threshold_percent = 25;
  return o;
}

TEST(BufferDebloaterTest, FormulaIsThroughputTimesTargetPerBufferInFlight) {
  const BufferDebloater d(Options());
  // 80 MB/s x 10 ms = 800,000 bytes over 4 channels x 2 buffers = 100,000: above a segment.
  EXPECT_EQ(d.BufferSizeFor(80e6), 32u * 1024);
  // 8 MB/s x 10 ms = 80,000 / 8 = 10,000 bytes.
  EXPECT_EQ(d.BufferSizeFor(8e6), 10000u);
  // Rounded up: 8,000,100 B/s -> 10,000.125 -> 10,001.
  EXPECT_EQ(d.BufferSizeFor(8000100), 10001u);
  // Slow: the minimum.
  EXPECT_EQ(d.BufferSizeFor(100e3), 1024u);
  EXPECT_EQ(d.BufferSizeFor(0), 1024u);
  EXPECT_EQ(d.BufferSizeFor(-5), 1024u);
  // Exactly a segment: 32768 x 8 / 10 ms.
  EXPECT_EQ(d.BufferSizeFor(32768.0 * 8 * 100), 32u * 1024);
}

TEST(BufferDebloaterTest, BadOptionsAreNormalised) {
  BufferDebloaterOptions o = Options();
  o.channels = 0;
  o.buffers_per_channel = 0;
  o.min_buffer_size = 1u << 30;  // above a segment: the segment
  const BufferDebloater d(o);
  EXPECT_EQ(d.options().channels, 1u);
  EXPECT_EQ(d.options().buffers_per_channel, 1u);
  EXPECT_EQ(d.options().min_buffer_size, 32u * 1024);
  EXPECT_EQ(d.BufferSizeFor(0), 32u * 1024);
  EXPECT_EQ(d.buffer_size(), 32u * 1024);
}

TEST(BufferDebloaterTest, IdleTimeIsNotThroughput) {
  BufferDebloater d(Options());
  // 80,000 bytes in a 100 ms window of which 90 ms idle: 8 MB/s busy rate -> 10,000, x 1.5
  // as the consumer ran dry (starvation factor, see the next test).
  d.OnConsumed(80000);
  d.OnIdle(milliseconds(90));
  const auto size = d.EndWindow(milliseconds(100));
  ASSERT_TRUE(size.has_value());
  EXPECT_EQ(*size, 15000u);
  EXPECT_DOUBLE_EQ(d.throughput(), 8e6);
  // A window spent only waiting teaches nothing: no change, counters reset.
  d.OnIdle(milliseconds(100));
  EXPECT_FALSE(d.EndWindow(milliseconds(100)).has_value());
  EXPECT_EQ(d.buffer_size(), 15000u);
  EXPECT_DOUBLE_EQ(d.throughput(), 8e6);
  EXPECT_DOUBLE_EQ(d.starvation_boost(), 1.5);
}

// A consumer that runs dry while it is throttled (the data in flight did not cover a stall)
// gets larger buffers, at most twice the target's; they shrink back once it stops running dry.
TEST(BufferDebloaterTest, StarvationGrowsTheSizeBoundedAndDecaysBack) {
  BufferDebloater d(Options());
  d.OnConsumed(800000);  // 8 MB/s, never idle: 10,000
  ASSERT_EQ(d.EndWindow(milliseconds(100)), std::optional<uint32_t>(10000));
  // 5% idle: below kStarvedIdleShare, nothing changes (the busy rate is 8.4 MB/s: +5%).
  d.OnConsumed(800000);
  d.OnIdle(milliseconds(5));
  EXPECT_FALSE(d.EndWindow(milliseconds(100)).has_value());
  EXPECT_DOUBLE_EQ(d.starvation_boost(), 1.0);
  // 20% idle, same busy rate of 8 MB/s: x1.5, then x2 (the cap), then no further.
  std::vector<std::optional<uint32_t>> sizes;
  for (int i = 0; i < 3; ++i) {
    d.OnConsumed(640000);
    d.OnIdle(milliseconds(20));
    sizes.push_back(d.EndWindow(milliseconds(100)));
  }
  EXPECT_DOUBLE_EQ(d.starvation_boost(), 2.0);
  ASSERT_TRUE(sizes[0].has_value());
  EXPECT_NEAR(*sizes[0], 15000, 300);  // the smoothed rate is about 8.1 MB/s
  ASSERT_TRUE(sizes[1].has_value());
  EXPECT_NEAR(*sizes[1], 20000, 300);
  EXPECT_FALSE(sizes[2].has_value());
  // Never idle again: the factor decays by 0.95 a window back to 1, and the size follows.
  for (int i = 0; i < 20; ++i) {
    d.OnConsumed(800000);
    d.EndWindow(milliseconds(100));
  }
  EXPECT_DOUBLE_EQ(d.starvation_boost(), 1.0);
  EXPECT_NEAR(d.buffer_size(), 10000, 2500);  // within the announcement threshold
}

TEST(BufferDebloaterTest, ShrinksUnderASlowConsumerAndGrowsBack) {
  BufferDebloater d(Options());
  EXPECT_EQ(d.buffer_size(), 32u * 1024);
  // Slow: 100 KB/s -> the minimum on the first window (a bound is always announced).
  d.OnConsumed(10000);
  EXPECT_EQ(d.EndWindow(milliseconds(100)), std::optional<uint32_t>(1024));
  // Fast again: 1 GB/s. Smoothing halves the distance each window; the bound is reached
  // and announced, then nothing more.
  std::optional<uint32_t> last;
  int windows = 0;
  while (d.buffer_size() != 32u * 1024 && windows < 10) {
    d.OnConsumed(100000000);
    if (auto s = d.EndWindow(milliseconds(100))) last = s;
    ++windows;
  }
  EXPECT_EQ(last, std::optional<uint32_t>(32 * 1024));
  EXPECT_LE(windows, 2);
  d.OnConsumed(100000000);
  EXPECT_FALSE(d.EndWindow(milliseconds(100)).has_value());
}

TEST(BufferDebloaterTest, SmallChangesWithinTheThresholdAreNotAnnounced) {
  BufferDebloater d(Options());
  d.OnConsumed(800000);  // 8 MB/s -> 10,000
  ASSERT_EQ(d.EndWindow(milliseconds(100)), std::optional<uint32_t>(10000));
  // 10.8 MB/s: the smoothed 9.4 MB/s -> 11,750 (+17.5%): within 25%, not announced.
  d.OnConsumed(1080000);
  EXPECT_FALSE(d.EndWindow(milliseconds(100)).has_value());
  EXPECT_EQ(d.buffer_size(), 10000u);
  EXPECT_NEAR(d.throughput(), 9.4e6, 1);
  // 16 MB/s: smoothed 12.7 MB/s -> 15,875 (+58.75%): announced.
  d.OnConsumed(1600000);
  EXPECT_EQ(d.EndWindow(milliseconds(100)), std::optional<uint32_t>(15875));
}

TEST(BufferDebloaterTest, ConstantLoadDoesNotFlap) {
  BufferDebloater d(Options());
  int announcements = 0;
  for (int i = 0; i < 50; ++i) {
    d.OnConsumed(i % 2 == 0 ? 700000 : 900000);  // 7 and 9 MB/s alternating: noise
    if (d.EndWindow(milliseconds(100))) ++announcements;
  }
  EXPECT_EQ(announcements, 1);  // the first one only
  EXPECT_NEAR(d.buffer_size(), 10000, 1500);
}

TEST(BufferDebloaterTest, CountedBuffersInFlightReplaceTheCreditAsDivisor) {
  BufferDebloater d(Options());
  EXPECT_DOUBLE_EQ(d.in_flight_buffers(), 2);  // buffers_per_channel until counted
  EXPECT_EQ(d.BufferSizeFor(8e6), 10000u);    // 80,000 / (4 x 2)
  // Backpressure: 2 received + a backlog of 2 per channel, + the producer's partial buffer.
  d.OnInFlightBuffers(4);
  EXPECT_DOUBLE_EQ(d.in_flight_buffers(), 5);
  EXPECT_EQ(d.BufferSizeFor(8e6), 4000u);  // 80,000 / (4 x 5)
  // Smoothed like the throughput: 4 then 0 -> 2 (+1).
  d.OnInFlightBuffers(0);
  EXPECT_DOUBLE_EQ(d.in_flight_buffers(), 3);
  // Nothing in flight anywhere: at least one buffer, never a division by zero.
  for (int i = 0; i < 60; ++i) d.OnInFlightBuffers(0);
  EXPECT_NEAR(d.in_flight_buffers(), 1, 1e-9);
  EXPECT_EQ(d.BufferSizeFor(8e6), 20000u);
  // Nonsense counts are ignored.
  d.OnInFlightBuffers(-1);
  d.OnInFlightBuffers(std::nan(""));
  EXPECT_NEAR(d.in_flight_buffers(), 1, 1e-9);
}

// The closed loop the gate runs: the bytes in flight per channel (buffers counted x size)
// settle near throughput x target / channels, whatever the producer queues per channel.
TEST(BufferDebloaterTest, BytesInFlightSettleAtTheTargetWhateverTheQueueDepth) {
  for (const double queued : {1.0, 4.0, 9.0}) {
    BufferDebloater d(Options());
    for (int i = 0; i < 20; ++i) {
      d.OnConsumed(800000);  // 8 MB/s: target 80,000 bytes in flight over 4 channels
      d.OnInFlightBuffers(queued);
      d.EndWindow(milliseconds(100));
    }
    const double in_flight = (queued + 1) * d.buffer_size();
    EXPECT_NEAR(in_flight, 20000, 20000 * 0.26) << queued << " buffers queued per channel";
  }
}

}  // namespace
}  // namespace sluice::shuffle
