# Helpers for scenarios (sourced; busybox sh). A scenario fails by calling
# `fail`, which prints the lab's FAIL marker; it passes by returning 0.

# Prints a line the lab shows on the terminal.
show() { echo "LAB: SHOW $*"; }

# Ends the scenario with a failure and the reason.
fail() { echo "LAB: FAIL $*"; exit 1; }

# Asks the lab to kill host $1's QEMU process outright.
kill_host() { echo "LAB: KILL-HOST $1"; }

# The lab address of host $1 (dom0 on the bridge).
host_ip() { echo "10.99.0.$(($1 + 1))"; }

# wait_for <seconds> <description> <command...>: polls the command each
# half second until it succeeds, or fails the scenario.
wait_for() {
    _limit=$1; _what=$2; shift 2
    _n=0
    while ! "$@" >/dev/null 2>&1; do
        _n=$((_n + 1))
        [ $_n -ge $((_limit * 2)) ] && fail "timed out after ${_limit}s waiting for $_what"
        sleep 0.5
    done
}

# Seconds since boot with centiseconds, for wall-time figures.
now() { cut -d' ' -f1 /proc/uptime; }

# Wall seconds between two `now` readings.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# guest_config <name> <ip> <mem MiB> <workload MiB> [mac suffix]: writes an
# xl config for the PVH test guest and prints its path.
guest_config() {
    _cfg=/tmp/$1.cfg
    cat > "$_cfg" <<CFG
name = "$1"
type = "pvh"
kernel = "/lab/guest/vmlinuz"
ramdisk = "/lab/guest/initrd"
extra = "console=hvc0 loglevel=4 lab.ip=$2/24 lab.mem=$4"
memory = $3
vcpus = 1
vif = [ "bridge=xenbr0,mac=00:16:3e:00:$(printf %02x "$LAB_HOST"):${5:-10}" ]
on_crash = "preserve"
CFG
    echo "$_cfg"
}

# The console log of guest $1 (xenconsoled writes it).
guest_log() { echo "/var/log/xen/console/guest-$1.log"; }

# Dumps a guest's console to dom0's console (for the serial log of a run).
dump_guest() { echo "---- console of $1 ----"; cat "$(guest_log "$1")" 2>/dev/null; echo "---- end ----"; }

# wait_guest_line <seconds> <guest> <pattern>
wait_guest_line() { wait_for "$1" "'$3' on $2's console" grep -q "$3" "$(guest_log "$2")"; }

# workload_cmd <ip> <command>: one request to the guest's workload server.
workload_cmd() { echo "$2" | nc -w 30 "$1" 7000; }


# ---- failover (two hosts: host 0 the primary, host 1 the backup) ----
FO_KEY=5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17c0ffee5a17
FO_APP_IP=10.99.0.50
FO_GUEST_IP=10.99.0.101

# failover_backup_start: host 1 starts the appliance and the guard (log in
# /tmp/guard.txt), which resumes the guest here when the primary dies.
failover_backup_start() {
    bridge_ignore_echo
    trap 'echo "---- guard ----"; cat /tmp/guard.txt; echo "---- client (last lines) ----"; tail -n 5 /tmp/client.txt; dump_guest app | tail -n 40' EXIT
    start_appliance app $FO_APP_IP 320 256 testvm=$FO_KEY
    resilire-shim guard --appliance app --missed 5 --primary "$(host_ip 0)" --once > /tmp/guard.txt 2>&1 &
}

# failover_primary_start: host 0 starts the guest and protects it to host
# 1's appliance in the background (log in /tmp/protect.txt).
failover_primary_start() {
    bridge_ignore_echo
    trap 'echo "---- protect ----"; tail -n 30 /tmp/protect.txt' EXIT
    wait_for 120 "the backup's appliance" ping -c 1 -W 1 $FO_APP_IP
    xl create "$(guest_config testvm $FO_GUEST_IP 128 32)" || fail "xl create"
    wait_guest_line 120 testvm "workload: counter="
    resilire-shim protect testvm --backup $FO_APP_IP:7780 --key $FO_KEY --interval 200 > /tmp/protect.txt 2>&1 &
}

# client_record: a TCP client of the guest, asking for its counter ten
# times a second over short connections (a connection of the old primary
# can hang forever after a failover); every value it receives goes to
# /tmp/client.txt with this host's uptime.
client_record() {
    # A patient client: under output commit a reply waits for its epoch's
    # ACK, and the lab's epochs take seconds when the guest dirties tens of
    # MB per epoch; a 2 s timeout gave up on every request while protected.
    while true; do
        v=$(echo counter | nc -w 10 $FO_GUEST_IP 7000 2>/dev/null | awk '$1 == "counter" { print $2 }')
        [ -n "$v" ] && echo "$(now) $v"
        sleep 0.1
    done > /tmp/client.txt
}

