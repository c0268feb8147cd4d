#!/bin/sh
# lab: hosts=1 timeout=150 test=yes
# Scenario (a): Xen and dom0 boot; the toolstack works and Xen offers HAP.
. /lab/lib.sh
xl info > /tmp/xl-info.txt 2>&1 || fail "xl info: $(cat /tmp/xl-info.txt)"
grep -E '^(xen_version|virt_caps|total_memory|free_memory)' /tmp/xl-info.txt
grep -q '^virt_caps.*hap' /tmp/xl-info.txt || fail "xl info shows no hap"
xl list | grep -q Domain-0 || fail "xl list has no Domain-0"
show "$(grep '^xen_version' /tmp/xl-info.txt)"
show "$(grep '^virt_caps' /tmp/xl-info.txt)"
