#!/bin/sh
# lab: hosts=1 timeout=600 test=no
# Debugging aid for resume: the shim writes a checkpoint of the running
# test guest as an xl save file from dom0's own copy (the same writer that
# feeds xl restore at a failover), and xl restores it.
. /lab/lib.sh
GUEST_IP=10.99.0.101
xl create "$(guest_config testvm $GUEST_IP 128 32)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="
resilire-shim checkpoint testvm --epochs 3 --save /tmp/ours.save || fail "checkpoint --save"
xl destroy testvm
before=$(grep -c "workload: counter=" "$(guest_log testvm)")
xl restore /tmp/ours.save || fail "xl restore of our stream"
wait_for 60 "progress after restore" sh -c "[ \$(grep -c 'workload: counter=' $(guest_log testvm)) -gt $before ]"
wait_for 60 "the restored guest to answer" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "self-check after restore: $reply" ;; esac
show "restored from our stream: $reply"
