#!/usr/bin/env bash
# Runs Keelson's whole test suite: formatting, lints, unit and property tests, the proofs'
# property runs, and the end-to-end boots in QEMU of an image built as an ordinary user.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
ensure_host_packages
ensure_rust
started=$SECONDS
# A fresh clone gains nothing from incremental compilation's caches, and they cost disk.
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0
# Each step says how far into the run it starts, so a slow CI run shows where time went.
step() { echo "==> [$((SECONDS - started)) s] $*"; }

# Tests skip through keelson_testkit::skip, which appends to this file (and fails under
# CI=true as root). The count is printed at the end of the suite, pass or fail.
export KEELSON_SKIP_LOG="$PWD/target/skipped-tests.log"
mkdir -p target
rm -f "$KEELSON_SKIP_LOG"
report_skips() {
  local count=0
  [ -f "$KEELSON_SKIP_LOG" ] && count=$(wc -l < "$KEELSON_SKIP_LOG")
  echo "==> skipped tests: $count"
  [ "$count" -gt 0 ] && sed 's/^/    /' "$KEELSON_SKIP_LOG"
  return 0
}
trap report_skips EXIT

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy -q --workspace --all-targets -- -D warnings

step "building the workspace and its tests (keelson-image and keelctl among them)"
# One build for the whole workspace with every target: dependencies get the features
# that 'cargo test --workspace' and the benchmark unify to, so neither compiles them again.
cargo build -q --workspace --all-targets
export KEELSON_KEELCTL="$PWD/target/debug/keelctl"
export KEELSON_IMAGE_TOOL="$PWD/target/debug/keelson-image"
step "building the image"
image_dir="$PWD/target/test-image"
updates_dir="$PWD/target/test-updates"
rm -rf "$image_dir" "$updates_dir"
mkdir -p "$updates_dir"
# The update tests need bundles signed by a key the image trusts.
target/debug/keelson-image keygen --out "$updates_dir/update.key" >/dev/null
static_dir=target/x86_64-unknown-linux-gnu/release
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --release --target x86_64-unknown-linux-gnu -p keelson-init -p keelson-agent
# The runtime benchmark's guest half, with the same flags (it shares their build).
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --release --target x86_64-unknown-linux-gnu -p keelson-runtime --example runtime_bench
binaries=(--binaries "$static_dir")
if [ "$(id -u)" -eq 0 ]; then
  # Prove that building needs no root: build the image as the unprivileged user 'nobody',
  # in a directory it owns.
  mkdir -p "$image_dir" target/nobody-home
  chown nobody: "$image_dir" target/nobody-home "$updates_dir/update.key"
  chmod o+rx target target/debug target/x86_64-unknown-linux-gnu target/x86_64-unknown-linux-gnu/release
  setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
    env HOME="$PWD/target/nobody-home" PATH="/usr/local/bin:/usr/bin:/bin" \
    target/debug/keelson-image build --out "$image_dir" \
    --binaries target/x86_64-unknown-linux-gnu/release --signing-key "$updates_dir/update.key"
  echo "(the image above was built as user $(setpriv --reuid=nobody id -un 2>/dev/null || echo nobody))"
else
  target/debug/keelson-image build --out "$image_dir" "${binaries[@]}" \
    --signing-key "$updates_dir/update.key"
fi
# The next release: the same code with the patch version raised, signed by the same key.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
next_version="${version%.*}.$(( ${version##*.} + 1 ))"
target/debug/keelson-image build --out "$updates_dir/next" --version "$next_version" \
  "${binaries[@]}" --signing-key "$updates_dir/update.key" | tail -2
# A broken release after it: its agent is PID 1's binary, which exits at once when it is
# not process 1, so the node can never prove it healthy.
broken_version="${version%.*}.$(( ${version##*.} + 2 ))"
mkdir -p "$updates_dir/broken-overlay/usr/bin"
cp "$static_dir/keelson-init" "$updates_dir/broken-overlay/usr/bin/keelsond"
target/debug/keelson-image build --out "$updates_dir/broken" --version "$broken_version" \
  "${binaries[@]}" --signing-key "$updates_dir/update.key" \
  --root-overlay "$updates_dir/broken-overlay" | tail -1
export KEELSON_TEST_BUNDLES="$updates_dir"
sgdisk -p "$image_dir/keelson.raw" | tail -5

step "tests (unit, property, proofs' property runs, QEMU end-to-end)"
export KEELSON_TEST_IMAGE="$image_dir/keelson.raw"
if cargo nextest --version >/dev/null 2>&1; then
  # One pool of two threads over every test binary (.config/nextest.toml): the QEMU tests
  # of different files overlap, the longest first. nextest leaves out doc tests.
  cargo nextest run --workspace --no-fail-fast --test-threads 2
  cargo test -q --workspace --doc
else
  echo "cargo-nextest is not installed (cargo install --locked cargo-nextest): the test"
  echo "binaries run one after another, which takes longer"
  cargo test --workspace --no-fail-fast -- --test-threads 2
fi

step "update write benchmark, one run (prints figures; speed never fails the suite)"
# The dev profile and the workspace's feature set reuse what the build above compiled;
# the bench's own work is the VM's.
KEELSON_BENCH_RUNS=1 cargo bench -q --profile dev --workspace --bench update

# One VM gives both the runtime benchmark's figures (beside crun and runc) and the pods
# benchmark's (apply to Ready beside the bare runtime): the pods bench prints them all.
# `cargo bench --bench runtime` still runs the runtime half alone.
step "runtime and pods benchmarks, one VM, one run (prints figures; never fails on speed)"
KEELSON_STATIC_DIR="$PWD/$static_dir" cargo bench -q --profile dev --workspace --bench pods

step "gossip benchmark, 100 simulated nodes (prints figures; never fails on speed)"
# The thousand-node run and the failover VMs are for `cargo bench --bench cluster` by
# hand: in the dev profile a thousand nodes would take half an hour.
KEELSON_GOSSIP_NODES=100 KEELSON_BENCH_FAILOVER=0 cargo bench -q --profile dev --workspace --bench cluster

step "test suite finished"
