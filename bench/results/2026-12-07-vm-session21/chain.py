#!/usr/bin/env python3
"""chain.py TRACE [PIDS]: the steps of protocol C's 1 MiB writes in an
abtool PERF=ftrace dump (../2026-12-07-vm-session16/abtool.go), from the
system calls that carry them. PIDS (default: TRACE with .pids for .txt)
names the Primary (first line) and the Secondary (second).

Each write is anchored on its local pwrite on each node (one per write, in
order); the Primary's fds are found by their traffic: the NBD socket reads
the most bytes, the peer socket writes the most, the file takes pwrites;
the Secondary's peer socket reads the most. Prints, for the writes of the
trace, the median and 10th and 90th percentiles of each step, then the
gaps between consecutive Primary pwrites (the stalls)."""
import bisect, collections, re, sys

tr = sys.argv[1]
pidf = sys.argv[2] if len(sys.argv) > 2 else tr.rsplit('.', 1)[0] + '.pids'
nodes = [l.strip().split('=') for l in open(pidf) if l.strip()]
names = {int(p): n for n, p in nodes}
prim, sec = nodes[0][0], nodes[1][0]
rx = re.compile(r'^\s*(.+?)-(\d+)\s+\(\s*(\d+|-+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$')
READ, WRITE, PWRITE = 0, 1, 18
ent, calls = {}, collections.defaultdict(list)
for line in open(tr):
    m = rx.match(line)
    if not m or not m.group(3).isdigit() or int(m.group(3)) not in names:
        continue
    pid, ts, ev, rest = int(m.group(2)), float(m.group(5)), m.group(6), m.group(7)
    proc = names[int(m.group(3))]
    if ev == 'sys_enter':
        mm = re.match(r'NR (\d+) \((\w+)', rest)
        ent[pid] = (int(mm.group(1)), int(mm.group(2), 16), ts)
    elif ev == 'sys_exit' and pid in ent:
        nr, fd, t0 = ent.pop(pid)
        r = int(rest.split('=')[1])
        if nr in (READ, WRITE, PWRITE) and r > 0:
            calls[(proc, nr, fd)].append((t0, ts, r))

def busiest(proc, nr):
    ks = [k for k in calls if k[0] == proc and k[1] == nr]
    return max(ks, key=lambda k: sum(c[2] for c in calls[k]))[2]

pnbd, ppeer, pfile = busiest(prim, READ), busiest(prim, WRITE), busiest(prim, PWRITE)
speer, sfile = busiest(sec, READ), busiest(sec, PWRITE)
Ppw, Spw = calls[(prim, PWRITE, pfile)], calls[(sec, PWRITE, sfile)]
Sack, Pack = calls[(sec, WRITE, speer)], calls[(prim, READ, ppeer)]
Prep, Psend = calls[(prim, WRITE, pnbd)], calls[(prim, WRITE, ppeer)]
Sread, Preq = calls[(sec, READ, speer)], calls[(prim, READ, pnbd)]
T = max(c[1] for v in calls.values() for c in v) - min(c[0] for v in calls.values() for c in v)
print('%s: NBD fd %d, peer fd %d, file fd %d; %s: peer fd %d, file fd %d; %d writes in %.3f s' % (
    prim, pnbd, ppeer, pfile, sec, speer, sfile, len(Ppw), T))

def after(lst, t):
    i = bisect.bisect_left([x[0] for x in lst], t)
    return lst[i] if i < len(lst) else None

def before(lst, t):
    i = bisect.bisect_left([x[0] for x in lst], t)
    return lst[i - 1] if i > 0 else None

rows = collections.defaultdict(list)
for k in range(5, min(len(Ppw), len(Spw)) - 5):
    pe, px, _ = Ppw[k]
    se, sx, _ = Spw[k]
    ack = after(Sack, sx)
    pa = ack and after(Pack, ack[1])
    rp = pa and after(Prep, pa[1])
    rq, sr = before(Preq, pe), before(Sread, se)
    if not (rp and rq and sr):
        continue
    rows['Primary: request read -> its pwrite starts'].append(pe - rq[1])
    rows['Primary: pwrite'].append(px - pe)
    rows['Primary pwrite starts -> Secondary pwrite starts'].append(se - pe)
    rows['Secondary: frame read -> its pwrite starts'].append(se - sr[1])
    rows['Secondary: pwrite'].append(sx - se)
    rows['Secondary: pwrite ends -> ack written'].append(ack[1] - sx)
    rows['ack written -> Primary has read it'].append(pa[1] - ack[1])
    rows['Primary: ack read -> reply written'].append(rp[1] - pa[1])
    rows['Primary pwrite starts -> reply written'].append(rp[1] - pe)
    rows['Primary pwrite k -> k+1'].append(Ppw[k + 1][0] - pe)
for k, v in rows.items():
    v.sort()
    print('%-50s p50 %6.0f  p10 %6.0f  p90 %6.0f us' % (k, 1e6 * v[len(v) // 2], 1e6 * v[len(v) // 10], 1e6 * v[len(v) * 9 // 10]))
gaps = [Ppw[k + 1][0] - Ppw[k][0] for k in range(len(Ppw) - 1)]
big = [g for g in gaps if g > 1.5e-3]
print('%d of %d gaps between Primary pwrites over 1.5 ms, %.1f %% of the trace' % (len(big), len(gaps), 100 * sum(big) / T))
