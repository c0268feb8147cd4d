#!/bin/sh
# Byte bounds for a captured workload: how far stronger general-purpose compression gets.
#   tools/bench/scripts/bounds.sh <capture-dir> [images] [epoch]
# 1. FGBI's own control and literal streams (steady epochs of the first <images> images, split
#    batches before zstd, from encprof) through zstd -1 (what FGBI does, per batch), zstd -19
#    and xz -9e over the whole stream: how much better modelling of the same records could buy.
# 2. The dirty pages of <epoch> against the whole previous image as a dictionary
#    (zstd --patch-from, long-distance matching over all of memory): a bound for any scheme that
#    finds moved content anywhere in the backup's image.
# Needs zstd, xz and python3; prints one line per figure.
set -eu
dir=$1; images=${2:-10}; epoch=${3:-5}
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
cargo build -q --release -p resilire-bench --example encprof --manifest-path "$root/Cargo.toml"
ENCPROF_DUMP=$out "$root/target/release/examples/encprof" "$dir" 1 "$images" | sed 's/^/encprof: /'
size() { wc -c < "$1" | tr -d ' '; }
for s in ctl lit; do
    f=$out/$s.raw
    echo "$s: raw $(size "$f") B | zstd -19 $(zstd -19 -q -c "$f" | wc -c) B | xz -9e $(xz -9e -c "$f" | wc -c) B"
done
prev=$(ls "$dir" | sort | sed -n "${epoch}p"); cur=$(ls "$dir" | sort | sed -n "$((epoch + 1))p")
python3 - "$dir/$prev" "$dir/$cur" "$out/dirty.bin" <<'PY'
import sys
a = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
with open(sys.argv[3], 'wb') as out:
    for s in range(0, len(a), 4096):
        if a[s:s + 4096] != b[s:s + 4096]:
            out.write(b[s:s + 4096])
PY
d=$out/dirty.bin
echo "epoch $cur: dirty pages $(($(size "$d") / 4096)), remus $(size "$d") B | zstd -1 $(zstd -1 -q -c "$d" | wc -c) B | zstd -19 $(zstd -19 -q -c "$d" | wc -c) B | zstd -1 --patch-from=$prev $(zstd -1 -q --long=31 --patch-from="$dir/$prev" -c "$d" | wc -c) B | zstd -19 --patch-from $(zstd -19 -q --long=31 --patch-from="$dir/$prev" -c "$d" 2>/dev/null | wc -c) B"
