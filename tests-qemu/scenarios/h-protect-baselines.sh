#!/bin/sh
# lab: hosts=1 timeout=1200 test=no
# (Not a test: figures.) The cost of protection next to Xen's own
# checkpointing, on the same guest in the same run: per-epoch pause (median,
# p99) as the guest itself saw it (the workload's `pauses`: gaps in its
# progress loop on CLOCK_BOOTTIME, which runs on while it is suspended) and
# bytes per epoch, for
#   1. resilire-shim protect (output commit on, then off) to the appliance,
#   2. xl save -c (one full checkpoint; repeated),
#   3. xl remus -F -n -d -b -i <ms> (Remus into a blackhole).
# A gap counts as a checkpoint pause from PAUSE_MS (20 ms) up: the guest's
# other gaps (vCPU scheduling under TCG) are shorter.
. /lab/lib.sh
KEY=5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17
APP_IP=10.99.0.50
GUEST_IP=10.99.0.101
EPOCHS=${EPOCHS:-30}
INTERVAL=${INTERVAL:-200}
SAVES=${SAVES:-3}
REMUS_SECS=${REMUS_SECS:-15}
PAUSE_MS=${PAUSE_MS:-20}
T_START=$(now)
resilire-shim appliance start --name app --memory 320 --ip $APP_IP/24 --port 7780 --budget 256 \
    --key testvm=$KEY --wait 90 || { dump_guest app; fail "appliance start"; }
xl create "$(guest_config testvm $GUEST_IP 128 32)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="
wait_for 30 "ping of the appliance" ping -c 1 -W 1 $APP_IP
wait_for 30 "guest TCP service" workload_cmd $GUEST_IP counter
DOMID=$(xl domid testvm)

# pauses_now <file>: the guest's pause list into a file (the network may
# need a moment after suspend-cancels).
pauses_once() { workload_cmd $GUEST_IP pauses | grep '^pauses ' > "$1"; }
pauses_now() { try_for 30 pauses_once "$1"; }
reset_once() { workload_cmd $GUEST_IP pauses-reset | grep -q ok; }
reset_pauses() { try_for 30 reset_once; }

# 1. protect, with and without output commit: the figures from the epochs
# after the initial synchronisation.
protect_run() { # <label> [extra args]
    _label=$1; shift
    t0=$(now)
    resilire-shim protect testvm --backup $APP_IP:7780 --key $KEY --interval $INTERVAL --epochs $EPOCHS "$@" \
        > /tmp/protect-$_label.txt 2>&1 &
    _pid=$!
    _synced() {
        grep -q '^protect: synchronised' /tmp/protect-$_label.txt || ! kill -0 $_pid 2>/dev/null ||
            [ "$(xl domid testvm 2>/dev/null)" != "$DOMID" ]
    }
    wait_for 180 "protect ($_label) to synchronise" _synced
    reset_pauses || echo "protect ($_label): pauses-reset did not get through"
    wait $_pid; _rc=$?
    [ $_rc = 0 ] || { cat /tmp/protect-$_label.txt; fail "protect ($_label) exit $_rc"; }
    t1=$(now)
    pauses_now /tmp/pauses-$_label.txt || fail "no pause list after protect ($_label)"
    _sum=$(grep '^protect: summary' /tmp/protect-$_label.txt)
    _g=$(pause_stats $PAUSE_MS < /tmp/pauses-$_label.txt)
    _f() { echo "$_sum" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
    echo "protect-$_label: $_sum; guest view: $_g"
    show "protect ($_label): guest-seen pause $_g | dom0-seen pause median $(_f pause_median_ms) ms p99 $(_f pause_p99_ms) ms | bytes/epoch: wire median $(_f wire_median) mean $(_f wire_mean), dirty pages median $(_f dirty_median) ($(_f raw_bytes_median) raw bytes) | ack median $(_f ack_median_ms) ms | $EPOCHS epochs at ${INTERVAL} ms in $(elapsed "$t0" "$t1")s wall"
}
protect_run oc-on
protect_run oc-off --no-output-commit

# 2. xl save -c: one full checkpoint each; the guest's longest gap around
# each is its pause.
: > /tmp/save-pauses.txt
: > /tmp/save-bytes.txt
t0=$(now)
for i in $(seq 1 $SAVES); do
    reset_pauses || fail "pauses-reset before xl save -c $i"
    xl save -c testvm /tmp/testvm.save > /tmp/save.txt 2>&1 || { cat /tmp/save.txt; fail "xl save -c $i"; }
    ls -l /tmp/testvm.save | awk '{ print $5 }' >> /tmp/save-bytes.txt
    rm -f /tmp/testvm.save
    pauses_now /tmp/pauses-save.txt || fail "no pause list after xl save -c $i"
    sed -n 's/.*ms=//p' /tmp/pauses-save.txt | tr ',' '\n' | sort -n | tail -1 >> /tmp/save-pauses.txt
done
t1=$(now)
g=$(tr '\n' ',' < /tmp/save-pauses.txt | sed 's/^/pauses ms=/' | pause_stats 0)
echo "xl save -c pauses: $(tr '\n' ' ' < /tmp/save-pauses.txt); sizes: $(tr '\n' ' ' < /tmp/save-bytes.txt)"
show "xl save -c: guest-seen pause $g | bytes/checkpoint $(sort -n /tmp/save-bytes.txt | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }') (the whole memory) | $SAVES saves in $(elapsed "$t0" "$t1")s wall"

# 3. Remus into a blackhole: after its initial copy, checkpoints every
# INTERVAL ms; bytes per epoch from what its save helper wrote.
xl remus -F -n -d -b -i $INTERVAL testvm localhost > /tmp/remus.txt 2>&1 &
REMUS=$!
t0=$(now)
wait_for 60 "xl remus's save helper" pidof libxl-save-helper
HELPER=$(pidof libxl-save-helper | awk '{ print $1 }')
# Its initial round writes the whole memory (128 MiB); checkpoints follow.
remus_copied() { [ "$(wchar_of $HELPER)" -gt 134217728 ]; }
wait_for 300 "xl remus's initial copy" remus_copied
show "xl remus: initial copy done after $(elapsed "$t0" "$(now)")s"
sleep 5
kill -0 $REMUS 2>/dev/null || { cat /tmp/remus.txt; fail "xl remus exited"; }
reset_pauses || echo "remus: pauses-reset did not get through"
w1=$(wchar_of $HELPER); t1=$(now)
sleep $REMUS_SECS
w2=$(wchar_of $HELPER); t2=$(now)
pauses_now /tmp/pauses-remus.txt || echo "remus: no pause list (guest unreachable while Remus runs)"
g=$(pause_stats $PAUSE_MS < /tmp/pauses-remus.txt)
n=$(echo "$g" | sed -n 's/^n=\([0-9]*\).*/\1/p')
per=$(awk -v a="$w1" -v b="$w2" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%d", (b - a) / n; else print "-" }')
echo "remus: helper $HELPER wrote $((w2 - w1)) bytes in $(elapsed "$t1" "$t2")s; $g"
show "xl remus -i $INTERVAL (blackhole): guest-seen pause $g | bytes/epoch $per (save stream, $((w2 - w1)) bytes over $n epochs in $(elapsed "$t1" "$t2")s) | run $(elapsed "$t0" "$t2")s wall"
kill $REMUS 2>/dev/null
sleep 2
xl list
show "baselines done in $(elapsed "$T_START" "$(now)")s wall"
