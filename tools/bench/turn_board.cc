#include "tools/bench/turn_board.h"

#include <sys/mman.h>
#include <time.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace sluice::bench {
namespace {

// This process's path (JoinTurns); inherited by the children it forks.
TurnBoard* joined_board = nullptr;
uint32_t joined_index = 0;

}  // namespace

TurnBoard* MapTurnBoard(uint32_t paths, uint64_t slot_ns) {
  void* page = ::mmap(nullptr, sizeof(TurnBoard), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    std::fprintf(stderr, "sluice-bench: mmap of the turn board: %s\n", std::strerror(errno));
    std::exit(1);
  }
  auto* board = new (page) TurnBoard;
  board->paths = paths;
  board->slot_ns = slot_ns;
  return board;
}

void UnmapTurnBoard(TurnBoard* board) {
  if (board == nullptr) return;
  board->~TurnBoard();
  ::munmap(board, sizeof(TurnBoard));
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
