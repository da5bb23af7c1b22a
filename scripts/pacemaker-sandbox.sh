#!/usr/bin/env bash
# A throwaway one-node Pacemaker + Corosync cluster in its own network, mount
# and PID namespaces, for testing the OCF agent (scripts/ocf/repd) under the
# real thing without touching the host: no systemd needed, nothing written
# under /var/lib/pacemaker, /var/lib/corosync, /run or /usr/lib/ocf outside
# the sandbox, and every process in it dies with it.
#
#   pacemaker-sandbox.sh start DIR [--agent FILE] [--node NAME]
#       Runs in the foreground until SIGTERM or SIGINT. Starts corosync (knet
#       on 127.0.0.1 of the sandbox's own loopback) and pacemakerd -f, with
#       their state on tmpfs and their logs in DIR. FILE is installed as
#       ocf:repd:repd (default: the agent beside this script); NAME is the
#       cluster node's name (default: alpha). Prints "ready" once a DC is
#       elected. The CIB starts with stonith-enabled=false (there is nothing
#       to fence in a sandbox) and dc-deadtime=2s (one node: no one to wait
#       for). On SIGTERM, pacemakerd stops every resource, then corosync
#       stops; the exit status is 0 only when both stopped cleanly.
#   pacemaker-sandbox.sh exec DIR COMMAND [ARG...]
#       Runs COMMAND inside the running sandbox (crm_mon, cibadmin,
#       crm_resource, repctl, ...), with /usr/sbin on PATH.
#   pacemaker-sandbox.sh hide DIR COMMAND
#       Makes COMMAND vanish from /usr/sbin inside the running sandbox, as on
#       a Pacemaker without it (crm_master is gone in Pacemaker 3).
#   pacemaker-sandbox.sh stop DIR
#       Stops a sandbox started in DIR and waits for it (at most 3 minutes).
#
# Needs root (namespaces, mounts, corosync's real-time scheduling) and the
# Debian packages corosync, pacemaker and pacemaker-cli-utils.
#
# Files in DIR: corosync.conf, corosync.log, pacemaker.log (every daemon's
# detail log), pacemakerd.log (its stderr), unshare.pid (the sandbox's
# outermost process, in the host's PID namespace), ready.
set -euo pipefail

PATH=/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
export PATH

die() {
	echo "pacemaker-sandbox: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
}

# init_pid DIR prints the host PID of the sandbox's PID 1 (the child of the
# unshare process).
init_pid() {
	local upid child
	[ -r "$1/unshare.pid" ] || die "no sandbox in $1 (no unshare.pid): start one with: $0 start $1"
	read -r upid <"$1/unshare.pid"
	[ -r "/proc/$upid/task/$upid/children" ] || die "the sandbox in $1 (pid $upid) is not running"
	read -r child _ <"/proc/$upid/task/$upid/children" || true
	[ -n "$child" ] || die "the sandbox in $1 (pid $upid) has no init process"
	echo "$child"
}

cmd_start() {
	local dir=$1
	shift
	local agent node
	agent="$(cd "$(dirname "$0")" && pwd)/ocf/repd"
	node=alpha
	while [ $# -gt 0 ]; do
		case "$1" in
		--agent) agent=$2; shift ;;
		--node) node=$2; shift ;;
		*) die "start: unknown argument $1 (want --agent FILE, --node NAME)" ;;
		esac
		shift
	done
	[ "$(id -u)" -eq 0 ] || die "start needs root (namespaces and mounts)"
	local tool
	for tool in unshare nsenter corosync corosync-quorumtool pacemakerd cibadmin crm_attribute crm_mon; do
		command -v "$tool" >/dev/null 2>&1 || die "$tool not found: install the Debian packages corosync, pacemaker and pacemaker-cli-utils (scripts/deps.sh does)"
	done
	id hacluster >/dev/null 2>&1 || die "user hacluster does not exist: install the Debian package pacemaker"
	[ -r "$agent" ] || die "agent $agent not found (--agent FILE)"
	case "$node" in
	"" | *[!A-Za-z0-9._-]*) die "node name '$node': use letters, digits, '.', '_' and '-'" ;;
	esac
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	rm -f "$dir/ready"

	cat >"$dir/corosync.conf" <<EOF
