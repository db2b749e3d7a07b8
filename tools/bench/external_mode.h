// sluice-bench --mode external (issue 13): a local writer process writing records through the
// daemon-side LocalWriterService (shared-memory segments, Unix socket, write credit) against
// in-process ResultPartition::EmitInPlace into a pool, measured in the same run, each in
// forked children. The service's sink releases every buffer at once (the store is measured by
// its own benchmarks), as does the in-process side's consumer, so both sides measure the
// producer's path into network memory. Records carry an 8-byte sequence number written in
// place; --batch consecutive records go to one subpartition, then the next.
// Thread-compatible; call from a process with no other threads (it forks).
#pragma once

#include "tools/bench/bench_flags.h"

namespace sluice::bench {

// Runs --rounds rounds of both sides; prints a table (or --json); returns the exit code.
int RunExternalBench(const BenchFlags& flags);

}  // namespace sluice::bench
