"""Run a function on N local CPU processes joined by gloo, and collect what each returns.

``run_workers("dist_workers:some_function", world_size=2, **kwargs)`` starts
``world_size`` Python processes running this file as a script, each with the
environment ``torch.distributed.run`` would give it (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, gloo on the loopback
interface). Each process calls ``init_process_group("gloo")`` with a 30 s
collective timeout, then ``some_function(rank=..., world_size=..., **kwargs)``,
and writes the JSON of its return value to a file the launcher reads back.

A hang cannot hang the test run: the launcher kills every process after
``timeout`` seconds (or as soon as one of them fails, since the others would only
wait for it) and raises with each rank's stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class WorkerError(AssertionError):
    """A worker failed or the group hung; the message holds every rank's stderr."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return None


def run_workers(target: str, world_size: int = 2, timeout: float = 90.0,
                **kwargs: Any) -> list[Any]:
    """Run ``module:function`` on ``world_size`` gloo processes; return each rank's result."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="newt-dist-") as tmp:
        out = Path(tmp)
        env = {
            **os.environ,
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        interface = _loopback_interface()
        if interface is not None:
            env["GLOO_SOCKET_IFNAME"] = interface
        procs = []
        for rank in range(world_size):
            stderr = open(out / f"stderr{rank}.txt", "w")  # closed below
            procs.append((subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), target, str(out),
                 json.dumps(kwargs)],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.DEVNULL, stderr=stderr, cwd=str(ROOT),
            ), stderr))
        deadline = time.monotonic() + timeout
        failed = hung = False
        try:
            while True:
                codes = [p.poll() for p, _ in procs]
                if all(c == 0 for c in codes):
                    break
                if any(c not in (None, 0) for c in codes):
                    failed = True
                    break
                if time.monotonic() > deadline:
                    hung = True
                    break
                time.sleep(0.05)
        finally:
            for p, stderr in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                stderr.close()
        if failed or hung:
            logs = "\n".join(
                f"--- rank {r} (exit {p.returncode}) ---\n"
                + (out / f"stderr{r}.txt").read_text()[-3000:]
                for r, (p, _) in enumerate(procs))
            what = f"hung for more than {timeout:.0f} s" if hung else "failed"
            raise WorkerError(f"{target} on {world_size} gloo processes {what}:\n{logs}")
        return [json.loads((out / f"result{r}.json").read_text()) for r in range(world_size)]


def _worker_main(target: str, out: str, kwargs_json: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    try:
        result = function(rank=rank, world_size=world_size, **json.loads(kwargs_json))
        Path(out, f"result{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        _worker_main(*sys.argv[1:4])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # do not wait for the other ranks in atexit handlers
