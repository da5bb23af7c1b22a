#!/usr/bin/env python3
"""A protocol-C write's hops by its place after a flush, and by whether
each hand-off crossed CPUs.

  flushhops.py TRACE PIDS

TRACE and PIDS as for ../2026-12-07-vm-session17/hops.py (abtool's
PERF=ftrace of the database job: /tmp/ftrace-NAME.txt and .pids), whose
marks this reuses. A cycle's place is the number of complete write cycles
since the last fdatasync either node returned from (0: the first write
after a flush). It prints each place's median steps, then for the four
hand-offs between processes (AB fio -> Primary, CD Primary -> Secondary,
EF Secondary -> Primary, GH Primary -> fio) the median with the two ends
on the same CPU and on different ones, for the first write after a flush
and for the later ones.
"""
import bisect, collections, os, statistics as st, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '2026-12-07-vm-session17'))
import hops  # noqa: E402

HANDOFFS = {'AB': (0, 1), 'CD': (2, 3), 'EF': (6, 7), 'GH': (8, 9)}


def main():
    trace, pidfile = sys.argv[1], sys.argv[2]
    pids = [l.strip().split('=', 1)[1] for l in open(pidfile) if '=' in l]
    ms = hops.marks(trace, pids[0], pids[1], 16384)
    fx = []
    for line in open(trace):
        m = hops.LINE.match(line)
        if m and m.group(6) == 'sys_exit' and m.group(7).startswith('NR 75 ') and m.group(3) in pids[:2]:
            fx.append(float(m.group(5)) * 1e6)
    fx.sort()
    want = hops.STEPS + 'A'
    steps = collections.defaultdict(lambda: collections.defaultdict(list))
    cycle = collections.defaultdict(list)
    cross = collections.defaultdict(list)
    last, k = None, 0
    for j in range(len(ms) - len(hops.STEPS)):
        w = ms[j:j + len(want)]
        if ''.join(x[1] for x in w) != want:
            continue
        i = bisect.bisect_left(fx, w[0][0])
        lf = fx[i - 1] if i else None
        k = k + 1 if lf == last else 0
        last = lf
        for a, b in zip(w, w[1:]):
            steps[min(k, 7)][a[1] + b[1]].append(b[0] - a[0])
        cycle[min(k, 7)].append(w[-1][0] - w[0][0])
        for h, (a, b) in HANDOFFS.items():
            cross[(h, k == 0, w[a][2] != w[b][2])].append(w[b][0] - w[a][0])
    if not cycle:
        sys.exit('no complete cycles: wrong pids?')
    for p in sorted(cycle):
        print('write %d after the flush: %4d cycles, median %4.0f µs: %s' % (
            p + 1, len(cycle[p]), st.median(cycle[p]), ' '.join('%s %.0f' % (s, st.median(x)) for s, x in steps[p].items())))
    for h in HANDOFFS:
        cells = []
        for first in (True, False):
            for x in (False, True):
                v = cross[(h, first, x)]
                cells.append('%s, %s CPU: %s' % ('first' if first else 'later', 'other' if x else 'same',
                                                 '%d × %.0f µs' % (len(v), st.median(v)) if v else '-'))
        print('%s  %s' % (h, ';  '.join(cells)))


if __name__ == '__main__':
    main()
