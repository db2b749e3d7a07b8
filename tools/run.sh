#!/usr/bin/env bash
# Sets up (installs missing Debian packages), builds and runs Sluice's main job on its built-in
# default: sluice-harness starts 3 sluiced daemons on loopback, runs an all-to-all shuffle of
# 1 GiB of generated records between them, verifies every record (exactly once, in order,
# checksums), checks that every daemon returned every segment, and prints a summary. The daemons
# run with the deployment defaults (authenticated with a random secret in the harness's run
# directory, a token per job, fault hooks off); no flag is needed for that on loopback.
# Extra arguments go to sluice-harness (see `--help`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j"$(nproc)" --target sluiced sluice-harness
exec "$root/build/tools/harness/sluice-harness" --sluiced "$root/build/tools/daemon/sluiced" "$@"