# client_check <resumed_at>: the client's values never went back (nothing it
# saw was lost by the failover) and some arrived after <resumed_at>; prints
# the silence around the resume (the downtime the client saw: kill,
# detection, resume, first reply) and the longest silence (often the
# initial synchronisation, while output commit holds every reply).
client_check() {
    awk -v r="$1" '
        NR > 1 && $2 < last { print "went back from " last " to " $2 " at " $1; bad = 1 }
        NR > 1 && $1 - t > gap { gap = $1 - t; at = t }
        NR > 1 && t <= r && $1 > r { across = $1 - t }
        $1 > r { after++ }
        { last = $2; t = $1 }
        END {
            printf "client: %d values (%d after the resume), last %d, silence across the failover %.2f s, longest silence %.2f s (from %.2f)\n", NR, after, last, across, gap, at
            if (after == 0) { print "no value after the resume"; bad = 1 }
            exit bad
        }' /tmp/client.txt
}

# die_now: host 0 has the lab kill its QEMU outright and waits for the end.
die_now() {
    show "host 0: killed at $(now) s ($1)"
    kill_host 0
    sleep 600
}

# start_appliance <name> <ip> <memory MiB> <budget MiB> <vm=key>...: starts
# the appliance domain on xenbr0 (gateway none, TCP port 7780) with those VM
# keys, waits for its netfront and a ping reply. Sets APP_DOMID and
# APP_STATUS (its xenstore status directory).
start_appliance() {
    _name=$1; _ip=$2; _mem=$3; _budget=$4; shift 4
    _keys=""
    for _k in "$@"; do _keys="$_keys --key $_k"; done
    # shellcheck disable=SC2086
    resilire-shim appliance start --name "$_name" --memory "$_mem" --ip "$_ip/24" --gateway none --port 7780 \
        --budget "$_budget" $_keys --wait 60 > "/tmp/$_name-start.txt" 2>&1 \
        || { cat "/tmp/$_name-start.txt"; dump_guest "$_name"; fail "appliance start"; }
    cat "/tmp/$_name-start.txt"
    APP_DOMID=$(xl domid "$_name")
    APP_STATUS=/local/domain/$APP_DOMID/resilire/status
    wait_guest_line 30 "$_name" "netfront: connected"
    grep "netfront: connected" "$(guest_log "$_name")" | head -1
    wait_for 30 "ping reply from the appliance" ping -c 1 -W 1 "$_ip" || { dump_guest "$_name"; fail "no ping reply from $_ip"; }
}

# Lab hosts share one QEMU multicast segment, which hands every host its own
# frames back: a dom0 bridge would learn its local domains' MACs on eth0 and
# drop frames from other hosts to them. Learning off on eth0 keeps those MACs
# on their vifs (frames to other hosts' MACs are flooded instead).
bridge_ignore_echo() { echo 0 > /sys/class/net/eth0/brport/learning; }

# wait_lines <file> <n> <seconds>: polls every 0.1 s until the file has at
# least n lines; returns 1 on timeout (does not fail the scenario).
wait_lines() {
    _end=$(awk -v a="$(now)" -v s="$3" 'BEGIN { printf "%.2f", a + s }')
    while [ "$(wc -l < "$1" 2>/dev/null || echo 0)" -lt "$2" ]; do
        awk -v a="$(now)" -v e="$_end" 'BEGIN { exit !(a >= e) }' && return 1
        sleep 0.1
    done
    return 0
}

# pause_stats <threshold ms>: reads a workload `pauses` reply on stdin and
# prints "n=<k> median_ms=<m> p99_ms=<p> max_ms=<x>" over the gaps of at
# least the threshold (the guest's own view of checkpoint pauses).
pause_stats() {
    sed -n 's/.*ms=//p' | tr ',' '\n' | awk -v t="$1" '$1 != "" && $1 + 0 >= t + 0 { print $1 + 0 }' | sort -n |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "n=0 median_ms=- p99_ms=- max_ms=-"; exit }
            m = v[int((NR + 1) / 2)]; i = int(NR * 0.99 + 0.999); if (i < 1) i = 1; if (i > NR) i = NR
            printf "n=%d median_ms=%.1f p99_ms=%.1f max_ms=%.1f\n", NR, m, v[i], v[NR] }'
}

# try_for <seconds> <command...>: like wait_for, but returns 1 on timeout
# instead of failing the scenario.
try_for() {
    _limit=$1; shift
    _n=0
    while ! "$@" >/dev/null 2>&1; do
        _n=$((_n + 1))
        [ $_n -ge $((_limit * 2)) ] && return 1
        sleep 0.5
    done
    return 0
}

# The `wchar` of a process (bytes it passed to write calls), 0 if gone.
wchar_of() { awk '/^wchar:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/io" 2>/dev/null || echo 0; }
