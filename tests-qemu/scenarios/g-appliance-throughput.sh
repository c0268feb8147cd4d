#!/bin/sh
# lab: hosts=2 timeout=300 test=yes
# Benchmark (issue 4): sustained receive-and-commit throughput into the
# appliance on host 1, from host 0's dom0, as a ratio to plain TCP from host
# 0's dom0 to host 1's dom0 over the same lab network, in the same run.
#
# The appliance's figure comes from `probe-appliance throughput`: epochs are
# encoded and sealed before the clock starts (dom0's encoder is not what is
# measured), then sent back to back; the clock stops at the last epoch's ACK,
# i.e. when the appliance has received, authenticated, decoded and committed
# everything. Same shape as `net-blast` (data ready, clock stops at the far
# end's confirmation). Data: 2 full epochs of random pages (16 MiB each,
# incompressible, the heaviest case per byte on the wire), then the redis
# capture set (real memory, 8 epochs) as a second figure.
#
# The lab network echoes every host's frames back to it (QEMU multicast):
# bridge_ignore_echo keeps host 1's bridge from learning the appliance's MAC
# on eth0, which made it drop all unicast from host 0 to the appliance (the
# hang this scenario had before).
. /lab/lib.sh
KEY=8f3c2a1b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8
APP_IP=10.99.0.60
step() { echo "host$LAB_HOST: [$(now)s] $*"; }
bridge_ignore_echo
if [ "$LAB_HOST" -eq 1 ]; then
    resilire-shim net-sink --port 7790 > /tmp/sink.log 2>&1 &
    resilire-shim appliance start --name app --memory 256 --ip $APP_IP/24 --gateway none --port 7780 --budget 160 \
        --key tput=$KEY --wait 90 > /tmp/app.txt 2>&1 || { cat /tmp/app.txt; dump_guest app; fail "appliance start"; }
    step "sink and appliance ready"
    # The appliance's console goes to this host's log; stay up, the run ends
    # at host 0's PASS or FAIL.
    tail -f "$(guest_log app)" &
    while sleep 60; do step "up"; done
fi
peer=$(host_ip 1)
wait_for 120 "host 1's dom0" ping -c 1 -W 1 $peer
step "host 1's dom0 answers"
# Test data while host 1 starts its appliance.
mkdir -p /tmp/rnd /tmp/set
for i in 1 2; do head -c 16777216 /dev/urandom > /tmp/rnd/$i.raw; done
resilire-capture unpack /lab/captures/redis /tmp/set > /dev/null 2>&1 || fail "unpack"
step "test data ready"
ok=
for i in $(seq 1 30); do
    timeout 20 resilire-shim net-blast --to $peer:7790 --mib 1 > /dev/null 2>&1 && { ok=1; break; }
    sleep 2
done
[ -n "$ok" ] || fail "host 1's net-sink never answered"
ok=
for i in $(seq 1 90); do
    ping -c 1 -W 1 $APP_IP > /dev/null 2>&1 && { ok=1; break; }
done
[ -n "$ok" ] || fail "the appliance on host 1 never answered ping"
step "sink and appliance reachable"

blast() { timeout 120 resilire-shim net-blast --to $peer:7790 --mib 16 | tee -a /tmp/base.txt; }
blast || fail "net-blast"
timeout 180 resilire-shim probe-appliance throughput --to $APP_IP:7780 --vm tput --key $KEY --pages 4096 \
    /tmp/rnd/1.raw /tmp/rnd/2.raw > /tmp/rnd.txt 2>&1
rc=$?; cat /tmp/rnd.txt; [ $rc -eq 0 ] || fail "throughput probe (random pages)"
blast || fail "net-blast (second)"
timeout 180 resilire-shim probe-appliance throughput --to $APP_IP:7780 --vm tput --key $KEY --pages 4096 \
    $(ls /tmp/set/*.raw) > /tmp/redis.txt 2>&1
rc=$?; cat /tmp/redis.txt; [ $rc -eq 0 ] || fail "throughput probe (redis)"

base=$(awk '/^net-blast/ { s += $(NF-1); n++ } END { printf "%.1f", s / n }' /tmp/base.txt)
rate() { awk '/^probe: throughput/ { for (i = 1; i <= NF; i++) if ($i == "MiB/s") { print $(i-1); exit } }' "$1"; }
app=$(rate /tmp/rnd.txt)
redis=$(rate /tmp/redis.txt)
redis_dirty=$(awk '/^probe: throughput/ { gsub(/[(]/, ""); for (i = 1; i <= NF; i++) if ($i == "MiB/s") r = $(i-1); print r }' /tmp/redis.txt)
show "throughput: appliance $app MiB/s, dom0->dom0 $base MiB/s, ratio $(awk -v a="$app" -v b="$base" 'BEGIN { printf "%.2f", a / b }') (random pages, full 16 MiB epochs; dom0 TCP: mean of $(grep -c '^net-blast' /tmp/base.txt) x 16 MiB before and after)"
show "redis capture (8 epochs): $redis MiB/s on the wire, $redis_dirty MiB/s of dirty pages; ratio on the wire $(awk -v a="$redis" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
sleep 3
