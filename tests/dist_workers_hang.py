"""Workers that misbehave on purpose: the harness must turn them into test failures."""

from __future__ import annotations

import torch
import torch.distributed as dist


def hang(rank: int, world_size: int) -> None:
    if rank == 0:  # rank 1 never joins the collective: rank 0 waits
        dist.all_reduce(torch.zeros(1))
    else:
        import time

        time.sleep(600)


def fail_on_rank_1(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ZeroDivisionError("rank 1 fails")
    dist.all_reduce(torch.zeros(1))  # rank 0 waits for it until the harness kills it
