"""Run a script with stock DDP built with given bucket caps (for comparisons).

``python stock_ddp_caps.py CAPS SCRIPT ARGS...``: every
``torch.nn.parallel.DistributedDataParallel`` the script builds is stock DDP
constructed with ``bucket_cap_mb_list=CAPS`` (comma-separated MiB; the script's
own ``bucket_cap_mb`` is dropped); ``CAPS`` = ``default`` leaves the script's
arguments alone.  A trivial subclass carries the caps, so ``isinstance`` checks of
frameworks still pass; it adds nothing else.  The process ends as gdat-run's
workers end (:func:`gdat.worker.end_process`), skipping the interpreter teardown
where torch's gloo can abort a finished run ("terminate called without an active
exception"), so that a reference run fails only when its training does.
"""
import runpy
import sys

import torch.nn.parallel
import torch.nn.parallel.distributed

STOCK = torch.nn.parallel.DistributedDataParallel
caps, script = sys.argv[1], sys.argv[2]


class DistributedDataParallel(STOCK):
    def __init__(self, *args, **kwargs):
        if caps != "default":
            kwargs.update(bucket_cap_mb=None, bucket_cap_mb_list=[float(c) for c in caps.split(",")])
        super().__init__(*args, **kwargs)


torch.nn.parallel.DistributedDataParallel = DistributedDataParallel
torch.nn.parallel.distributed.DistributedDataParallel = DistributedDataParallel
sys.argv = sys.argv[2:]
sys.path[0] = __import__("os").path.dirname(__import__("os").path.abspath(script))
from gdat.worker import end_process  # noqa: E402

try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    end_process(e.code if isinstance(e.code, int) else int(e.code is not None))
end_process(0)
