#include "tools/bench/turn_board.h"

#include <time.h>

namespace sluice::bench {
namespace {

// This process's path (JoinTurns); inherited by the children it forks.
TurnBoard* joined_board = nullptr;
uint32_t joined_index = 0;

}  // namespace

TurnBoard* MapTurnBoard(uint32_t paths, uint64_t slot_ns) {
  TurnBoard* board = MapShared<TurnBoard>();
  if (board != nullptr) {
    board->paths = paths;
    board->slot_ns = slot_ns;
  }
  return board;
}

void JoinTurns(TurnBoard* board, uint32_t index) {
  joined_board = board;
  joined_index = index;
}

void SleepOneMillisecond() {
  const timespec ms{0, 1000000};
  ::nanosleep(&ms, nullptr);
}

Pacer StartPacer(uint32_t rate) {
  if (joined_board == nullptr) return Pacer(MonotonicNowNs(), rate);
  TurnBoard& board = *joined_board;
  board.ready.fetch_add(1);
  const uint64_t deadline = MonotonicNowNs() + kTurnStartWaitNs;
  uint64_t start = 0;
  while ((start = board.start_ns.load()) == 0 && MonotonicNowNs() < deadline) {
    SleepOneMillisecond();
  }
  if (start == 0) return Pacer(MonotonicNowNs(), rate);  // no orchestrator: no turns
  return Pacer(TurnSchedule{.start_ns = start, .slot_ns = board.slot_ns, .paths = board.paths,
                            .index = joined_index},
               rate);
}

}  // namespace sluice::bench
