#!/usr/bin/env bash
# Builds the Keelson image and boots it in QEMU until the node is ready.
#   scripts/run.sh            build out/keelson.raw, boot it, stop at the ready line
#   KEEP=1 scripts/run.sh     ... and leave the VM running (API on 127.0.0.1:50000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
ensure_host_packages
ensure_rust

cargo build --release -q -p keelson-image -p keelson-qemu
target/release/keelson-image build --out out
keep=()
[ "${KEEP:-0}" = 1 ] && keep=(--keep)
target/release/keelson-qemu run --image out/keelson.raw --wait-ready --disk-size 4G \
  --console out/console.log --api-port "${API_PORT:-50000}" "${keep[@]}"
echo "console log: out/console.log"
