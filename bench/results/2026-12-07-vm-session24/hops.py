#!/usr/bin/env python3
"""hops.py TRACE: for a QD1 job traced by abtool PERF=ftrace, the chain of
one write through the Primary and the Secondary, by syscall exits, each
offset (us) from the Primary's pwrite of the data (the anchor), medians
over all cycles; plus the CPU each step ran on."""
import re, sys, collections, statistics
tr=sys.argv[1]; pidf=tr.rsplit('.',1)[0]+'.pids'
nodes=[l.strip().split('=') for l in open(pidf) if l.strip()]
names={int(p):n for n,p in nodes}
prim, sec = nodes[0][0], nodes[1][0]
rx = re.compile(r'^\s*(.+?)-(\d+)\s+\(\s*(\d+|-+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$')
NR={0:'read',1:'write',18:'pwrite',75:'fdatasync',44:'sendto',45:'recvfrom',20:'writev',19:'readv',7:'poll',271:'ppoll'}
ent={}; ev=[]
for line in open(tr):
    m=rx.match(line)
    if not m: continue
    comm,tid,tgid,cpu,ts,e,rest=m.groups()
    if e not in ('sys_enter','sys_exit'): continue
    tid=int(tid); ts=float(ts)*1e6
    who=names.get(int(tgid)) if tgid.isdigit() else None
    if who is None and comm.startswith('fio'): who='fio'
    if who is None: continue
    if e=='sys_enter':
        mm=re.match(r'NR (\d+) \((\w+)',rest)
        if mm: ent[tid]=(int(mm.group(1)),int(mm.group(2),16),ts)
    elif tid in ent:
        nr,fd,t0=ent.pop(tid)
        r=int(rest.split('=')[1])
        if nr in NR and r>=0:
            ev.append((ts,t0,who,NR[nr],fd,r,int(cpu)))
ev.sort()
# anchors: primary pwrite exits
anch=[i for i,e in enumerate(ev) if e[2]==prim and e[3]=='pwrite']
offs=collections.defaultdict(list); cpus=collections.defaultdict(collections.Counter); durs=collections.defaultdict(list)
for a,b in zip(anch,anch[1:]):
    t=ev[a][0]
    seen=collections.Counter()
    for e in ev[a+1:b]:
        k=(e[2],e[3],e[4]); seen[k]+=1
        key='%s %s fd%d #%d'%(e[2],e[3],e[4],seen[k])
        offs[key].append(e[0]-t); durs[key].append(e[0]-e[1]); cpus[key][e[6]]+=1
    offs['NEXT anchor'].append(ev[b][0]-t)
n=len(anch)-1
rows=[(statistics.median(v),k,len(v)) for k,v in offs.items() if len(v)>0.3*n]
rows.sort()
print('cycles',n)
for med,k,c in rows:
    d=statistics.median(durs[k]) if k in durs else 0
    print('%8.1f  (dur %6.1f)  %-35s n=%d cpu=%s'%(med,d,k,c,dict(cpus[k]) if k in cpus else ''))
