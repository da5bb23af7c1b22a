#!/usr/bin/env python3
"""threads.py TRACE [PIDS]: what each thread of the nodes and fio did in an
abtool PERF=ftrace dump: running, runnable (woken or preempted, not yet
running) and asleep by the system call it slept in (7 poll, 35 nanosleep,
202 futex, 230 clock_nanosleep, 270 pselect6, 281 epoll_pwait), as shares
of the trace; threads under 2 % in every state are left out. Then how long
one CPU and both CPUs were idle."""
import collections, re, sys

tr = sys.argv[1]
pidf = sys.argv[2] if len(sys.argv) > 2 else tr.rsplit('.', 1)[0] + '.pids'
names = {int(p): n for n, p in (l.strip().split('=') for l in open(pidf) if l.strip())}
rx = re.compile(r'^\s*(.+?)-(\d+)\s+\(\s*(\d+|-+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$')
tgid, comm, insys, state = {}, {}, {}, {}
acc = collections.defaultdict(float)
idle, idle_since = collections.defaultdict(float), {}
cpu_idle = collections.defaultdict(bool)
one = both = 0.0
t0 = last = None

def who(pid):
    g = tgid.get(pid, pid)
    if g in names:
        return '%s:%d' % (names[g], pid)
    return 'fio:%d' % pid if comm.get(pid) == 'fio' else None

def set_state(pid, st, t, nr=None):
    o = state.get(pid)
    if o and who(pid):
        acc[(who(pid), o[0], o[2] if o[0] == 'sleep' else '')] += t - o[1]
    state[pid] = (st, t, nr)

for line in open(tr):
    m = rx.match(line)
    if not m:
        continue
    c, pid, tg, cpu, ts, ev, rest = m.groups()
    pid, cpu, ts = int(pid), int(cpu), float(ts)
    if tg.isdigit():
        tgid[pid] = int(tg)
    comm[pid] = c
    if t0 is None:
        t0 = ts
    if last is not None:
        k = sum(cpu_idle.values())
        both += (ts - last) * (k >= 2)
        one += (ts - last) * (k == 1)
    last = ts
    if ev == 'sys_enter':
        insys[pid] = int(rest.split()[1])
    elif ev == 'sys_exit':
        insys.pop(pid, None)
    elif ev == 'sched_switch':
        d = dict(kv.split('=', 1) for kv in re.findall(r'(\w+=\S+)', rest))
        pp, np_ = int(d['prev_pid']), int(d['next_pid'])
        comm[np_] = d['next_comm']
        if pp != 0:
            set_state(pp, 'runnable' if d['prev_state'].startswith('R') else 'sleep', ts, insys.get(pp, -1))
        if np_ != 0:
            set_state(np_, 'run', ts)
        cpu_idle[cpu] = np_ == 0
    elif ev == 'sched_wakeup':
        p = int(re.search(r'pid=(\d+)', rest).group(1))
        if state.get(p, ('',))[0] != 'run':
            set_state(p, 'runnable', ts)
T = last - t0
print('trace %.3f s; one CPU idle %.1f %%, both %.1f %%' % (T, 100 * one / T, 100 * both / T))
keep = {w for (w, st, nr), v in acc.items() if v / T >= 0.02 and not (st == 'sleep' and nr in (35, 230, 270))}
for (w, st, nr), v in sorted(acc.items()):
    if w in keep and v / T >= 0.02:
        print('%-14s %-9s %-4s %5.1f %%' % (w, st, nr, 100 * v / T))
