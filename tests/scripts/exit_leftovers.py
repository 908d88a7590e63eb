"""A script that ends leaving behind what real training scripts leave alive.

``exit_leftovers.py OUT_DIR STATUS``: a gloo process group (world size 1) and a DDP
that is never freed, a compiled graph, weak proxies to dead objects, files with
unflushed writes, a non-daemon thread still working, an idle thread pool, a
daemon thread blocked for ever, and an object that aborts the process if the
interpreter tears it down (a stand-in for gloo's teardown abort).  Then it ends
with ``STATUS``: an integer, ``none`` (falls off the end) or any other text
(``sys.exit(text)``).
"""
import concurrent.futures
import os
import sys
import threading
import time
import weakref

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

out, status = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'rendezvous')}", rank=0, world_size=1)
model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)))
for _ in range(3):
    model(torch.randn(4, 8)).sum().backward()
compiled = torch.compile(lambda x: torch.sin(x) * 2, backend="aot_eager")
compiled(torch.randn(4))


class Thing:
    pass


gone = Thing()
proxies = [weakref.proxy(gone), weakref.proxy(Thing())]
del gone

log = open(os.path.join(out, "log.txt"), "w")
log.write("left open, never flushed\n")
held_by_thread = open(os.path.join(out, "thread.txt"), "w")
held_by_thread.write("only a thread holds me\n")
blocked = threading.Thread(target=threading.Event().wait, daemon=True)
blocked.file = held_by_thread
blocked.start()
del held_by_thread, blocked


def late_writer():
    time.sleep(0.5)
    with open(os.path.join(out, "late.txt"), "w") as f:
        f.write("written by a non-daemon thread after the script ended\n")


threading.Thread(target=late_writer).start()
pool = concurrent.futures.ThreadPoolExecutor(2)
pool.submit(time.sleep, 0.1)


class AbortsAtTeardown:
    def __del__(self):
        os.abort()


keep = AbortsAtTeardown()
print("script done", flush=True)
if status == "none":
    pass
elif status.lstrip("-").isdigit():
    sys.exit(int(status))
else:
    sys.exit(status)
