#!/usr/bin/env bash
# Installs every external command that repd's tests, bench, demo and scripts
# call, from Debian's packages, when run as root; otherwise says what is
# missing. Idempotent and quiet when everything is present.
#
#   scripts/deps.sh           install what is missing (as root), or list it
#   scripts/deps.sh --check   also prove the table below is complete: every
#                             command the Go code (exec.Command, LookPath,
#                             requireTool, ...) and the shell scripts invoke
#                             has an entry, and every entry's command is on
#                             PATH. Exits 1 naming what is wrong.
#   --root DIR                the checkout to scan (default: this script's)
#
# Install with --no-install-recommends: what a package only recommends is
# never there on a fresh machine, so a tool a tool needs (ocf-tester calls
# xmllint) has its own entry here.
set -euo pipefail

# command → Debian package. Base-system commands are listed too, so that the
# check can tell "known" from "forgotten"; `go` is not a Debian package (Go
# >= 1.26 lives at /usr/local/go) and is checked separately.
declare -A pkg=(
  # NBD clients and servers the tests and bench drive
  [fio]=fio
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdfuse]=libnbd-bin
  [nbdsh]=python3-libnbd
  [nbdkit]=nbdkit
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  # filesystems on an export
  [fusermount3]=fuse3
  [losetup]=mount
  [mount]=mount
  [umount]=mount
  [mkfs.ext4]=e2fsprogs
  # a database on the filesystem (e2e/backup_fs_test.go)
  [sqlite3]=sqlite3
  [setpriv]=util-linux
  # Pacemaker agent: ocf-tester, and what it calls (a Recommends of
  # resource-agents, absent on a fresh machine)
  [ocf-tester]=resource-agents
  [xmllint]=libxml2-utils
  # a real one-node cluster for the agent (scripts/pacemaker-sandbox.sh,
  # e2e/pacemaker_test.go): the cluster stack, Pacemaker's command-line
  # tools (a Recommends of pacemaker) and the namespaces it runs in
  [corosync]=corosync
  [corosync-quorumtool]=corosync
  [pacemakerd]=pacemaker
  [crm_node]=pacemaker
  [cibadmin]=pacemaker-cli-utils
  [crm_mon]=pacemaker-cli-utils
  [crm_resource]=pacemaker-cli-utils
  [crm_attribute]=pacemaker-cli-utils
  [crm_verify]=pacemaker-cli-utils
  [unshare]=util-linux
  [nsenter]=util-linux
  [mountpoint]=util-linux
  # the systemd units' test (cmd/repctl/systemd_test.go)
  [systemd-analyze]=systemd
  # network, bench and lint
  [ip]=iproute2
  [curl]=curl
  [shellcheck]=shellcheck
  [gnuplot]=gnuplot-nox
  [git]=git
  [python3]=python3
  [jq]=jq
  [shfmt]=shfmt # deps.sh --check reads the scripts' syntax trees with it
  # base system (Essential or Priority required on Debian)
  [awk]=mawk
  [grep]=grep
  [sed]=sed
  [sort]=coreutils
  [sleep]=coreutils
  [timeout]=coreutils
  [tail]=coreutils
  [head]=coreutils
  [tr]=coreutils
  [cut]=coreutils
  [cat]=coreutils
  [base64]=coreutils
  [mkdir]=coreutils
  [rm]=coreutils
  [mktemp]=coreutils
  [sha256sum]=coreutils
  [dd]=coreutils
  [date]=coreutils
  [chmod]=coreutils
  [basename]=coreutils
  [dirname]=coreutils
  [id]=coreutils
  [seq]=coreutils
  [uname]=coreutils
  [setsid]=util-linux
  [install]=coreutils
  [touch]=coreutils
  [ln]=coreutils
  [xargs]=findutils
  [kill]=procps
  [make]=make
  [bash]=bash
  [apt-get]=apt
  # the scheduling experiments' harness (bench/results/*/abtool.go)
  [perf]=linux-perf
  [chrt]=util-linux
  [taskset]=util-linux
  [sh]=dash
)

root=$(cd "$(dirname "$0")/.." && pwd)
check=false
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=true ;;
    --root) root=$2; shift ;;
    *) echo "deps: unknown argument $1 (use --check, --root DIR)" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "deps: Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)" >&2
  exit 1
