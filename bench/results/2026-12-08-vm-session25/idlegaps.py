#!/usr/bin/env python3
"""idlegaps.py TRACE: from an abtool PERF=ftrace dump (sched_switch,
sched_wakeup, sched_migrate_task), the first four stretches over 1 ms in
which a CPU stayed idle, each with the scheduler events on both CPUs
around and during it (offsets in us from the stretch's start). Session
25 used it to see what the other CPU ran meanwhile (protocol A, 4k
QD32: fio and the Primary's NBD thread taking turns on one CPU)."""
import re,sys
tr=sys.argv[1]
rx=re.compile(r'^\s*(.+?)-(\d+)\s+\(\s*(\d+|-+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$')
ev=[]
for line in open(tr):
    m=rx.match(line)
    if not m: continue
    comm,tid,tgid,cpu,ts,e,rest=m.groups()
    if e in('sched_switch','sched_wakeup','sched_migrate_task'):
        ev.append((float(ts)*1e6,int(cpu),e,rest,comm))
idle={}
shown=0
gaps=[]
for i,(ts,cpu,e,rest,comm) in enumerate(ev):
    if e!='sched_switch': continue
    if 'next_pid=0 ' in rest: idle[cpu]=(ts,i)
    elif cpu in idle:
        t0,j=idle.pop(cpu)
        gaps.append(ts-t0)
        if ts-t0>1000 and shown<4:
            shown+=1
            print('=== CPU%d idle %.0f us'%(cpu,ts-t0))
            for k in range(max(0,j-3),min(i+2,len(ev))):
                if k-j>25 and k<i-3: continue
                t,c,ee,r,cm=ev[k]; print('  %+8.0f [%d] %s %s %s'%(t-t0,c,cm,ee,r[:150]))
span=(ev[-1][0]-ev[0][0]) if ev else 1
big=[g for g in gaps if g>500]
print('idle %.1f%% of 2 CPUs over %.0f ms: %d stretches, %d over 0.5 ms holding %.0f%% of the idle time'%(100*sum(gaps)/(2*span),span/1000,len(gaps),len(big),100*sum(big)/max(sum(gaps),1)))
