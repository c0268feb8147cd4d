#!/usr/bin/env bash
# Builds and runs each fuzz target of resilire-proto for N seconds (default 20).
# Usage: crates/proto/fuzz/run-brief.sh [SECONDS]   (needs the nightly toolchain and cargo-fuzz)
# libFuzzer's progress goes to fuzz/target/<target>.log; its tail is printed, all of it on failure.
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
mkdir -p "$CARGO_TARGET_DIR"
cargo +nightly fuzz build frame_reader
cargo +nightly fuzz build payload
for t in frame_reader payload; do
    log="$CARGO_TARGET_DIR/$t.log"
    echo "fuzz: resilire-proto/$t for ${secs}s"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=4096 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz: resilire-proto/$t FAILED (reproducer in crates/proto/fuzz/artifacts/$t/)"
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 3 "$log"
done
