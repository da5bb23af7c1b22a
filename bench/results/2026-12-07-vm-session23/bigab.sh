#!/bin/bash
# bigab.sh JOB BATCHES VARIANT...: abtool batches of 2 rounds of JOB, with
# BIG TCP on lo (TCP segments of up to 512 KiB) and without, alternating;
# lo is left at the default at the end. Root, from the module root, with
# the binaries of abtool's header in /tmp/bin:
#   go build -o /tmp/abtool bench/results/2026-12-07-vm-session16/abtool.go
#   go build -o /tmp/bigtcp bench/results/2026-12-07-vm-session23/bigtcp.go
#   bench/results/2026-12-07-vm-session23/bigab.sh seqwrite-1m-qd8 2 sa:none:/tmp/bin C:C:/tmp/bin A:A:/tmp/bin
set -e
job=$1; shift; n=$1; shift
trap '/tmp/bigtcp 65536 >/dev/null' EXIT
for i in $(seq 1 "$n"); do
  for s in 524280 65536; do
    /tmp/bigtcp $s >/dev/null
    echo "== batch $i lo gso_ipv4_max_size=$s $(date +%T)"
    timeout 900 /tmp/abtool -rounds 2 -job "$job" -secs 8 "$@" 2>&1 | grep median
  done
done
