// The daemon's own spill directory (internal, not installed): <spill_dir>/node-<host>-<port>,
// held with an flock on its "lock" file for the store's life.
//
// Claiming it removes what stopped or crashed daemons left: spill files in the root, and every
// other node directory whose lock is free (its spill files, its lock file, the directory). A
// clean release removes the directory's spill files, its lock file and the directory itself,
// so a stopped daemon leaves nothing behind (only files that are not Sluice's keep a directory).
//
// Thread-safety: free functions on the file system; concurrent claims and releases by several
// stores in one process or several processes are safe (a claim retries while another store is
// removing the lock file it opened).
#pragma once

#include <string>

#include "sluice/buffer/status.h"

namespace sluice::store {

struct SpillDirClaim {
  std::string dir;  // <root>/node-<node with '/', ':', '[', ']' as '-'>
  int lock_fd = -1;  // holds the flock; ReleaseSpillDir closes it
};

// Creates root and the node directory and locks it. IoError naming the directory when it
// cannot be created or another live store holds it.
Result<SpillDirClaim> ClaimSpillDir(const std::string& root, const std::string& node);

// Removes the claim's spill files, its lock file and its directory (when nothing else is in
// it), then drops the lock. No-op on a default SpillDirClaim.
void ReleaseSpillDir(SpillDirClaim& claim);

}  // namespace sluice::store
