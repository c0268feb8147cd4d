#!/bin/sh
# lab: hosts=2 timeout=150 test=yes
# Scenario (c): two lab hosts reach each other's dom0 over the lab network
# (QEMU multicast segment on loopback, bridged in each dom0 as xenbr0).
. /lab/lib.sh
peer=$(( (LAB_HOST + 1) % LAB_HOSTS ))
peer_ip=$(host_ip $peer)
wait_for 60 "ping of host $peer ($peer_ip)" ping -c 1 -W 1 "$peer_ip"
ping -c 3 "$peer_ip" | tail -2
show "host $LAB_HOST reaches host $peer at $peer_ip: $(ping -c 3 -q "$peer_ip" | tail -1)"
if [ "$LAB_HOST" -ne 0 ]; then
    # Stay up until host 0 has seen us too; the lab ends the run at its PASS.
    sleep 600
fi
