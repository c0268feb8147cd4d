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

