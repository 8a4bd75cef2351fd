#!/usr/bin/env bash
# Builds the Keelson image, generates a cluster PKI and machine config, boots the image in
# QEMU with that config until the node is ready, and asks it for its status over mutual TLS.
#   scripts/run.sh            ... then powers the node off through the API
#   KEEP=1 scripts/run.sh     ... and leaves it running (API on 127.0.0.1:50000; run
#                             `export KEELCONFIG=out/pki/keelctl.yaml` and use keelctl)
#   NODES=3 scripts/run.sh    a local cluster instead: `keelson-qemu cluster create`, then
#                             `cluster status` and `get nodes`; KEEP=1 leaves it running
#                             (`export KEELCONFIG=out/cluster-demo/keelctl.yaml`)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
ensure_host_packages
ensure_rust

port="${API_PORT:-50000}"
cargo build --release -q -p keelson-image -p keelson-qemu -p keelson-ctl
target/release/keelson-image build --out out
if [ -n "${NODES:-}" ]; then
  if [ -f out/cluster-demo/cluster.json ]; then
    target/release/keelson-qemu cluster destroy --name demo
  fi
  target/release/keelson-qemu cluster create --nodes "$NODES" --name demo --image out/keelson.raw
  export KEELCONFIG="$PWD/out/cluster-demo/keelctl.yaml"
  target/release/keelctl cluster status
  target/release/keelctl get nodes -o wide
  if [ "${KEEP:-0}" != 1 ]; then
    target/release/keelson-qemu cluster destroy --name demo
  else
    echo "cluster left running: keelson-qemu cluster status --name demo"
  fi
  exit 0
fi
if [ ! -f out/pki/node.yaml ]; then
  target/release/keelctl gen config --cluster demo --out out/pki --endpoint "127.0.0.1:$port"
fi
export KEELCONFIG="$PWD/out/pki/keelctl.yaml"
target/release/keelson-qemu run --image out/keelson.raw --wait-ready --disk-size 4G \
  --console out/console.log --api-port "$port" --config out/pki/node.yaml --keep
target/release/keelctl status
if [ "${KEEP:-0}" != 1 ]; then
  target/release/keelctl shutdown
fi
echo "console log: out/console.log"
