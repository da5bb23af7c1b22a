#!/usr/bin/env python3
"""Where two vCPUs' time goes while fio drives a replicated repd.

  schedpairs.py record OUT SECONDS NAME=PID ...   (root; needs perf)
  schedpairs.py report OUT

record traces sched_switch and sched_wakeup on every CPU for SECONDS
(perf record -a) and lists the threads of each named process (repd's
Primary P, its Secondary S) while they run; other threads are named by
their command (fio). report prints
  1. the share of the trace for each pair of what ran on the two CPUs
     ("idle" for none) and, when one CPU was idle, which of the named
     processes and fio were runnable but waiting for a CPU;
  2. for every wake-up of a named process or fio, how long it waited
     for a CPU, by where it was placed: on the waker's CPU or the other,
     and whether that CPU was busy or idle at the wake-up.
Written for issue 20's two-vCPU VM (two CPUs: pairs, not tuples).
"""
import collections, json, os, re, subprocess, sys

def record(out, secs, named):
    os.makedirs(out, exist_ok=True)
    subprocess.run(["perf", "record", "-q", "-a", "-e", "sched:sched_switch", "-e", "sched:sched_wakeup",
                    "-o", os.path.join(out, "sched.data"), "--", "sleep", str(secs)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tasks = {}
    for kv in named:
        name, pid = kv.split("=", 1)
        tasks[name] = os.listdir("/proc/%s/task" % pid)
    with open(os.path.join(out, "tasks.json"), "w") as f:
        json.dump(tasks, f)

SW = re.compile(r"\[(\d+)\]\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ "
                r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
WK = re.compile(r"\[(\d+)\]\s+([\d.]+): sched:sched_wakeup: comm=(.*?) pid=(\d+) prio=\d+ target_cpu=(\d+)")

def report(out):
    tasks = json.load(open(os.path.join(out, "tasks.json")))
    owner = {tid: name for name, tids in tasks.items() for tid in tids}
    watched = set(tasks) | {"fio"}
    def who(comm, tid):
        return "idle" if tid == "0" else owner.get(tid, comm)
    text = subprocess.run(["perf", "script", "-i", os.path.join(out, "sched.data"), "-F", "cpu,time,event,trace"],
                          check=True, capture_output=True, text=True).stdout
    ev = []
    for line in text.splitlines():
        m = SW.search(line)
        if m:
            ev.append((float(m[2]), "s", int(m[1]), m[4], m[5], m[7], who(m[3], m[4]), who(m[6], m[7])))
            continue
        m = WK.search(line)
        if m:
            ev.append((float(m[2]), "w", int(m[1]), m[4], int(m[5]), who(m[3], m[4])))
    ev.sort(key=lambda e: e[0])
    running, name, runnable, pending = {}, {}, set(), {}
    pairs, waits = collections.Counter(), collections.defaultdict(list)
    last = None
    for e in ev:
        t = e[0]
        if last is not None and len(running) == 2:
            ran = tuple(sorted(running[c][1] for c in running))
            waiting = ()
            if "idle" in ran:
                waiting = tuple(sorted({name[x] for x in runnable if name.get(x) in watched}))
            pairs[(ran, waiting)] += t - last
        last = t
        if e[1] == "s":
            _, _, cpu, ptid, pstate, ntid, pwho, nwho = e
            name[ptid], name[ntid] = pwho, nwho
            if pstate.startswith("R"):
                runnable.add(ptid)
            runnable.discard(ntid)
            running[cpu] = (ntid, nwho)
            if ntid in pending:
                t0, w, where = pending.pop(ntid)
                waits[(w, where)].append((t - t0) * 1e6)
        else:
            _, _, wcpu, tid, tcpu, w = e
            name[tid] = w
            if not any(v[0] == tid for v in running.values()):
                runnable.add(tid)
            if w in watched:
                busy = running.get(tcpu, ("0",))[0] != "0"
                pending[tid] = (t, w, ("waker's CPU" if tcpu == wcpu else "other CPU") + (", busy" if busy else ", idle"))
    total = sum(pairs.values()) or 1
    print("what ran on the two CPUs (share of %.2f s)       runnable, waiting" % total)
    for (ran, waiting), v in pairs.most_common(12):
        print("  %-28s %-18s %5.1f %%" % (" + ".join(ran), ", ".join(waiting) or "-", 100 * v / total))
    print("\nwake-up to running, µs")
    for k in sorted(waits):
        v = sorted(waits[k])
        n = len(v)
        print("  %-4s placed on the %-18s %6d wake-ups  p50 %6.1f  p90 %7.1f  mean %6.1f  (%.0f ms in all)"
              % (k[0], k[1], n, v[n // 2], v[int(n * 0.9)], sum(v) / n, sum(v) / 1e3))

if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "record":
        record(sys.argv[2], float(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
