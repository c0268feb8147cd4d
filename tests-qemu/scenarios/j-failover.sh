#!/bin/sh
# lab: hosts=2 timeout=900 test=yes
# Failover (issue 6). Host 0 runs the test guest and protects it to the
# appliance on host 1; a TCP client on host 1 records every counter value
# the guest streams to it. Host 0's QEMU is killed outright at a random
# moment of an epoch. Host 1's guard must notice on its own and resume the
# guest from the last committed epoch: its self-check passes, and the
# client's stream never goes back (nothing a client saw is lost).
. /lab/lib.sh
if [ "$LAB_HOST" -eq 0 ]; then
    failover_primary_start
    # Host 1 says when its client is connected.
    nc -l -p 7999 > /dev/null || fail "waiting for host 1's client"
    wait_for 400 "10 committed epochs" sh -c "grep -q '^protect: epoch 1[0-9]' /tmp/protect.txt"
    # A random point within an epoch (interval 200 ms).
    sleep "0.$(awk 'BEGIN { srand(); printf "%03d", int(rand() * 1000) }')"
    tail -n 3 /tmp/protect.txt
    die_now "protect: $(tail -n 1 /tmp/protect.txt)"
fi

failover_backup_start
wait_for 300 "the protected guest" sh -c "echo counter | nc -w 2 $FO_GUEST_IP 7000 | grep -q counter"
client_record &
wait_for 30 "the client's first value" test -s /tmp/client.txt
wait_for 120 "host 0 to take the news that the client is connected" sh -c "echo ready | nc -w 5 $(host_ip 0) 7999"

wait_for 300 "the guard's failover" grep -q "resumed_at=\|FAILED" /tmp/guard.txt
cat /tmp/guard.txt
grep -q "resumed_at=" /tmp/guard.txt || fail "failover: $(grep FAILED /tmp/guard.txt)"
show "$(grep 'FAILOVER' /tmp/guard.txt)"
show "$(grep 'resumed_at=' /tmp/guard.txt)"
resilire-shim status | grep failover

wait_for 120 "the resumed guest to answer" workload_cmd $FO_GUEST_IP counter
reply=$(workload_cmd $FO_GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "self-check after failover: $reply" ;; esac
show "resumed guest: $reply"

# The client's view: values never go back across the failover (output
# commit: nothing it saw was lost); the silence across the resume is the
# downtime it saw.
RESUMED=$(sed -n 's/.*resumed_at=\([0-9.]*\).*/\1/p' /tmp/guard.txt)
wait_for 60 "the client's values after the resume" awk -v r="$RESUMED" '$1 > r { f = 1 } END { exit !f }' /tmp/client.txt
client_check "$RESUMED" > /tmp/client-check.txt || { cat /tmp/client-check.txt; fail "the client's view of the failover"; }
show "$(cat /tmp/client-check.txt)"
