#!/usr/bin/env bash
# Builds and runs each fuzz target of resilire-proto for N seconds (default 20).
# Usage: crates/proto/fuzz/run-brief.sh [SECONDS]   (needs the nightly toolchain and cargo-fuzz)
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
for t in frame_reader payload; do
    echo "fuzz: resilire-proto/$t for ${secs}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=4096 -print_final_stats=0
done
