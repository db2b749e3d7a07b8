// sluice-bench --mode external (issue 13): a local writer process writing records through the
// daemon-side LocalWriterService (shared-memory segments, Unix socket, write credit) against
// in-process ResultPartition::EmitInPlace into a pool, measured in the same run, each in
// forked children. The service's sink releases every buffer at once (the store is measured by
// its own benchmarks), as does the in-process side's consumer, so both sides measure the
// producer's path into network memory. The service checks each segment's framing before its
// sink, so the in-process side runs twice: its consumer dropping each buffer unread, and
// checking the framing first (RecordFraming::Check, as the service does), which makes another
// core read what the producer wrote on both paths. Records carry an 8-byte sequence number
// written in place; --batch consecutive records go to one subpartition, then the next.
// Thread-compatible; call from a process with no other threads (it forks).
#pragma once

#include "tools/bench/bench_flags.h"

namespace sluice::bench {

// Runs --rounds rounds of the three sides; prints each round and the medians (or --json);
// returns the exit code.
int RunExternalBench(const BenchFlags& flags);

}  // namespace sluice::bench
