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
# The VM is configured as "web1"; its wire id is the receiver's
# vm_id_of("web1") (first 8 bytes, LE, of SHA-256("resilire/1 vm-id\0web1")).
VM=web1
VM_ID=6508331956028178723
# two more primaries, connected at the same time later on
VM2=app1
VM2_ID=2270220723992231696
VM3=db1
VM3_ID=5095550562600875837

start_appliance app $APP_IP 128 96 $VM=$KEY $VM2=$KEY $VM3=$KEY
D=$APP_DOMID
S=$APP_STATUS
xenstore-ls /local/domain/$D/device/vif/0 | grep -E "state|ring-ref|event-channel|request-rx-copy"
ping -c 10 -i 0.2 $APP_IP > /tmp/ping.txt 2>&1 || { cat /tmp/ping.txt; dump_guest app; fail "ping lost packets"; }
cat /tmp/ping.txt
show "ping: $(tail -1 /tmp/ping.txt)"
ping -c 3 -s 1400 $APP_IP > /tmp/ping-big.txt 2>&1 || { cat /tmp/ping-big.txt; fail "1400-byte ping"; }
show "1400-byte ping: $(tail -1 /tmp/ping-big.txt)"

# dom0 ships the redis capture set (8 epochs of a 16 MiB window) and reads
# it back through the protocol.
mkdir -p /tmp/set
resilire-capture unpack /lab/captures/redis /tmp/set > /dev/null || fail "unpack"
ls /tmp/set | head -3
last=$(ls /tmp/set/*.raw | tail -1)
resilire-shim send-images /tmp/set --to $APP_IP:7780 --vm-id $VM_ID --key $KEY --verify-read > /tmp/ship.txt 2>&1
rc=$?
cat /tmp/ship.txt
[ $rc -eq 0 ] || { dump_guest app; fail "send-images"; }
show "$(grep -E '^send-images: committed' /tmp/ship.txt | head -1)"
show "$(grep -iE 'verif|read back' /tmp/ship.txt | tail -1)"

# Per-VM status and the page directory, then the image read by foreign
# mapping equals the last image shipped.
V=$S/vms/$VM
wait_for 10 "status of $VM" sh -c "[ -n \"\$(xenstore-read $V/pagedir 2>/dev/null)\" ]"
for k in state committed_epoch epochs_committed bytes_received last_heard_ms pages; do
    echo "status/vms/$VM/$k = $(xenstore-read $V/$k 2>/dev/null)"
done
show "status: $VM $(xenstore-read $V/state) epoch $(xenstore-read $V/committed_epoch), $(xenstore-read $V/pages) pages, $(xenstore-read $V/bytes_received) bytes received"
resilire-shim read-image --appliance app --vm $VM --out /tmp/readback.raw --compare "$last" > /tmp/read.txt 2>&1
rc=$?
cat /tmp/read.txt
[ $rc -eq 0 ] || { dump_guest app; fail "read-image (foreign mapping of the page directory)"; }
cmp /tmp/readback.raw "$last" || fail "image read by foreign mapping differs from $last"
show "foreign-mapped image equals $(basename "$last") byte for byte"

dump_guest app
