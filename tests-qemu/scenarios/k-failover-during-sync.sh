#!/bin/sh
# lab: hosts=2 timeout=600 test=yes
# Failover before the first commit (issue 6): host 0 dies while the initial
# synchronisation is still running. Host 1 must not resume anything and
# must say so clearly.
. /lab/lib.sh
if [ "$LAB_HOST" -eq 0 ]; then
    failover_primary_start
    wait_for 120 "the initial synchronisation" grep -q "^protect: synchronising" /tmp/protect.txt
    die_now "during the initial synchronisation"
fi

failover_backup_start
wait_for 300 "the guard's verdict" grep -q "nothing to resume\|FAILOVER" /tmp/guard.txt
cat /tmp/guard.txt
grep -q FAILOVER /tmp/guard.txt && fail "the guard resumed without a committed epoch"
show "$(grep 'nothing to resume' /tmp/guard.txt)"
out=$(resilire-shim resume testvm --appliance app 2>&1) && fail "resume succeeded without a committed epoch: $out"
show "resume by hand: ${out#resilire-shim: error: }"
xl list testvm > /dev/null 2>&1 && fail "a testvm domain exists on the backup"
true
