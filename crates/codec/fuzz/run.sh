#!/bin/sh
# Runs the FGBI decoder fuzz target briefly (default 30 s): crates/codec/fuzz/run.sh [seconds]
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -eu
cd "$(dirname "$0")"
secs="${1:-30}"
mkdir -p corpus/decode
# Seeds: real encoded epochs (cheap; regenerated each run).
(cd .. && cargo run -q --example fuzz_seeds -- fuzz/corpus/decode)
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo +nightly fuzz run decode corpus/decode -- \
    -max_total_time="$secs" -max_len=65536
