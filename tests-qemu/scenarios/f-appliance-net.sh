#!/bin/sh
# lab: hosts=1 timeout=300 test=yes
# Scenario (issue 4): the appliance on dom0's bridge. netfront connects to
# netback, smoltcp answers ping for the configured address, and dom0 ships
# a multi-epoch image sequence to the appliance's TCP port, reads it back
# through the protocol and (by foreign mapping of the published page
# directory) out of the appliance's memory.
. /lab/lib.sh
KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
APP_IP=10.99.0.50
VM=7

resilire-shim appliance start --name app --memory 128 --ip $APP_IP/24 --gateway none --port 7780 \
    --budget 64 --key $VM=$KEY --wait 60 > /tmp/app-start.txt 2>&1 || { cat /tmp/app-start.txt; dump_guest app; fail "appliance start"; }
cat /tmp/app-start.txt
D=$(xl domid app)
S=/local/domain/$D/resilire/status

wait_guest_line 30 app "netfront: connected" || true
grep "netfront: connected" "$(guest_log app)" | head -1
xenstore-ls /local/domain/$D/device/vif/0 | grep -E "state|ring-ref|event-channel|request-rx-copy"
wait_for 30 "ping reply from the appliance" ping -c 1 -W 1 $APP_IP || { dump_guest app; fail "no ping reply"; }
ping -c 10 -i 0.2 $APP_IP > /tmp/ping.txt 2>&1 || { cat /tmp/ping.txt; dump_guest app; fail "ping lost packets"; }
cat /tmp/ping.txt
show "ping: $(tail -1 /tmp/ping.txt)"
ping -c 3 -s 1400 $APP_IP > /tmp/ping-big.txt 2>&1 || { cat /tmp/ping-big.txt; fail "1400-byte ping"; }
show "1400-byte ping: $(tail -1 /tmp/ping-big.txt)"
dump_guest app