fi

# nbdsh needs the Python binding. Checked from / so that the checkout's own
# nbd/ directory is not taken for the module.
have_pymod() { (cd / && /usr/bin/python3 -c 'import nbd; nbd.NBD' >/dev/null 2>&1); }

install_missing() {
  local missing=() tool
  for tool in "${!pkg[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
  done
  have_pymod || missing+=(python3-libnbd)
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The commands the code invokes: string literals handed to exec.Command,
# exec.CommandContext, exec.LookPath and the test and bench helpers that
# look a tool up (testtool.Require, requireTool, needTool, need, StartProc, toolVersion).
go_commands() {
  git -C "$root" ls-files -z '*.go' 2>/dev/null | (cd "$root" && xargs -0 cat) |
    grep -oE '(exec\.Command|exec\.LookPath|testtool\.Require|requireTool|needTool|need|StartProc|toolVersion|runTool)\((ctx, |t, )?"[A-Za-z0-9._+-]+"|exec\.CommandContext\([a-zA-Z]+, "[A-Za-z0-9._+-]+"' |
    sed -E 's/.*"([^"]+)"$/\1/' | sort -u
}

# The commands the shell scripts run, from shfmt's syntax tree: the first
# literal word of every simple command (and the command that a wrapper such
# as timeout, setsid or xargs runs), minus shell builtins and keywords and
# the functions the script defines.
shell_commands() {
  local f defined builtins w
  builtins=" $(compgen -k | tr '\n' ' ') $(compgen -b | tr '\n' ' ') "
  for f in "$root"/scripts/*.sh "$root"/scripts/ocf/repd "$root"/.ci/run; do
    [ -f "$f" ] || continue
    defined=" $(grep -oE '^[[:space:]]*(function[[:space:]]+)?[A-Za-z_][A-Za-z0-9_]*[[:space:]]*\(\)' "$f" | sed -E 's/function//; s/[[:space:]()]//g' | tr '\n' ' ') "
    for w in $(shfmt --to-json <"$f" | jq -r '
        .. | objects | select(.Type? == "CallExpr") | [.Args[]? | .Parts | if length == 1 and .[0].Type == "Lit" then .[0].Value else "" end] |
        (.[0] // ""), (if (.[0] // "") | test("^(timeout|setsid|nohup|exec|sudo|xargs|env|nice)$") then (.[1:] | map(select((test("^-") or test("^[0-9.]+[smhd]?$")) | not)) | .[0] // empty) else empty end)'); do
      case "$w" in "" | */* | *=* | -*) continue ;; esac
      case "$builtins$defined" in *" $w "*) continue ;; esac
      case "$w" in
        # repd's own binaries, and Pacemaker's tools (the agent runs under
        # Pacemaker, which brings them; the tests fake them)
        repd | repctl | linkproxy | ocf_* | crm_* | have_binary) continue ;;
      esac
      echo "$w"
    done
  done | sort -u
}

run_check() {
  local bad=0 tool
  local -A seen=()
  while read -r tool; do
    [ -n "$tool" ] || continue
    [ -n "${seen[$tool]:-}" ] && continue
    seen[$tool]=1
    [ "$tool" = go ] && continue
    if [ -z "${pkg[$tool]:-}" ]; then
      echo "deps --check: '$tool' is invoked by the code or scripts but has no entry in scripts/deps.sh's package table" >&2
      bad=1
    fi
  done < <(go_commands; shell_commands)
  for tool in "${!pkg[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "deps --check: '$tool' is not on PATH although package ${pkg[$tool]} was installed: the table names the wrong package" >&2
      bad=1
    fi
  done
  if ! have_pymod; then
    echo "deps --check: the Python module nbd (python3-libnbd) is missing; nbdsh needs it" >&2
    bad=1
  fi
  [ $bad -eq 0 ] && echo "deps --check: every command the tests, bench and scripts call is in the table and installed (${#seen[@]} found, ${#pkg[@]} listed)"
  return $bad
}

# Pacemaker's tools are on root's PATH only; the table's check needs them too.
PATH=$PATH:/usr/sbin:/sbin
if $check; then
  # Install first (as root), then check: a wrong package name shows as a
  # command still missing.
  install_missing || true
  run_check
else
  install_missing
fi
