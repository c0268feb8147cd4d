#!/usr/bin/env bash
# Entry point of the Resilire lab on a fresh Debian 12 machine: makes sure a
# Rust toolchain is there, then hands over to `resilire-lab`, which installs
# the Debian packages and Rust targets it needs and does the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
    echo "lab: no cargo on PATH; install rustup (https://rustup.rs) first" >&2
    exit 1
fi
cargo build -q --release -p resilire-lab
exec ./target/release/resilire-lab "$@"
