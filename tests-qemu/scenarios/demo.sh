#!/bin/sh
# lab: hosts=1 timeout=300 test=no
# The demo: one lab host boots Xen, starts the test guest and shows its
# dirty-page rate live, as the shim reads it through log-dirty.
. /lab/lib.sh
GUEST_IP=10.99.0.101
echo "demo: booting the PVH test guest (64 MiB workload) on Xen $(xl info | awk '/^xen_version/ {print $3}')"
xl create "$(guest_config testvm $GUEST_IP 192 64)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="
echo "demo: guest says: $(workload_cmd $GUEST_IP verify)"
echo "demo: dirty pages of the running guest, every second (log-dirty, read by resilire-shim):"
resilire-shim dirty testvm --interval-ms 1000 --count 10 || fail "shim dirty"
echo "demo: the guest's own progress meanwhile:"
tail -3 "$(guest_log testvm)"
echo "demo: guest says: $(workload_cmd $GUEST_IP verify)"
xl destroy testvm
