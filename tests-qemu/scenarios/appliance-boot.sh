#!/bin/sh
# lab: hosts=1 timeout=240 test=yes
# Scenario: the appliance boots as a Xen PV domU (started by the shim), prints
# its banner, reads its configuration from xenstore and reports it in its
# status, reports a malformed or missing key as "misconfigured" and recovers
# when it is fixed, reports a capacity that matches the domain's memory,
# honours `xl reboot`, and ends cleanly on `xl shutdown`.
. /lab/lib.sh
KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
MEM=64

start_app() {
    resilire-shim appliance start --name app --memory $MEM --ip 10.99.0.50/24 --gateway 10.99.0.1 \
        --port 7780 --budget 32 --key vm-a=$KEY --key vm-b=$KEY --wait 60 > /tmp/app-start.txt 2>&1
    _rc=$?
    cat /tmp/app-start.txt
    [ $_rc -eq 0 ] || { dump_guest app; fail "resilire-shim appliance start"; }
}

t0=$(now)
start_app
t1=$(now)
D=$(xl domid app)
C=/local/domain/$D/resilire/config
S=/local/domain/$D/resilire/status
st() { xenstore-read "$S/$1" 2>/dev/null; }
state_is() { [ "$(xenstore-read "$S/state" 2>/dev/null)" = "$1" ]; }

wait_guest_line 10 app "Resilire appliance .* booting"
grep "Resilire appliance .* booting" "$(guest_log app)" | head -1
show "appliance ready in $(elapsed "$t0" "$t1")s wall (shim start to ready), boot_to_ready_ms=$(st boot_to_ready_ms)"
state_is ready || { dump_guest app; fail "state '$(st state)' reason '$(st reason)'"; }

# The configuration round-trips into the status.
for kv in ipv4-address=10.99.0.50 ipv4-prefix=24 ipv4-gateway=10.99.0.1 tcp-port=7780 \
          memory-budget-mib=32 log-level=info keys=vm-a,vm-b; do
    k=${kv%%=*}; v=${kv#*=}
    [ "$(st "$k")" = "$v" ] || fail "status/$k is '$(st "$k")', want '$v'"
done
xenstore-ls "$S" | grep -qi "$KEY" && fail "key material leaked into the status"
show "config round-trips into status: $(st ipv4-address)/$(st ipv4-prefix) port $(st tcp-port) keys $(st keys)"

# Capacity: mem_total_kib is the domain's memory as xl reports it.
xl_mib=$(xl list app | awk 'NR == 2 { print $3 }')
[ "$(st mem_total_kib)" = "$((xl_mib * 1024))" ] || fail "mem_total_kib $(st mem_total_kib) vs xl list $xl_mib MiB"
[ "$(st capacity_kib)" -gt $((32 * 1024)) ] || fail "capacity_kib $(st capacity_kib) below the 32 MiB budget"
show "memory: total $(st mem_total_kib) KiB (xl: $xl_mib MiB), used $(st mem_used_kib) KiB, storage capacity $(st capacity_kib) KiB"

# Only dom0 and the appliance may read the configuration.
xenstore-ls -p "$C" > /tmp/perms.txt 2>&1
grep -q "keys.*(n0,r$D)" /tmp/perms.txt || { cat /tmp/perms.txt; fail "config keys not restricted to dom0 and domain $D"; }

# A malformed key is reported, the appliance stays up, and recovers.
xenstore-write "$C/tcp-port" banana
wait_for 30 "state misconfigured" state_is misconfigured
st reason | grep -q "tcp-port" || fail "reason does not name tcp-port: '$(st reason)'"
show "malformed key reported: $(st reason)"
[ -z "$(st tcp-port)" ] || fail "status still shows a tcp-port while misconfigured"
xenstore-write "$C/tcp-port" 7781
wait_for 30 "state ready again" state_is ready
[ "$(st tcp-port)" = 7781 ] || fail "new tcp-port not applied: '$(st tcp-port)'"

# A missing key as well; a budget beyond capacity too.
xenstore-rm "$C/ipv4-prefix"
wait_for 30 "state misconfigured (missing key)" state_is misconfigured
st reason | grep -q "ipv4-prefix.*missing" || fail "reason does not name the missing ipv4-prefix: '$(st reason)'"
show "missing key reported: $(st reason)"
xenstore-write "$C/ipv4-prefix" 24
wait_for 30 "state ready again" state_is ready
xenstore-write "$C/memory-budget-mib" 4096
wait_for 30 "state misconfigured (budget)" state_is misconfigured
st reason | grep -q "memory-budget-mib" || fail "reason does not name memory-budget-mib: '$(st reason)'"
show "budget beyond capacity reported: $(st reason)"
xenstore-write "$C/memory-budget-mib" 32
wait_for 30 "state ready again" state_is ready

# The uptime advances (periodic status refresh, Xen system time).
u0=$(st uptime_s)
sleep 6
[ "$(st uptime_s)" -gt "$u0" ] || fail "uptime_s did not advance ($u0 -> $(st uptime_s))"

# xl reboot: the appliance stops with reason reboot and xl restarts it.
xl reboot app || fail "xl reboot"
wait_guest_line 20 app "Resilire appliance stopped (reboot)"
wait_for 30 "the appliance restarted under a new domid" sh -c "d=\$(xl domid app) && [ \"\$d\" != $D ]"
xl destroy app

# xl shutdown (through the shim): status "stopping", then the domain is gone.
start_app
D=$(xl domid app)
S=/local/domain/$D/resilire/status
resilire-shim appliance stop --name app --wait 30 || { dump_guest app; fail "xl shutdown not honoured"; }
wait_guest_line 10 app "Resilire appliance stopped (poweroff)"
xl list app >/dev/null 2>&1 && fail "domain still exists after shutdown"
dump_guest app
show "xl shutdown honoured cleanly"