totem {
	version: 2
	cluster_name: repd-sandbox
	transport: knet
	crypto_cipher: none
	crypto_hash: none
}
nodelist {
	node {
		name: $node
		nodeid: 1
		ring0_addr: 127.0.0.1
	}
}
quorum {
	provider: corosync_votequorum
}
logging {
	to_stderr: no
	to_syslog: no
	to_logfile: yes
	logfile: $dir/corosync.log
	timestamp: on
}
system {
	state_dir: /var/lib/corosync
}
EOF
	# The CIB Pacemaker starts from (written offline by the real tools).
	cibadmin --empty >"$dir/cib.xml"
	CIB_file=$dir/cib.xml crm_attribute --type crm_config --name stonith-enabled --update false
	CIB_file=$dir/cib.xml crm_attribute --type crm_config --name dc-deadtime --update 2s

	echo $$ >"$dir/unshare.pid"
	# exec keeps this PID (and a parent-death signal a caller set): when it
	# dies, --kill-child kills the sandbox's PID 1, and with it every process
	# in the sandbox.
	exec unshare --net --mount --pid --fork --kill-child --mount-proc -- "$0" __init "$dir" "$agent"
}

# on_signal (PID 1's SIGTERM and SIGINT) ends the wait in cmd_init, which
# then stops the daemons in order.
on_signal() {
	stopping=1
}

# cmd_init runs as PID 1 of the sandbox.
cmd_init() {
	local dir=$1 agent=$2 d p
	ip link set lo up
	# State and runtime directories on tmpfs: private to this mount namespace.
	for d in /run /dev/shm /var/lib/pacemaker /var/lib/corosync /var/log/pacemaker; do
		[ -d "$d" ] || die "$d does not exist: install the Debian packages corosync and pacemaker"
		mount -t tmpfs -o mode=0755 sandbox "$d"
	done
	chmod 1777 /dev/shm
	install -d -o hacluster -g haclient -m 0750 /var/lib/pacemaker/cib /var/lib/pacemaker/pengine \
		/var/lib/pacemaker/blackbox /var/lib/pacemaker/cores
	install -d -o hacluster -g haclient -m 0770 /var/log/pacemaker
	install -o hacluster -g haclient -m 0600 "$dir/cib.xml" /var/lib/pacemaker/cib/cib.xml
	# Agents: the host's providers, plus repd, in a directory bound over
	# /usr/lib/ocf/resource.d (Pacemaker 2.1 looks nowhere else).
	local ra=/run/resource.d
	mkdir -p "$ra/repd"
	for p in /usr/lib/ocf/resource.d/*; do
		[ -d "$p" ] || continue
		mkdir -p "$ra/${p##*/}"
		mount --bind "$p" "$ra/${p##*/}"
	done
	install -m 0755 "$agent" "$ra/repd/repd"
	mount --rbind "$ra" /usr/lib/ocf/resource.d

	cpid=0 ppid=0 stopping=0
	trap on_signal TERM INT

	corosync -f -c "$dir/corosync.conf" >>"$dir/corosync.log" 2>&1 &
	cpid=$!
	local i=0
	until corosync-quorumtool -s >/dev/null 2>&1; do
		kill -0 "$cpid" 2>/dev/null || die "corosync exited at start; see $dir/corosync.log"
		i=$((i + 1))
		[ $i -lt 150 ] || die "corosync did not answer within 30s; see $dir/corosync.log"
		sleep 0.2
	done

	PCMK_logfile=$dir/pacemaker.log pacemakerd -f >>"$dir/pacemakerd.log" 2>&1 &
	ppid=$!
	i=0
	until [ "$stopping" = 1 ] || crm_mon -1 --output-as=xml 2>/dev/null | grep -q '<current_dc present="true"'; do
		kill -0 "$ppid" 2>/dev/null || die "pacemakerd exited at start; see $dir/pacemakerd.log and $dir/pacemaker.log"
		i=$((i + 1))
		[ $i -lt 300 ] || die "no DC elected within 60s; see $dir/pacemaker.log"
		sleep 0.2
	done
	if [ "$stopping" = 0 ]; then
		touch "$dir/ready"
		echo ready
	fi

	# Until told to stop (the trap interrupts wait) or a daemon dies.
	local rc=0
	while [ "$stopping" = 0 ]; do
		if ! kill -0 "$ppid" 2>/dev/null || ! kill -0 "$cpid" 2>/dev/null; then
			echo "pacemaker-sandbox: a daemon died; see $dir/pacemaker.log and $dir/corosync.log" >&2
			rc=1
			break
		fi
		sleep 1 &
		wait $! || true
	done
	rm -f "$dir/ready"

	# pacemakerd stops the resources first, then its daemons.
	kill -TERM "$ppid" 2>/dev/null || true
	stop_child pacemakerd "$ppid" 150 || rc=1
	kill -TERM "$cpid" 2>/dev/null || true
	stop_child corosync "$cpid" 20 || rc=1
	echo stopped
	exit "$rc"
}

