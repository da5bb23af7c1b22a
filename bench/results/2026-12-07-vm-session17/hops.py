#!/usr/bin/env python3
"""Where a protocol-C write at queue depth 1 spends its time, hop by hop.

  hops.py TRACE PIDS [BLOCK]

TRACE is a tracefs dump of system calls and scheduler events (abtool's
PERF=ftrace: /tmp/ftrace-NAME.txt), PIDS its nodes' pids (alpha=PID, the
Primary, then bravo=PID, the Secondary; /tmp/ftrace-NAME.pids), BLOCK the
job's write size in bytes (16384). It finds every complete cycle of one
write, by the system calls that carry it:

  A  fio's send of the data returns        (sendto, BLOCK bytes, or
                                            28 + BLOCK with the header)
  B  the Primary's read of the request     (read, 28 + BLOCK bytes, or
                                            BLOCK after the header's)
  C  the Primary's write to the peer       (write, BLOCK + 56 bytes)
  D  the Secondary's read of the frame     (read, BLOCK + 56 bytes)
  d  the Secondary's pwrite starts, e  it returns
  E  the Secondary's ack                   (write, 40 bytes)
  F  the Primary's read of the ack         (read, 40 bytes)
  G  the Primary's reply to fio            (16 bytes)
  H  fio's read of the reply returns       (recvfrom, 16 bytes)

and prints the median of each step (AB is fio's request reaching a
Primary thread, CD the wake-up of the Secondary, EF the Primary's, GH
fio's, HA fio's own time before its next write), then the cycles by where
they ran: the CPU of fio (A), the Primary's read (B), the Secondary's read
(D) and ack (E), the Primary's read of the ack (F), each as a share of the
cycles with its median cycle time and median steps. Cycles broken by
anything else (a flush, a partial read) are left out.
"""
import collections, re, statistics as st, sys

LINE = re.compile(r'^\s*(.+)-(\d+)\s+\(\s*(\d+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$')
STEPS = 'ABCDdeEFGH'


def marks(trace, primary, secondary, block):
    req, frame = 28 + block, block + 56
    out = []
    for line in open(trace):
        m = LINE.match(line)
        if not m:
            continue
        comm, _tid, tgid, cpu, ts, ev, rest = m.groups()
        if ev not in ('sys_enter', 'sys_exit'):
            continue
        t, mark = float(ts) * 1e6, None
        enter = ev == 'sys_enter'
        if comm == 'fio':
            if not enter and rest in ('NR 44 = %d' % block, 'NR 44 = %d' % req):
                mark = 'A'
            elif not enter and rest == 'NR 45 = 16':
                mark = 'H'
        elif tgid == primary:
            if not enter and rest in ('NR 0 = %d' % req, 'NR 0 = %d' % block):
                mark = 'B'
            elif enter and rest.startswith('NR 1 (') and ', %x,' % frame in rest:
                mark = 'C'
            elif not enter and rest == 'NR 0 = 40':
                mark = 'F'
            elif enter and (rest.startswith('NR 44 (') or rest.startswith('NR 1 (')) and ', 10, ' in rest:
                mark = 'G'
        elif tgid == secondary:
            if not enter and rest == 'NR 0 = %d' % frame:
                mark = 'D'
            elif rest.startswith('NR 18 '):
                mark = 'd' if enter else 'e'
            elif enter and rest.startswith('NR 1 (') and ', 28,' in rest:
                mark = 'E'
        if mark:
            out.append((t, mark, int(cpu)))
    return out


def main():
    trace, pidfile = sys.argv[1], sys.argv[2]
    block = int(sys.argv[3]) if len(sys.argv) > 3 else 16384
    pids = [l.strip().split('=', 1)[1] for l in open(pidfile) if '=' in l]
    ms = marks(trace, pids[0], pids[1], block)
    steps = collections.defaultdict(list)
    where = collections.defaultdict(lambda: collections.defaultdict(list))
    total = collections.defaultdict(list)
    want = STEPS + 'A'
    for j in range(len(ms) - len(STEPS)):
        w = ms[j:j + len(want)]
        if ''.join(x[1] for x in w) != want:
            continue
        key = 'fio%d P%d S%d S%d P%d' % (w[0][2], w[1][2], w[3][2], w[6][2], w[7][2])
        for a, b in zip(w, w[1:]):
            steps[a[1] + b[1]].append(b[0] - a[0])
            where[key][a[1] + b[1]].append(b[0] - a[0])
        total[key].append(w[-1][0] - w[0][0])
    n = sum(len(v) for v in total.values())
    if n == 0:
        sys.exit('no complete cycles: wrong pids or block size?')
    print('%d cycles; median µs per step: %s; cycle %.0f' % (
        n, ' '.join('%s %.0f' % (k, st.median(v)) for k, v in steps.items()),
        st.median([x for v in total.values() for x in v])))
    for key, v in sorted(total.items(), key=lambda kv: -len(kv[1]))[:5]:
        print('  %-20s %3.0f %% of cycles, cycle %.0f µs: %s' % (
            key, 100 * len(v) / n, st.median(v), ' '.join('%s %.0f' % (s, st.median(x)) for s, x in where[key].items())))


if __name__ == '__main__':
    main()
