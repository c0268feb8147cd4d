#!/bin/sh
# Boots the appliance as dom0 directly under Xen 4.17 in QEMU (TCG), the way
# Xen's own CI smoke-tests its PV test kernels, twice:
#  1. the self-test (memory over all pages, frames, heap, SCHEDOP_poll with a
#     deadline, grants) must print "RESILIRE-SMOKE: PASS";
#  2. with "resilire.test=panic" on the command line, the panic handler must
#     report on the console and Xen must see the domain crash.
# Usage: [DOM0_MEM=1200M QEMU_MEM=2048] appliance/scripts/dom0-smoke.sh [appliance ELF]
# Needs qemu-system-x86 and xen-hypervisor-4.17-amd64. Exit 0 = both passed.
set -u
DOM0_MEM=${DOM0_MEM:-128M}
QEMU_MEM=${QEMU_MEM:-512}
ELF=${1:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-none/release/resilire-appliance}
[ -f "$ELF" ] || { echo "no appliance ELF at $ELF" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
zcat /boot/xen-4.17-amd64.gz > "$WORK/xen.elf"

# boot <log> <dom0 command line extra> <marker>: runs QEMU until the marker
# shows in the serial log (or 120 s), then stops it.
boot() {
    qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt -m "$QEMU_MEM" -smp 1 -nographic -no-reboot \
        -kernel "$WORK/xen.elf" -append "loglvl=all guest_loglvl=all console=com1 noreboot dom0_mem=$DOM0_MEM" \
        -initrd "$ELF $2" -monitor none -serial "file:$1" >/dev/null 2>&1 &
    qpid=$!
    n=0
    while [ $n -lt 240 ] && ! grep -q "$3" "$1" 2>/dev/null; do sleep 0.5; n=$((n + 1)); done
    kill "$qpid" 2>/dev/null
    wait "$qpid" 2>/dev/null
    grep -q "$3" "$1"
}

rc=0
if boot "$WORK/smoke.log" "" "RESILIRE-SMOKE: \|PANIC\|Hardware Dom0 crashed" && grep -q "RESILIRE-SMOKE: PASS" "$WORK/smoke.log"; then
    grep -E "^Resilire|INFO|RESILIRE-SMOKE" "$WORK/smoke.log"
    echo "dom0-smoke: self-test passed"
else
    cat "$WORK/smoke.log"
    echo "dom0-smoke: self-test FAILED"
    rc=1
fi
if boot "$WORK/panic.log" "resilire.test=panic" "Hardware Dom0 crashed" && grep -q "resilire-appliance PANIC" "$WORK/panic.log"; then
    grep -A1 "PANIC" "$WORK/panic.log"
    grep "Dom0 crashed" "$WORK/panic.log"
    echo "dom0-smoke: panic path passed"
else
    tail -n 30 "$WORK/panic.log"
    echo "dom0-smoke: panic path FAILED"
    rc=1
fi
exit $rc