# stop_child NAME PID SECONDS waits for a signalled child to exit, sends
# SIGKILL after SECONDS, and fails unless it exited by itself with status 0.
stop_child() {
	local name=$1 pid=$2 n=$(($3 * 5)) st=0
	while kill -0 "$pid" 2>/dev/null; do
		n=$((n - 1))
		if [ $n -le 0 ]; then
			echo "pacemaker-sandbox: $name did not stop within $3s; killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			return 1
		fi
		sleep 0.2
	done
	wait "$pid" 2>/dev/null || st=$?
	if [ "$st" -ne 0 ]; then
		echo "pacemaker-sandbox: $name exited with status $st" >&2
		return 1
	fi
}

cmd_exec() {
	local dir=$1 pid
	shift
	[ $# -ge 1 ] || die "exec: want a command"
	pid=$(init_pid "$dir")
	exec nsenter --target "$pid" --net --mount --pid --wd=/ -- "$@"
}

# cmd_hide binds, over /usr/sbin, a directory of links to the real one's
# entries but COMMAND's. Only the sandbox's mount namespace sees it.
cmd_hide() {
	local dir=$1 name=${2:-}
	case "$name" in
	"" | */* | .*) die "hide: want a command name in /usr/sbin" ;;
	esac
	[ -e "/usr/sbin/$name" ] || die "hide: /usr/sbin/$name does not exist"
	# shellcheck disable=SC2016 # expanded by the inner bash
	cmd_exec "$dir" bash -c '
		set -e
		name=$1
		real=/run/sandbox-sbin/real view=/run/sandbox-sbin/view
		if ! mountpoint -q "$real"; then
			mkdir -p "$real" "$view"
			mount --bind /usr/sbin "$real"
			for f in "$real"/*; do ln -s "$f" "$view/${f##*/}"; done
			mount --bind "$view" /usr/sbin
		fi
		rm -f "$view/$name"
	' hide "$name"
}

cmd_stop() {
	local dir=$1 upid pid n=900
	pid=$(init_pid "$dir")
	read -r upid <"$dir/unshare.pid"
	kill -TERM "$pid"
	while kill -0 "$upid" 2>/dev/null; do
		n=$((n - 1))
		[ $n -gt 0 ] || die "the sandbox (pid $upid) did not stop within 3 minutes"
		sleep 0.2
	done
}

[ $# -ge 2 ] || usage
verb=$1
shift
case "$verb" in
start) cmd_start "$@" ;;
__init) cmd_init "$@" ;;
exec) cmd_exec "$@" ;;
hide) cmd_hide "$@" ;;
stop) cmd_stop "$@" ;;
*) usage ;;
esac
