#!/usr/bin/env bash
# The main job on embedded defaults: a two-node replicated device on this
# machine (nodes alpha on 127.0.0.1 and beta on 127.0.0.2, protocol C), alpha
# promoted to Primary, served over NBD. Writes go to both backing files.
# Ctrl-C stops both nodes. State lives in ./run/ (remove it to start afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN_DIR:-$PWD/run}
SIZE=${SIZE:-1GiB}
mkdir -p "$RUN"
BIN=$PWD/bin
conf=$RUN/r0.toml
if [ ! -f "$conf" ]; then
cat > "$conf" <<CONF
# Written by scripts/run.sh: a two-node resource on one machine.
[resource]
name     = "r0"
size     = "$SIZE"
protocol = "C"

[[node]]
name  = "alpha"
disk  = "$RUN/alpha.img"
meta  = "$RUN/alpha.meta"
nbd   = "127.0.0.1:10809"
peer  = "127.0.0.1:7789"
admin = "$RUN/alpha.sock"

[[node]]
name  = "beta"
disk  = "$RUN/beta.img"
meta  = "$RUN/beta.meta"
nbd   = "127.0.0.2:10809"
peer  = "127.0.0.2:7789"
admin = "$RUN/beta.sock"
CONF
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping repd nodes..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for n in alpha beta; do
  "$BIN/repd" --config "$conf" --node $n >>"$RUN/$n.log" 2>&1 &
  pids+=($!)
done
for n in alpha beta; do
  for _ in $(seq 100); do "$BIN/repctl" --admin "$RUN/$n.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
done
# A brand-new pair of empty disks needs no initial sync; then alpha serves writes.
if "$BIN/repctl" --admin "$RUN/alpha.sock" status --json | grep -q '"disk": "Inconsistent"'; then
  for _ in $(seq 100); do
    "$BIN/repctl" --admin "$RUN/alpha.sock" status --json | grep -q '"connection": "Connected"' && break; sleep 0.1
  done
  "$BIN/repctl" --admin "$RUN/alpha.sock" new-current-uuid --clear-bitmap
fi
"$BIN/repctl" --admin "$RUN/alpha.sock" primary 2>/dev/null || true
"$BIN/repctl" --admin "$RUN/alpha.sock" status
cat <<MSG

repd is running: resource r0 ($SIZE), alpha Primary on nbd://127.0.0.1:10809/r0,
beta Secondary on 127.0.0.2, protocol C (every acknowledged write is on both).

  write:     qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:10809/r0
             nbd-client 127.0.0.1 10809 /dev/nbd0 -N r0     (on a machine with the nbd module)
  status:    bin/repctl --admin $RUN/alpha.sock status
  fail over: bin/repctl --admin $RUN/alpha.sock secondary
             bin/repctl --admin $RUN/beta.sock primary
             qemu-io -f raw -c 'read -P 0xab 0 1M' nbd://127.0.0.2:10809/r0
  logs:      $RUN/alpha.log, $RUN/beta.log

Ctrl-C stops both nodes.
MSG
wait
