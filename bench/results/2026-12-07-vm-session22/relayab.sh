#!/usr/bin/env bash
# relayab.sh ROUNDS SECS MODE... : fio's 1 MiB QD8 job against pairfloor's
# NBD relay (-serve) in each MODE (sa, A, C), rounds interleaved (order
# reversed every other round); prints each run's write IOPS and the
# relay's and its receiver's CPU (percent of one CPU over the job), then
# each mode's median and median ratio to the first mode. Root (it drops
# the page cache before each job), from the module root, with
# /tmp/pairfloor built from pairfloor.go; RELAY="COMMAND" runs another
# server that takes the same flags (cutrelay.go: modes sa, C, cut).
set -euo pipefail
rounds=$1 secs=$2; shift 2
modes=("$@")
declare -A res
cpu() { # utime+stime of a pid and its children's threads, in ticks
  awk '{print $14+$15}' /proc/$1/stat
}
for r in $(seq 0 $((rounds-1))); do
  order=("${modes[@]}")
  if (( r % 2 == 1 )); then order=($(printf '%s\n' "${modes[@]}" | tac)); fi
  for m in "${order[@]}"; do
    sock=/tmp/relay-$m.sock
    ${RELAY:-/tmp/pairfloor} -serve unix:$sock -mode "$m" -file /var/tmp/relay.img -size $((512<<20)) &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    sync; echo 3 > /proc/sys/vm/drop_caches
    child=$(pgrep -P $pid || true)
    BENCH_RUNTIME=$secs fio --output-format=json --output=/tmp/relay-fio.json --ioengine=nbd \
      --uri="nbd+unix:///bench?socket=$sock" bench/jobs/seqwrite-1m-qd8.fio &
    fpid=$!
    sleep 2.5
    c0=$(cpu $pid); k0=0; [ -n "$child" ] && k0=$(cpu $child)
    t0=$(date +%s.%N)
    sleep $((secs-1))
    c1=$(cpu $pid); k1=0; [ -n "$child" ] && k1=$(cpu $child)
    t1=$(date +%s.%N)
    wait $fpid
    kill -TERM $pid; wait $pid || true
    iops=$(python3 -c 'import json;print(round(json.load(open("/tmp/relay-fio.json"))["jobs"][0]["write"]["iops"]))')
    el=$(echo "$t1 - $t0" | bc)
    printf 'round %d %-4s %6d  relay %3.0f%% receiver %3.0f%%\n' "$r" "$m" "$iops" \
      "$(echo "($c1-$c0)/$el" | bc -l)" "$(echo "($k1-$k0)/$el" | bc -l)"
    res[$m]="${res[$m]:-} $iops"
  done
done
python3 - "${modes[0]}" <<PY
import statistics, sys
base = sys.argv[1]
res = {$(for m in "${modes[@]}"; do printf '"%s": [%s], ' "$m" "$(echo ${res[$m]} | tr ' ' ,)"; done)}
for m, v in res.items():
    rat = [a / b for a, b in zip(v, res[base])]
    print(f"{m:4} median {statistics.median(v):6.0f}  ratio-to-{base} median {statistics.median(rat):.3f} {[round(x, 3) for x in rat]}")
PY
