// Buffer, MemorySegment and AllocateUnpooled: handle semantics, recycling exactly once, and the
// invariant checks that abort in every build type.
#include "buffer/buffer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <utility>

#include "buffer_test_death.h"
#include "pool_test_util.h"

namespace sluice::buffer {
namespace {

using test_util::CountingRecycler;
using test_util::kSegment;

class BufferTest : public test_util::PoolTest {};

TEST_F(BufferTest, WrapStartsEmptyWithCapacityAndType) {
  NetworkBufferPool& g = NewGlobal(4);
  CountingRecycler recycler(g);
  MemorySegment* seg = g.TryRequestSegment();
  ASSERT_NE(seg, nullptr);
  Buffer b = Buffer::Wrap(seg, &recycler, DataType::kEvent);
  ASSERT_TRUE(b.valid());
  EXPECT_TRUE(static_cast<bool>(b));
  EXPECT_EQ(b.segment(), seg);
  EXPECT_EQ(b.data(), seg->data());
  EXPECT_EQ(b.capacity(), kSegment);
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(b.type(), DataType::kEvent);
  EXPECT_TRUE(IsEvent(b.type()));
  EXPECT_FALSE(b.IsShared());

  std::memset(b.data(), 0xAB, 100);
  b.SetSize(100);
  b.SetType(DataType::kData);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_EQ(b.bytes().size(), 100u);
  EXPECT_EQ(b.bytes()[99], 0xAB);
  EXPECT_EQ(b.writable().size(), kSegment);
  EXPECT_EQ(b.type(), DataType::kData);
  EXPECT_FALSE(IsEvent(b.type()));
  b.SetSize(kSegment);  // exactly the capacity is fine
  EXPECT_EQ(g.available_segments(), 3u);

  b.Release();
  EXPECT_FALSE(b.valid());
  EXPECT_EQ(recycler.recycled(), 1);
  EXPECT_EQ(recycler.last(), seg);
  b.Release();  // releasing an empty handle is a no-op
  EXPECT_EQ(recycler.recycled(), 1);
  EXPECT_EQ(g.available_segments(), 4u);
}

TEST_F(BufferTest, WrapResetsSizeAndTypeOfARecycledSegment) {
  NetworkBufferPool& g = NewGlobal(1);
  MemorySegment* seg = g.TryRequestSegment();
  Buffer b = Buffer::Wrap(seg, g.direct_recycler(), DataType::kEndOfPartition);
  b.SetSize(10);
  b.Release();
  ASSERT_EQ(g.available_segments(), 1u);
  MemorySegment* again = g.TryRequestSegment();
  ASSERT_EQ(again, seg);
  Buffer c = Buffer::Wrap(again, g.direct_recycler());
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.type(), DataType::kData);
}

TEST_F(BufferTest, ShareRecyclesExactlyOnceAfterTheLastHandle) {
  NetworkBufferPool& g = NewGlobal(2);
  CountingRecycler recycler(g);
  Buffer a = Buffer::Wrap(g.TryRequestSegment(), &recycler);
  a.SetSize(7);
  Buffer b = a.Share();
  Buffer c = b.Share();
  EXPECT_TRUE(a.IsShared());
  EXPECT_TRUE(c.IsShared());
  EXPECT_EQ(b.data(), a.data());
  EXPECT_EQ(c.size(), 7u);  // the same bytes and metadata
  c.SetSize(9);
  EXPECT_EQ(a.size(), 9u);

  a.Release();
  EXPECT_EQ(recycler.recycled(), 0);
  EXPECT_TRUE(b.IsShared());
  c.Release();
  EXPECT_EQ(recycler.recycled(), 0);
  EXPECT_FALSE(b.IsShared());
  EXPECT_EQ(g.available_segments(), 1u);
  b.Release();
  EXPECT_EQ(recycler.recycled(), 1);
  EXPECT_EQ(g.available_segments(), 2u);
}

TEST_F(BufferTest, MoveTransfersOwnershipAndAssignmentReleasesTheTarget) {
  NetworkBufferPool& g = NewGlobal(2);
  CountingRecycler recycler(g);
  MemorySegment* s1 = g.TryRequestSegment();
  MemorySegment* s2 = g.TryRequestSegment();
  {
    Buffer a = Buffer::Wrap(s1, &recycler);
    Buffer b(std::move(a));
    EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): moved-from is empty
    ASSERT_TRUE(b.valid());
    EXPECT_EQ(b.segment(), s1);

    Buffer c = Buffer::Wrap(s2, &recycler);
    c = std::move(b);  // releases s2
    EXPECT_EQ(recycler.recycled(), 1);
    EXPECT_EQ(recycler.last(), s2);
    EXPECT_EQ(c.segment(), s1);
    EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)

    Buffer& alias = c;
    c = std::move(alias);  // self-move keeps the buffer
    EXPECT_TRUE(c.valid());
    EXPECT_EQ(recycler.recycled(), 1);

    Buffer empty;
    c = std::move(empty);  // assigning an empty handle releases s1
    EXPECT_FALSE(c.valid());
    EXPECT_EQ(recycler.recycled(), 2);
  }
  EXPECT_EQ(recycler.recycled(), 2);
  EXPECT_EQ(g.available_segments(), 2u);
}

