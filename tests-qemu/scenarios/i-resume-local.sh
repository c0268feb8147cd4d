#!/bin/sh
# lab: hosts=1 timeout=900 test=yes
# Resume (issue 6) on one host. The test guest is protected to the local
# appliance, then destroyed as if its host had died, and brought back by
# `resilire-shim resume` from the appliance's last committed epoch: its
# self-check passes and its counter continues from that epoch. Before any
# epoch is committed, resume refuses clearly. Benchmark in the same run:
# resume with the hot set first and in frame order, against `xl save` +
# `xl restore` of the same guest from a file in dom0's RAM.
. /lab/lib.sh
KEY=$FO_KEY
APP_IP=$FO_APP_IP
GUEST_IP=$FO_GUEST_IP
start_appliance app $APP_IP 320 256 testvm=$KEY
xl create "$(guest_config testvm $GUEST_IP 128 32)" || fail "xl create"
wait_guest_line 120 testvm "workload: counter="

out=$(resilire-shim resume testvm --appliance app 2>&1) && fail "resume with nothing committed succeeded: $out"
echo "$out" | grep -q "holds no committed epoch" || fail "resume without an epoch: unclear refusal: $out"
show "resume before any epoch refuses: ${out#resilire-shim: error: }"

timeout 300 resilire-shim protect testvm --backup $APP_IP:7780 --key $KEY --interval 200 --epochs 10 \
    > /tmp/protect.txt 2>&1 || { cat /tmp/protect.txt; dump_guest app; fail "protect"; }
grep '^protect: summary' /tmp/protect.txt
D=$(xl domid app)
EPOCH=$(xenstore-read /local/domain/$D/resilire/status/vms/testvm/committed_epoch)

# progress_lines: how many progress lines the guest has printed so far.
progress_lines() { grep -c "workload: counter=" "$(guest_log testvm)"; }

# resume_once <order>: destroys the guest, resumes it, and prints
# "<resume line>|<seconds from resume start to the guest's next progress line>".
resume_once() {
    xl destroy testvm || fail "xl destroy"
    before=$(progress_lines)
    t0=$(now)
    resilire-shim resume testvm --appliance app --order "$1" > /tmp/resume.txt 2>&1 \
        || { cat /tmp/resume.txt; fail "resume ($1)"; }
    wait_for 60 "progress after resume ($1)" sh -c "[ \$(grep -c 'workload: counter=' $(guest_log testvm)) -gt $before ]"
    t1=$(now)
    echo "$(cat /tmp/resume.txt)|$(elapsed "$t0" "$t1")"
}

r=$(resume_once hot)
show "hot first: ${r%|*}; first progress after $(echo "$r" | cut -d'|' -f2) s"
wait_for 60 "the resumed guest to answer" workload_cmd $GUEST_IP counter
reply=$(workload_cmd $GUEST_IP verify)
case "$reply" in "verify ok"*) ;; *) dump_guest testvm; fail "self-check after resume: $reply" ;; esac
show "resumed guest (epoch $EPOCH): $reply"

r=$(resume_once pfn)
show "frame order: ${r%|*}; first progress after $(echo "$r" | cut -d'|' -f2) s"
wait_for 60 "the resumed guest to answer" workload_cmd $GUEST_IP counter

# Baseline: Xen's own save and restore, the file in RAM (dom0's rootfs).
xl save testvm /tmp/testvm.save > /tmp/save.txt 2>&1 || { cat /tmp/save.txt; fail "xl save"; }
before=$(progress_lines)
t0=$(now)
xl restore /tmp/testvm.save > /tmp/restore.txt 2>&1 || { cat /tmp/restore.txt; fail "xl restore"; }
t1=$(now)
wait_for 60 "progress after xl restore" sh -c "[ \$(grep -c 'workload: counter=' $(guest_log testvm)) -gt $before ]"
t2=$(now)
show "xl restore baseline: $(stat -c %s /tmp/testvm.save) bytes from RAM, restore+unpause $(elapsed "$t0" "$t1") s; first progress after $(elapsed "$t0" "$t2") s"
wait_for 60 "the guest to answer after xl restore" workload_cmd $GUEST_IP counter
