// SegmentArena: Buffers over external memory; the listener hears each slot once, from the
// thread that released its last handle; misuse aborts in every build.
#include "buffer/segment_arena.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace sluice::buffer {
namespace {

class CountingListener final : public SlotListener {
 public:
  void SlotRecycled(uint32_t slot) override {
    ++count;
    last = slot;
  }
  std::atomic<int> count{0};
  std::atomic<uint32_t> last{~0u};
};

TEST(SegmentArenaTest, WrapShareAndRecycleOncePerSlot) {
  std::vector<uint8_t> memory(4 * 4096);
  CountingListener listener;
  SegmentArena arena(memory.data(), 4, 4096, &listener);
  EXPECT_EQ(arena.slot_data(2), memory.data() + 2 * 4096);
  Buffer b = arena.Wrap(2, 100);
  EXPECT_EQ(b.data(), memory.data() + 2 * 4096);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_EQ(b.capacity(), 4096u);
  EXPECT_EQ(b.segment()->index(), MemorySegment::kUnpooled);
  EXPECT_EQ(b.segment()->tag(), 2);
  EXPECT_EQ(arena.slots_out(), 1u);
  Buffer shared = b.Share();
  b.Release();
  EXPECT_EQ(listener.count.load(), 0);  // a handle is still out
  std::thread t([&] { shared.Release(); });
  t.join();
  EXPECT_EQ(listener.count.load(), 1);
  EXPECT_EQ(listener.last.load(), 2u);
  EXPECT_EQ(arena.slots_out(), 0u);
  Buffer again = arena.Wrap(2, 0);  // the slot may be wrapped again
  EXPECT_EQ(arena.slots_out(), 1u);
  again.Release();
  EXPECT_EQ(listener.count.load(), 2);
}

TEST(SegmentArenaDeathTest, MisuseAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<uint8_t> memory(2 * 4096);
  CountingListener listener;
  EXPECT_DEATH(
      {
        SegmentArena arena(memory.data(), 2, 4096, &listener);
        (void)arena.Wrap(2, 0);
      },
      "slot beyond the arena");
  EXPECT_DEATH(
      {
        SegmentArena arena(memory.data(), 2, 4096, &listener);
        (void)arena.Wrap(0, 4097);
      },
      "size beyond the segment");
  EXPECT_DEATH(
      {
        SegmentArena arena(memory.data(), 2, 4096, &listener);
        Buffer a = arena.Wrap(1, 0);
        Buffer b = arena.Wrap(1, 0);
      },
      "already holds");
  EXPECT_DEATH(
      {
        auto* arena = new SegmentArena(memory.data(), 2, 4096, &listener);
        Buffer a = arena->Wrap(0, 0);
        delete arena;
      },
      "while a Buffer still holds");
}

}  // namespace
}  // namespace sluice::buffer
