#!/usr/bin/env bash
# Sets up (installs missing Debian packages), builds and runs Sluice's main job on its built-in
# default. Until the daemon and harness land this is the buffer-pool demo: a producer and a
# consumer passing buffers through a tiny pool. Extra arguments go to the program.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j"$(nproc)" --target sluice-demo
exec "$root/build/tools/sluice-demo" "$@"
