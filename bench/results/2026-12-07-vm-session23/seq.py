#!/usr/bin/env python3
"""seq.py TRACE START N: the system calls of the Primary and the Secondary
in an abtool PERF=ftrace dump (../2026-12-07-vm-session16/abtool.go; the
pids from TRACE with .pids for .txt), in time order, from the START-th
fdatasync of the Primary on, N of them: start (us after that fdatasync),
duration (us), node, thread, CPU, call, fd, result. Waits shorter than 5 us
(epoll_pwait, nanosleep, futex) are left out."""
import re, sys, collections
tr=sys.argv[1]; pidf=tr.rsplit('.',1)[0]+'.pids'
nodes=[l.strip().split('=') for l in open(pidf) if l.strip()]
names={int(p):n for n,p in nodes}
rx = re.compile(r'^\s*(.+?)-(\d+)\s+\(\s*(\d+|-+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$')
NR={0:'read',1:'write',18:'pwrite',75:'fdatasync',74:'fsync',232:'epoll_wait',281:'epoll_pwait',202:'futex',35:'nanosleep',44:'sendto',45:'recvfrom',20:'writev',19:'readv',230:'clock_nanosleep'}
ent={}
ev=[]
for line in open(tr):
    m=rx.match(line)
    if not m: continue
    comm,tid,tgid,cpu,ts,e,rest=m.groups()
    if e=='sched_switch' or e=='sched_wakeup':
        continue
    if not tgid.isdigit() or int(tgid) not in names: continue
    tid=int(tid); ts=float(ts)
    if e=='sys_enter':
        mm=re.match(r'NR (\d+) \((\w+)',rest)
        ent[tid]=(int(mm.group(1)),int(mm.group(2),16),ts)
    elif e=='sys_exit' and tid in ent:
        nr,fd,t0=ent.pop(tid)
        r=int(rest.split('=')[1])
        ev.append((t0,ts,names[int(tgid)],tid,int(cpu),NR.get(nr,str(nr)),fd,r))
ev.sort()
start=int(sys.argv[2]); n=int(sys.argv[3])
# find first fdatasync after start
fs=[i for i,e in enumerate(ev) if e[5]=='fdatasync' and e[2]==nodes[0][0]]
i0=fs[start]
t0=ev[i0][0]
for e in ev[i0:i0+n]:
    if e[5] in ('epoll_pwait','nanosleep','futex') and e[1]-e[0]<5e-6: continue
    print('%8.1f %8.1f %-6s %6d cpu%d %-11s fd%-3d r=%d' % ((e[0]-t0)*1e6,(e[1]-e[0])*1e6,e[2],e[3],e[4],e[5],e[6],e[7]))
