#!/bin/sh
# lab: hosts=1 timeout=240 test=yes
# Scenario (b): the PVH test guest boots, its workload's self-check passes,
# and the shim reads a non-zero number of dirty pages over a few intervals.
. /lab/lib.sh
GUEST_IP=10.99.0.101
cfg=$(guest_config testvm $GUEST_IP 192 64)
t0=$(now)
xl create "$cfg" || fail "xl create"
wait_guest_line 120 testvm "workload: self-check ok" || true
t1=$(now)
show "test guest up, workload running, in $(elapsed "$t0" "$t1")s"
wait_guest_line 30 testvm "workload: counter="
wait_for 30 "guest TCP service" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
echo "verify: $reply"
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "self-check: $reply" ;; esac
show "guest self-check: $reply"

resilire-shim domains
resilire-shim dirty testvm --interval-ms 500 --count 4 > /tmp/dirty.txt 2>&1 || { cat /tmp/dirty.txt; fail "shim dirty"; }
cat /tmp/dirty.txt
total=$(awk '/^dirty: total/ { print $3 }' /tmp/dirty.txt)
[ -n "$total" ] && [ "$total" -gt 0 ] || fail "no dirty pages seen (total '$total')"
nonzero=$(grep -c 'interval .* pages=[1-9]' /tmp/dirty.txt)
[ "$nonzero" -ge 3 ] || fail "only $nonzero of 4 intervals saw dirty pages"
show "$(grep 'interval 4' /tmp/dirty.txt)"
show "dirty pages over 4 x 500 ms: $total"

# The guest still verifies after the shim tracked it (log-dirty is off again).
wait_for 30 "the guest to answer after tracking" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) fail "self-check after tracking: $reply" ;; esac
xl destroy testvm
