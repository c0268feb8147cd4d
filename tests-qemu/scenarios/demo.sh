#!/bin/sh
# lab: hosts=2 timeout=900 test=no
# The demo, the whole story on two lab hosts: host 0 runs the test guest and
# protects it to the appliance on host 1; a few seconds of epochs with live
# figures; host 0 is killed outright; host 1 notices and resumes the guest
# from the last committed epoch; a summary of what it cost.
. /lab/lib.sh
say() { echo "demo: $*"; }
if [ "$LAB_HOST" -eq 0 ]; then
    say "host 0 (primary): booting the PVH test guest, then protecting it to host 1's appliance"
    failover_primary_start
    nc -l -p 7999 > /dev/null
    wait_for 300 "the initial synchronisation" grep -q "^protect: synchronised" /tmp/protect.txt
    say "$(grep '^protect: synchronised' /tmp/protect.txt)"
    say "epochs, live (dirty pages, records, bytes on the wire, guest pause, ack):"
    n=0
    tail -n 0 -f /tmp/protect.txt | while read -r line; do
        case "$line" in "protect: epoch"*) echo "demo: $line"; n=$((n + 1)); [ $n -ge 25 ] && break ;; esac
    done
    resilire-shim status | sed 's/^/demo: /'
    say "killing host 0 now, without warning"
    die_now "the demo"
fi

say "host 1 (backup): starting the appliance and the guard"
failover_backup_start
wait_for 300 "the protected guest" sh -c "echo counter | nc -w 2 $FO_GUEST_IP 7000 | grep -q counter"
client_record &
say "a client on host 1 reads the guest's counter ten times a second"
wait_for 120 "host 0 to take the news that the client is connected" sh -c "echo ready | nc -w 5 $(host_ip 0) 7999"
wait_for 600 "the failover" grep -q "resumed_at=\|FAILED" /tmp/guard.txt
sed 's/^/demo: /' /tmp/guard.txt
wait_for 120 "the resumed guest" workload_cmd $FO_GUEST_IP counter
say "the guest on host 1 says: $(workload_cmd $FO_GUEST_IP verify)"
sleep 2
D=$(xl domid app)
say "summary:"
say "  epochs committed: $(xenstore-read /local/domain/$D/resilire/status/vms/testvm/epochs_committed), bytes received: $(xenstore-read /local/domain/$D/resilire/status/vms/testvm/bytes_received)"
say "  detection: $(grep -o 'primary silent for [0-9]* ms ([^)]*), detected at [0-9.]* s' /tmp/guard.txt | tail -1)"
say "  $(grep -o 'resume: .*' /tmp/guard.txt | head -1)"
RESUMED=$(sed -n 's/.*resumed_at=\([0-9.]*\).*/\1/p' /tmp/guard.txt)
# A resumed guest that crashed and was restarted by xl starts counting from
# zero again: the client sees its values go back. Said, and the demo fails.
if CHECK=$(client_check "$RESUMED"); then
    say "  $CHECK"
else
    echo "$CHECK" | sed 's/^/demo:   /'
    fail "the client's view of the failover: $(echo "$CHECK" | head -1)"
fi
