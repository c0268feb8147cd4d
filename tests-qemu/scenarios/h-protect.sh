#!/bin/sh
# lab: hosts=1 timeout=600 test=yes
# Protection (issue 5, primary side): the test guest is protected to the
# appliance on the same host while its workload mutates memory, with output
# commit on. Replies of the guest's TCP service flow (each waits for its
# epoch's ACK); with the appliance paused (no ACK can come) a reply is held
# in dom0 and only arrives once the appliance runs again. protect stops on
# SIGTERM: a last epoch is shipped with the guest held at its suspend point
# and the appliance's committed image equals the guest's memory byte for
# byte; output commit is torn down; the guest's self-check still passes.
. /lab/lib.sh
KEY=5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17
APP_IP=10.99.0.50
GUEST_IP=10.99.0.101
HOLD=${HOLD:-1.7}
# (busybox sh runs its own applets first: iproute2's tc by its path)
TC=/usr/bin/tc
resilire-shim appliance start --name app --memory 320 --ip $APP_IP/24 --port 7780 --budget 256 \
    --key testvm=$KEY --wait 90 || { dump_guest app; fail "appliance start"; }
xl create "$(guest_config testvm $GUEST_IP 128 32)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="
wait_for 30 "ping of the appliance" ping -c 1 -W 1 $APP_IP
DOMID=$(xl domid testvm)

resilire-shim protect testvm --backup $APP_IP:7780 --key $KEY --interval 200 --final-check \
    > /tmp/protect.txt 2>&1 &
PROTECT=$!
stop_protect() { kill -TERM $PROTECT 2>/dev/null; wait $PROTECT; }
# Fails with protect's output and the plug's counters.
die() {
    echo "---- protect ----"; cat /tmp/protect.txt; echo "---- end ----"
    $TC -s qdisc show dev rslifb$DOMID; $TC -s filter show dev vif$DOMID.0 ingress
    stop_protect; fail "$*"
}
# Synchronised, or protect is gone (then its output says why).
# (A guest that triple-faults under TCG is restarted by xl as a new domain.)
synced_or_gone() {
    grep -q '^protect: synchronised' /tmp/protect.txt || ! kill -0 $PROTECT 2>/dev/null ||
        [ "$(xl domid testvm 2>/dev/null)" != "$DOMID" ]
}
wait_for 180 "protect to synchronise" synced_or_gone
grep -q '^protect: synchronised' /tmp/protect.txt ||
    { dump_guest testvm; die "protect did not synchronise"; }
grep -q "^protect: output commit on: vif$DOMID.0 -> rslifb$DOMID" /tmp/protect.txt ||
    die "output commit not set up"
$TC qdisc show dev rslifb$DOMID | grep -q plug || die "no plug qdisc on rslifb$DOMID"

# Replies flow with output commit on (after the 1-3 s of lost packets that
# follow the first suspend-cancels).
wait_for 30 "the guest to answer while protected" workload_cmd $GUEST_IP counter
t0=$(now)
for i in 1 2 3 4 5; do
    workload_cmd $GUEST_IP counter | grep -q '^counter ' || die "request $i while protected: no reply"
done
t1=$(now)
show "output commit on: 5 requests answered in $(elapsed "$t0" "$t1")s (each reply waits for its epoch's ACK)"

# One connection kept open; the first request proves it works.
rm -f /tmp/req /tmp/replies; mkfifo /tmp/req
nc $GUEST_IP 7000 < /tmp/req > /tmp/replies &
NC=$!
exec 3> /tmp/req
echo counter >&3
wait_lines /tmp/replies 1 20 || die "no reply on the kept connection"

# Hold the ACKs: the appliance is paused right after an ACK (so that its
# own dead-primary timeout, 5 s without a frame, is far), the next epoch
# cannot commit. A reply produced now must wait for it.
n=$(grep -c '^protect: epoch' /tmp/protect.txt)
wait_lines_matching() { [ "$(grep -c '^protect: epoch' /tmp/protect.txt)" -gt "$n" ]; }
wait_for 30 "an epoch's ACK" wait_lines_matching
xl pause app || die "xl pause app"
t_pause=$(now)
before=$(wc -l < /tmp/protect.txt)
echo "appliance paused after: $(grep '^protect: epoch' /tmp/protect.txt | tail -1)"
sleep 0.3
t_req=$(now)
echo counter >&3
sleep $HOLD
held=$(wc -l < /tmp/replies)
t_unpause=$(now)
xl unpause app
$TC -s qdisc show dev rslifb$DOMID
if [ "$held" -ne 1 ]; then
    cat /tmp/replies
    die "a reply arrived while its epoch's ACK was held ($held lines after ${HOLD}s)"
fi
wait_lines /tmp/replies 2 9 || die "the held reply never arrived after the ACK was released"
t_reply=$(now)
exec 3>&-
kill $NC 2>/dev/null
# The release must have come from the held epoch's ACK, not from protect
# giving up on the backup (which releases everything).
after_hold() { tail -n +$((before + 1)) /tmp/protect.txt | grep -q "^protect: epoch \|$1"; }
wait_for 20 "an epoch committed after the hold" after_hold 'backup lost\|NOT PROTECTED'
tail -n +$((before + 1)) /tmp/protect.txt | grep -q 'backup lost\|NOT PROTECTED' && die "protect lost the backup during the hold (the reply may have been released by that)"
show "held reply: appliance paused at -$(elapsed "$t_pause" "$t_req")s, request at +0.0s, no reply while paused (checked at +$(elapsed "$t_req" "$t_unpause")s), unpaused at +$(elapsed "$t_req" "$t_unpause")s, reply at +$(elapsed "$t_req" "$t_reply")s ($(elapsed "$t_unpause" "$t_reply")s after the unpause); no epoch lost"
resilire-shim status
show "status: $(resilire-shim status | tail -1)"

stop_protect
rc=$?
cat /tmp/protect.txt
[ "$rc" = 0 ] || { dump_guest app; fail "protect (exit $rc)"; }
show "$(grep '^protect: synchronised' /tmp/protect.txt)"
show "$(grep '^protect: summary' /tmp/protect.txt)"
show "$(grep '^protect: final check' /tmp/protect.txt)"
grep -q '^protect: final check: .* equals' /tmp/protect.txt || fail "no final byte-for-byte check"
[ -e /sys/class/net/rslifb$DOMID ] && fail "output commit left rslifb$DOMID behind"
$TC qdisc show dev vif$DOMID.0 | grep -q ingress && fail "output commit left the ingress redirect on vif$DOMID.0"
resilire-shim status | grep -q ' stopped$' || fail "status does not say stopped"
echo "epoch log: $(wc -l < /var/log/resilire/protect-testvm.log) lines"; tail -2 /var/log/resilire/protect-testvm.log

wait_for 30 "the guest to answer after protection" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "guest self-check after protection: $reply" ;; esac
show "guest after protection: $reply; $(workload_cmd $GUEST_IP gaps)"
D=$(xl domid app)
for k in state committed_epoch epochs_committed bytes_received; do
    echo "appliance status vms/testvm/$k = $(xenstore-read /local/domain/$D/resilire/status/vms/testvm/$k)"
done
