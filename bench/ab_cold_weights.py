"""Few-row GEMMs against packed weights with the weights cold (MiniLM's 24 layer GEMMs at M = 32, 42 MB
cycled, as one sentence meets them) and hot (the same four weights again). Run it with two builds of
coreformer alternately (PYTHONPATH) to compare them; prints median ms and GFLOP/s of 9 rounds."""
import time

import numpy as np

from coreformer import ops

rng = np.random.default_rng(0)
M = 32
ws = []
for i in range(6):
    for (n,k) in [(1152,384),(384,384),(1536,384),(384,1536)]:
        ws.append((ops.pack_weight(rng.standard_normal((n,k),dtype=np.float32)), k, n))
xs = {k: rng.standard_normal((M,k),dtype=np.float32) for k in (384,1536)}
fl = sum(2*M*k*n for _,k,n in ws)
def cold():
    for w,k,n in ws: ops.linear(xs[k], w)
def hot():
    w,k,n = ws[2]; w2,k2,n2 = ws[3]
    for i in range(6):
        ops.linear(xs[384], ws[0][0]); ops.linear(xs[384], ws[1][0]); ops.linear(xs[k], w); ops.linear(xs[k2], w2)
for f in (cold, hot): 
    for _ in range(30): f()
res = {"cold":[], "hot":[]}
for r in range(9):
    for name,f in (("cold",cold),("hot",hot)):
        t=time.perf_counter()
        for _ in range(50): f()
        res[name].append((time.perf_counter()-t)/50)
for name,v in res.items(): print(name, "ms %.3f"%(np.median(v)*1e3), "GFLOP/s %.1f"%(fl/np.median(v)/1e9))
