#!/usr/bin/env bash
# Installs every Debian package Sluice needs to build, test and run. Idempotent: quiet and
# offline when nothing is missing. Usage: tools/setup.sh
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libuv1-dev libflatbuffers-dev flatbuffers-compiler libboost-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-dev
  libspdlog-dev libtomlplusplus-dev libssl-dev libcli11-dev python3
  python3-prometheus-client  # the sluiced service test parses /metrics with it
  iproute2 nftables procps
  libzmq3-dev  # sluice-bench --baselines zmq (optional: built only when found)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
