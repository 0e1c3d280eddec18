"""Run one function in N local processes joined by a torch.distributed process group (gloo on CPU, NCCL on GPUs).

``compass train --nproc N`` calls ``launch(train_fn, N, ...)``; tests call it to check that N processes give what one
process gives. torchrun would do the same from a shell, but the CLI wants a Python call that returns each rank's
result, so this is a thin layer over ``torch.multiprocessing.start_processes`` (spawn): pick a free port, set the
env:// rendezvous variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, as torchrun and the HF/accelerate
trainers expect), init the group, run, hand the return value back through a file.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compass.errors import CompassError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    fn: Callable[..., Any],
    nproc: int,
    port: int,
    out_dir: str,
    threads: int,
    backend: str,
    timeout_s: float,
    first_device: int,
    args: tuple,
) -> None:
    local_rank = first_device + rank if backend == "nccl" else rank
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
    )
    # N processes on a few cores: without this each one starts a thread per core and they thrash.
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # NCCL binds a process to the current device: one GPU per process
    dist.init_process_group(
        backend, rank=rank, world_size=nproc, timeout=datetime.timedelta(seconds=timeout_s)
    )
    try:
        result = fn(*args)
        # written whole, then renamed: `launch` trusts a result file only if it exists, so never a partial one
        torch.save(result, Path(out_dir) / f"rank{rank}.pt.part")
        os.replace(Path(out_dir) / f"rank{rank}.pt.part", Path(out_dir) / f"rank{rank}.pt")
        # every rank done before any tears the group down: a rank that destroyed its gloo group while another was
        # still in its last collective aborted ("terminate called without an active exception", once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable[..., Any],
    nproc: int,
    *args: Any,
    threads_per_proc: int | None = None,
    backend: str = "gloo",
    timeout_s: float = 600.0,
    start_method: str = "spawn",
    first_device: int = 0,
) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` spawned processes inside an initialised process group; return the results
    by rank. Inside ``fn``, ``torch.distributed.get_rank()`` tells the rank.

    ``fn`` and ``args`` cross a process boundary: ``fn`` must be a module-level function and the arguments and the
    return value picklable (results travel through ``torch.save``, so tensors are fine). A rank that raises makes
    ``launch`` raise ``torch.multiprocessing.ProcessRaisedException`` carrying that rank's traceback.

    ``start_method="fork"`` skips re-importing torch and the model libraries in every child (seconds each on a
    busy CPU); it is safe here because each child sets its own thread count before any torch op, but spawn stays
    the default since a parent holding threads or a GPU context must not fork.

    ``backend="nccl"``: process r runs on GPU ``first_device + r`` (its LOCAL_RANK, which the transformers trainer
    and accelerate read to pick the device).
    """
    if nproc < 1:
        raise CompassError(f"--nproc must be >= 1, got {nproc}")
    if getattr(fn, "__name__", "<lambda>") == "<lambda>" or "<locals>" in getattr(fn, "__qualname__", ""):
        raise CompassError(f"launch() needs a module-level function (spawned processes import it), got {fn!r}")
    threads = threads_per_proc or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="compass-launch-") as out_dir:
        files = [Path(out_dir) / f"rank{r}.pt" for r in range(nproc)]
        try:
            mp.start_processes(
                _worker,
                args=(fn, nproc, free_port(), out_dir, threads, backend, timeout_s, first_device, args),
                nprocs=nproc,
                join=True,
                start_method=start_method,
            )
        except mp.ProcessExitedException as e:
            # killed by a signal or exit code, not by a Python error (that is ProcessRaisedException, re-raised
            # as is). If every rank had saved its result, the work was done and only the teardown of the process
            # group crashed: keep the results, and say so. Otherwise the failure stands.
            if not all(f.exists() for f in files):
                raise
            warnings.warn(f"launch: {e} after every rank had saved its result (a crash while tearing down the "
                          "process group): the results are kept", RuntimeWarning, stacklevel=2)
        return [torch.load(f, weights_only=False) for f in files]
