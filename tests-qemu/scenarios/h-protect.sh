#!/bin/sh
# lab: hosts=1 timeout=600 test=yes
# Protection (issue 5, without output commit yet): the test guest is
# protected to the appliance on the same host for 30 epochs while its
# workload mutates memory; its self-check still passes; at the end, with the
# guest held at a suspend point, the appliance's committed image equals the
# guest's memory byte for byte.
. /lab/lib.sh
KEY=5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17
APP_IP=10.99.0.50
GUEST_IP=10.99.0.101
resilire-shim appliance start --name app --memory 320 --ip $APP_IP/24 --port 7780 --budget 256 \
    --key testvm=$KEY --wait 90 || { dump_guest app; fail "appliance start"; }
xl create "$(guest_config testvm $GUEST_IP 128 32)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="
wait_for 30 "ping of the appliance" ping -c 1 -W 1 $APP_IP

{ timeout 300 resilire-shim protect testvm --backup $APP_IP:7780 --key $KEY --interval 200 --epochs 30 --final-check 2>&1
  echo $? > /tmp/protect.rc; } | tee /tmp/protect.txt
rc=$(cat /tmp/protect.rc)
[ "$rc" = 0 ] || { dump_guest app; fail "protect (exit $rc)"; }
resilire-shim status
show "$(grep '^protect: synchronised' /tmp/protect.txt)"
show "$(grep '^protect: summary' /tmp/protect.txt)"
show "$(grep '^protect: final check' /tmp/protect.txt)"
grep -q '^protect: final check: .* equals' /tmp/protect.txt || fail "no final byte-for-byte check"

wait_for 30 "the guest to answer after protection" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "guest self-check after protection: $reply" ;; esac
show "guest after protection: $reply; $(workload_cmd $GUEST_IP gaps)"
D=$(xl domid app)
for k in state committed_epoch epochs_committed bytes_received; do
    echo "appliance status vms/testvm/$k = $(xenstore-read /local/domain/$D/resilire/status/vms/testvm/$k)"
done
