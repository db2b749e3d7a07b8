// Turns across processes (sluice-bench --interleave-ms): the board that lets the latency paths
// of one round (Sluice, the TCP floor, ZeroMQ: each a pair of forked processes) run at the
// same time and take turns to send, so that a noisy stretch of the host lands on all of them
// alike instead of on whichever path measured in it.
//
// The orchestrating process maps a board before it forks the paths (MapTurnBoard). Each path's
// process says which path it is (JoinTurns) before it forks its own children; its sender then
// makes its Pacer with StartPacer, which reports ready on the board and waits for the start
// time. Once every path is ready the orchestrator sets the start (StartTurns), and from then on
// each sender paces within its own slots (TurnSchedule in latency_stats.h). A process that did
// not join gets a plain Pacer from now.
//
// Thread safety: the board's fields are atomics shared by processes; JoinTurns is process-wide
// state, to be set before the process starts threads or forks its path's children.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <utility>

#include "tools/bench/latency_stats.h"

namespace sluice::bench {

struct TurnBoard {
  std::atomic<uint32_t> ready{0};     // senders waiting for the start
  std::atomic<uint64_t> start_ns{0};  // CLOCK_MONOTONIC; 0 until StartTurns
  uint64_t slot_ns = 0;
  uint32_t paths = 0;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the board is shared across processes");

// A T constructed in anonymous memory shared with every process forked afterwards (the board,
// or a test's answers from its children); nullptr when mmap fails (errno says why). Release
// with UnmapShared once those processes are gone.
template <typename T, typename... Args>
T* MapShared(Args&&... args) {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : new (p) T{std::forward<Args>(args)...};
}
template <typename T>
void UnmapShared(T* t) {
  if (t == nullptr) return;
  t->~T();
  ::munmap(t, sizeof(T));
}

// A board for `paths` paths taking turns of `slot_ns` (MapShared); nullptr when mmap fails.
// Unmap with UnmapTurnBoard once the paths' processes are gone.
TurnBoard* MapTurnBoard(uint32_t paths, uint64_t slot_ns);
inline void UnmapTurnBoard(TurnBoard* board) { UnmapShared(board); }

// From now on this process and the children it forks are path `index` of `board`'s turns.
// REQUIRES: index < board->paths.
void JoinTurns(TurnBoard* board, uint32_t index);

// The paced sender of this process's path at `rate` messages per second. Without JoinTurns: a
// Pacer starting now. With it: reports ready, waits for StartTurns (polling every millisecond;
// after kTurnStartWaitNs without a start it paces on its own from then) and paces in the
// path's slots.
inline constexpr uint64_t kTurnStartWaitNs = 60ull * 1000000000;
Pacer StartPacer(uint32_t rate);

// The orchestrator's side: waits until every path is ready (or `give_up()` says a path will
// never be, or `timeout_ns` passes), then starts the turns kTurnLeadNs from now, so each
// waiting sender sees the start before its first slot. Returns how many paths were ready.
inline constexpr uint64_t kTurnLeadNs = 20ull * 1000000;
void SleepOneMillisecond();
template <typename GiveUp>
uint32_t StartTurns(TurnBoard* board, uint64_t timeout_ns, GiveUp give_up) {
  const uint64_t deadline = MonotonicNowNs() + timeout_ns;
  while (board->ready.load() < board->paths && MonotonicNowNs() < deadline && !give_up()) {
    SleepOneMillisecond();
  }
  board->start_ns.store(MonotonicNowNs() + kTurnLeadNs);
  return board->ready.load();
}

}  // namespace sluice::bench
