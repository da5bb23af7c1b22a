#!/usr/bin/env bash
# The main job on embedded defaults: a replicated device on this machine
# that fails over by itself. Two data nodes (alpha on 127.0.0.1, beta on
# 127.0.0.2, protocol C) and a witness (tie on 127.0.0.3) make three votes;
# with quorum and auto-promote the two that can still see each other elect a
# Primary when it is lost. Writes go to both backing files. Ctrl-C stops all
# three. State lives in ./run/ (remove it to start afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN_DIR:-$PWD/run}
SIZE=${SIZE:-1GiB}
mkdir -p "$RUN"
BIN=$PWD/bin
conf=$RUN/r0.toml
secret=$RUN/r0.secret
if [ ! -f "$secret" ]; then
  # The peers prove this secret to each other and authenticate every frame
  # with it; readable by its owner only (repd refuses anything looser).
  (umask 077 && head -c 32 /dev/urandom | base64 >"$secret")
fi
if [ ! -f "$conf" ]; then
cat > "$conf" <<CONF
# Written by scripts/run.sh: two data nodes and a witness on one machine.
[resource]
name         = "r0"
size         = "$SIZE"
protocol     = "C"
secret-file  = "r0.secret"
timeout      = "2s"     # a lost Primary is replaced in about 3 s
quorum       = "majority"
auto-promote = true

[[node]]
name     = "alpha"
priority = 1            # preferred Primary
disk     = "$RUN/alpha.img"
meta     = "$RUN/alpha.meta"
nbd      = "127.0.0.1:10809"
peer     = "127.0.0.1:7789"
admin    = "$RUN/alpha.sock"
metrics  = "127.0.0.1:9789"

[[node]]
name    = "beta"
disk    = "$RUN/beta.img"
meta    = "$RUN/beta.meta"
nbd     = "127.0.0.2:10809"
peer    = "127.0.0.2:7789"
admin   = "$RUN/beta.sock"
metrics = "127.0.0.2:9789"

[[node]]
name  = "tie"            # a witness: votes, stores no data
disk  = "none"
meta  = "$RUN/tie.state"
peer  = "127.0.0.3:7789"
admin = "$RUN/tie.sock"
CONF
fi

declare -A pid=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping repd nodes..."
  # The Primary first, while its peers still answer: its last flush goes
  # through them at once (stopped together, it would lose quorum as they
  # go and wait out its final flush's bound). A frozen node does not
  # answer status within the second and is simply stopped with the rest.
  for n in alpha beta; do
    [ -n "${pid[$n]:-}" ] || continue
    if timeout 1 "$BIN/repctl" --admin "$RUN/$n.sock" status --json 2>/dev/null | grep -q '"role": "Primary"'; then
      kill -TERM "${pid[$n]}" 2>/dev/null || true
      wait "${pid[$n]}" 2>/dev/null || true
    fi
  done
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for n in alpha beta tie; do
  "$BIN/repd" --config "$conf" --node $n >>"$RUN/$n.log" 2>&1 &
  pid[$n]=$!
done
for n in alpha beta tie; do
  for _ in $(seq 100); do "$BIN/repctl" --admin "$RUN/$n.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
done
# A brand-new pair of empty disks needs no initial sync: declare them equal;
# the election then promotes alpha (priority 1) by itself.
if "$BIN/repctl" --admin "$RUN/alpha.sock" status --json | grep -q '"disk": "Inconsistent"'; then
  "$BIN/repctl" --admin "$RUN/alpha.sock" wait-connect --timeout 10s >/dev/null
  "$BIN/repctl" --admin "$RUN/alpha.sock" new-current-uuid --clear-bitmap
fi
for _ in $(seq 150); do
  "$BIN/repctl" --admin "$RUN/alpha.sock" status --json | grep -q '"role": "Primary"' && break
  "$BIN/repctl" --admin "$RUN/beta.sock" status --json | grep -q '"role": "Primary"' && break
  sleep 0.1
done
"$BIN/repctl" --admin "$RUN/alpha.sock" status
cat <<MSG

repd is running: resource r0 ($SIZE), protocol C (every acknowledged write is on
both data nodes), two data nodes and a witness (three votes, two make quorum),
auto-promote on. The Primary serves nbd://127.0.0.1:10809/r0 (alpha) or
nbd://127.0.0.2:10809/r0 (beta); http://127.0.0.1:9789/health answers 200 only on
the Primary that holds quorum.

  write:        qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:10809/r0
                nbd-client 127.0.0.1 10809 /dev/nbd0 -N r0   (on a machine with the nbd module)
  status:       bin/repctl --admin $RUN/beta.sock status
  watch events: bin/repctl --admin $RUN/beta.sock events

  watch a failover happen by itself (in another terminal, with the events above):
    freeze alpha:   kill -STOP ${pid[alpha]}   # alpha hangs; beta is elected in about 3 s
    read on beta:   qemu-io -f raw -c 'read -P 0xab 0 1M' nbd://127.0.0.2:10809/r0
    thaw alpha:     kill -CONT ${pid[alpha]}   # alpha steps down and resyncs from beta
  fail back by hand: bin/repctl --admin $RUN/beta.sock secondary   # alpha (priority 1) is elected

  logs:         $RUN/alpha.log, $RUN/beta.log, $RUN/tie.log

Ctrl-C stops all three nodes.
MSG
wait
