#!/bin/sh
# lab: hosts=1 timeout=420 test=yes
# Scenario (issue 4, part 3): what the appliance refuses, and that refusing
# never costs another VM its image.
#  - two VMs committed (web1: the redis set, app1: the pgbench set);
#  - a connection cut in the middle of an epoch: the previous epoch stays,
#    and a reconnect resumes from it (WELCOME) and commits after it;
#  - forged (wrong key, bad tag), replayed (same frame twice, a recorded
#    connection) and malformed (garbage, bad magic, unknown kind) frames:
#    ERROR where the protocol allows, connection closed, console line, counted
#    in status/frames_refused;
#  - a VM too large for the store (ERROR 3, NO_MEMORY) and a connection
#    beyond the heap set aside for connections (ERROR 3): refused, no panic;
#  - then web1 and app1 read back by foreign mapping, byte for byte.
. /lab/lib.sh
KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
APP_IP=10.99.0.50
start_appliance app $APP_IP 128 96 web1=$KEY app1=$KEY big=$KEY \
    h1=$KEY h2=$KEY h3=$KEY h4=$KEY h5=$KEY h6=$KEY
S=$APP_STATUS
LOG=$(guest_log app)
t0=$(now)

mkdir -p /tmp/set1 /tmp/set2
resilire-capture unpack /lab/captures/redis /tmp/set1 > /dev/null || fail "unpack redis"
resilire-capture unpack /lab/captures/pgbench /tmp/set2 > /dev/null || fail "unpack pgbench"
last1=$(ls /tmp/set1/*.raw | tail -1)
first1=$(ls /tmp/set1/*.raw | head -1)
last2=$(ls /tmp/set2/*.raw | tail -1)
ship() { # ship <dir> <vm> <log>
    timeout 150 resilire-shim send-images "$1" --to $APP_IP:7780 --vm "$2" --key $KEY > "$3" 2>&1
    _rc=$?; cat "$3"; [ $_rc -eq 0 ] || { dump_guest app; fail "send-images $2"; }
}
ship /tmp/set1 web1 /tmp/ship1.txt
ship /tmp/set2 app1 /tmp/ship2.txt
E1=$(xenstore-read $S/vms/web1/committed_epoch)
PAGES=$(xenstore-read $S/vms/web1/pages)
show "committed: web1 epoch $E1 ($PAGES pages), app1 epoch $(xenstore-read $S/vms/app1/committed_epoch)"

probe() { resilire-shim probe-appliance "$@" --to $APP_IP:7780 --key $KEY; }

# 1. A connection cut in the middle of an epoch.
probe cut --vm web1 --pages "$PAGES" --image "$first1" --chunks 3 || { dump_guest app; fail "probe cut"; }
for i in $(seq 1 40); do grep -q "closed during epoch $((E1 + 1))" "$LOG" && break; sleep 0.5; done
grep "closed during epoch $((E1 + 1))" "$LOG" || { dump_guest app; fail "the appliance did not report the cut"; }
resilire-shim read-image --appliance app --vm web1 --out /tmp/rb1.raw --compare "$last1" || { dump_guest app; fail "web1 after the cut"; }
[ "$(xenstore-read $S/vms/web1/committed_epoch)" = "$E1" ] || fail "committed epoch moved after the cut"
show "cut during epoch $((E1 + 1)): web1 still epoch $E1, equal to $(basename "$last1"); last_error: $(xenstore-read $S/vms/web1/last_error)"
ship /tmp/set1 web1 /tmp/ship1b.txt
grep -q "appliance holds epoch Some($E1)" /tmp/ship1b.txt || fail "the reconnect did not resume from epoch $E1"
E1b=$(xenstore-read $S/vms/web1/committed_epoch)
resilire-shim read-image --appliance app --vm web1 --out /tmp/rb1.raw --compare "$last1" || fail "web1 after the resume"
show "reconnect: WELCOME said epoch $E1, committed up to epoch $E1b, image equal"

# 2. Forged, replayed, malformed frames.
before=$(xenstore-read $S/frames_refused)
for p in forged replayed malformed; do
    probe $p --vm web1 --pages "$PAGES" > /tmp/probe-$p.txt 2>&1
    rc=$?; cat /tmp/probe-$p.txt
    [ $rc -eq 0 ] || { dump_guest app; fail "probe $p"; }
done
wait_for 10 "status/frames_refused" sh -c "[ \$(xenstore-read $S/frames_refused) -ge $((before + 7)) ]"
grep "frame refused" "$LOG" | tail -7
show "refused: $(grep -c '^probe:' /tmp/probe-forged.txt) forged, $(grep -c '^probe:' /tmp/probe-replayed.txt) replayed, $(grep -c '^probe:' /tmp/probe-malformed.txt) malformed; status/frames_refused $(xenstore-read $S/frames_refused), console: $(grep -c 'frame refused' "$LOG") lines"
[ "$(xenstore-read $S/vms/web1/committed_epoch)" = "$E1b" ] || fail "a refused frame moved web1's epoch"

# 3. Memory: a VM that does not fit the store; a connection beyond the heap.
probe too-big --vm big --pages 65536 > /tmp/probe-big.txt 2>&1 || { cat /tmp/probe-big.txt; dump_guest app; fail "probe too-big"; }
cat /tmp/probe-big.txt
show "$(grep '^probe:' /tmp/probe-big.txt | cut -c8-)"
# Six fresh VMs (1 MiB each) connect and stay: the heap set aside for
# connections (status/heap_kib minus the store's metadata, see the console's
# "receiver: heap" line) admits a few; the next HELLO is refused with ERROR 3.
probe hold --vm h1,h2,h3,h4,h5,h6 --pages 256 --hold 1 > /tmp/hold.txt 2>&1 || { cat /tmp/hold.txt; dump_guest app; fail "probe hold"; }
cat /tmp/hold.txt
grep -q "refused: ERROR 3 'no memory for another connection" /tmp/hold.txt || { dump_guest app; fail "no connection was refused for lack of heap"; }
show "heap: $(grep -c admitted /tmp/hold.txt) connections admitted at once, then $(grep 'refused: ERROR 3' /tmp/hold.txt | head -1 | cut -c8-)"
grep -q "PANIC" "$LOG" && { dump_guest app; fail "appliance panicked"; }
grep "refused (ERROR 3)" "$LOG" | tail -2
show "status: frames_refused $(xenstore-read $S/frames_refused), requests_refused $(xenstore-read $S/requests_refused), no_memory_refusals $(xenstore-read $S/no_memory_refusals), heap $(xenstore-read $S/heap_free_kib)/$(xenstore-read $S/heap_kib) KiB free"

# 4. The others are intact, byte for byte.
resilire-shim read-image --appliance app --vm web1 --out /tmp/rb1.raw --compare "$last1" || { dump_guest app; fail "web1 after the refusals"; }
resilire-shim read-image --appliance app --vm app1 --out /tmp/rb2.raw --compare "$last2" || { dump_guest app; fail "app1 after the refusals"; }
[ "$(xenstore-read $S/state)" = ready ] || fail "appliance not ready: $(xenstore-read $S/state)"
show "web1 and app1 read back by foreign mapping after the refusals: equal; appliance still ready ($(elapsed "$t0" "$(now)")s)"
dump_guest app