TEST_F(BufferTest, DestructorRecycles) {
  NetworkBufferPool& g = NewGlobal(1);
  CountingRecycler recycler(g);
  { Buffer b = Buffer::Wrap(g.TryRequestSegment(), &recycler); }
  EXPECT_EQ(recycler.recycled(), 1);
}

TEST_F(BufferTest, EmptyHandle) {
  Buffer b;
  EXPECT_FALSE(b.valid());
  EXPECT_FALSE(static_cast<bool>(b));
  b.Release();
  Buffer c(std::move(b));
  EXPECT_FALSE(c.valid());
}

TEST_F(BufferTest, UnpooledBufferIsFreedWithItsLastHandle) {
  Buffer b = AllocateUnpooled(100, DataType::kEvent);
  ASSERT_TRUE(b.valid());
  EXPECT_EQ(b.capacity(), 100u);
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(b.type(), DataType::kEvent);
  EXPECT_EQ(b.segment()->index(), MemorySegment::kUnpooled);
  std::memset(b.data(), 1, 100);
  b.SetSize(100);
  Buffer s = b.Share();
  b.Release();
  EXPECT_EQ(s.bytes()[99], 1);  // still alive (ASan would flag a premature free)
  s.Release();

  Buffer zero = AllocateUnpooled(0);
  EXPECT_EQ(zero.capacity(), 0u);
  EXPECT_EQ(zero.type(), DataType::kData);
}

TEST_F(BufferTest, SegmentsAreDistinctAlignedSlicesOfTheSlab) {
  NetworkBufferPool& g = NewGlobal(8);
  std::vector<MemorySegment*> segs;
  while (MemorySegment* s = g.TryRequestSegment()) segs.push_back(s);
  ASSERT_EQ(segs.size(), 8u);
  EXPECT_EQ(g.available_segments(), 0u);
  EXPECT_EQ(g.TryRequestSegment(), nullptr);
  std::sort(segs.begin(), segs.end(),
            [](MemorySegment* a, MemorySegment* b) { return a->index() < b->index(); });
  for (size_t i = 0; i < segs.size(); ++i) {
    EXPECT_EQ(segs[i]->index(), i);
    EXPECT_EQ(segs[i]->capacity(), kSegment);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(segs[i]->data()) % 4096, 0u);
    if (i > 0) {
      EXPECT_EQ(segs[i]->data(), segs[i - 1]->data() + kSegment);
    }
    std::memset(segs[i]->data(), static_cast<int>(i), kSegment);  // the whole slab is usable
  }
  for (MemorySegment* s : segs) g.RecycleSegment(s);
}

// --- Invariants that abort in every build type ---

using BufferDeathTest = test_util::DeathTestFixture;

TEST_F(BufferDeathTest, UseAfterReleaseAborts) {
  NetworkBufferPool& g = NewGlobal(1);
  Buffer b = Buffer::Wrap(g.TryRequestSegment(), g.direct_recycler());
  b.Release();
  EXPECT_DEATH((void)b.data(), "use of an empty or released Buffer");
  EXPECT_DEATH((void)b.size(), "use of an empty or released Buffer");
  EXPECT_DEATH((void)b.Share(), "use of an empty or released Buffer");
}

TEST_F(BufferDeathTest, UseAfterMoveAborts) {
  NetworkBufferPool& g = NewGlobal(1);
  Buffer a = Buffer::Wrap(g.TryRequestSegment(), g.direct_recycler());
  Buffer b = std::move(a);
  EXPECT_DEATH(a.SetSize(1), "use of an empty or released Buffer");  // NOLINT
}

TEST_F(BufferDeathTest, WrapOfAHeldSegmentAborts) {
  NetworkBufferPool& g = NewGlobal(1);
  MemorySegment* seg = g.TryRequestSegment();
  Buffer b = Buffer::Wrap(seg, g.direct_recycler());
  EXPECT_DEATH((void)Buffer::Wrap(seg, g.direct_recycler()), "already holds");
  EXPECT_DEATH((void)Buffer::Wrap(nullptr, g.direct_recycler()), "null segment");
}

TEST_F(BufferDeathTest, DoubleReleaseIntoTheGlobalPoolAborts) {
  NetworkBufferPool& g = NewGlobal(2);
  MemorySegment* seg = g.TryRequestSegment();
  Buffer b = Buffer::Wrap(seg, g.direct_recycler());
  b.Release();  // the segment is back in the free list
  EXPECT_DEATH(g.direct_recycler()->Recycle(seg), "recycled twice into the NetworkBufferPool");
}

TEST_F(BufferDeathTest, DoubleReleaseIntoALocalPoolAborts) {
  NetworkBufferPool& g = NewGlobal(4);
  auto pool = g.CreateLocalBufferPool(test_util::PoolOptions("p", 2, 2)).value();
  Buffer b = pool->RequestBuffer();
  MemorySegment* seg = b.segment();
  b.Release();  // back in the pool's queue
  EXPECT_DEATH(pool->Recycle(seg), "recycled twice into a LocalBufferPool");
  Buffer held = pool->RequestBuffer();
  EXPECT_DEATH(pool->Recycle(held.segment()), "while a Buffer still holds it");
}

TEST_F(BufferDeathTest, SetSizeBeyondCapacityAborts) {
  Buffer b = AllocateUnpooled(16);
  EXPECT_DEATH(b.SetSize(17), "beyond the segment capacity");
}

}  // namespace
}  // namespace sluice::buffer
