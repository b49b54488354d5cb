"""What each rank runs in the gloo tests (``tests/test_distributed.py``).

Every trainer here also runs in one process (``world_size=1``, no
``torch.distributed``) on the concatenated batch: the reference a 2-process run
must match where the maths says so. Models and data are float64, so that
"equal" can be checked to 1e-10 after 50 steps.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.distributed as dist

STEPS = 50
BATCH = 32  # per step, split evenly over the ranks


def data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :1] * 2) + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x, y


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    ).double()


def batch(step: int, rank: int, world_size: int, fixed: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of step ``step``'s batch (the whole batch when world_size=1)."""
    x, y = data()
    start = 0 if fixed else (step * BATCH) % x.shape[0]
    per = BATCH // world_size
    lo = start + rank * per
    return x[lo:lo + per], y[lo:lo + per]


def full_tensors(params) -> list[torch.Tensor]:
    out = []
    for p in params:
        p = p.detach()
        out.append(p.full_tensor() if hasattr(p, "full_tensor") else p)
    return out


def checksum(tensors: list[torch.Tensor]) -> dict[str, Any]:
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    return {
        "sum": float(flat.sum()),
        "sha1": hashlib.sha1(flat.numpy().tobytes()).hexdigest()[:16],
        "values": flat.tolist(),
    }


# ---------------------------------------------------------------------------- harness
def sgd_train(rank: int, world_size: int, ddp: bool, steps: int = STEPS) -> dict[str, Any]:
    model = mlp()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for t in range(steps):
        x, y = batch(t, rank, world_size)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"params": checksum(list(model.parameters())), "losses": losses}


def fsdp2_probe() -> dict[str, Any]:
    """Does FSDP2's fully_shard run here (CPU, gloo)? One SGD step on a sharded MLP."""
    try:
        from torch.distributed.fsdp import fully_shard

        model = mlp()
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        kinds = sorted({type(p).__name__ for p in model.parameters()})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = batch(0, dist.get_rank(), dist.get_world_size())
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        return {"ok": True, "kinds": kinds, "error": None}
    except Exception as error:  # report, do not fail: the test decides what it means
        return {"ok": False, "kinds": [], "error": f"{type(error).__name__}: {error}"}


def units(rank: int, world_size: int) -> dict[str, Any]:
    """newt.distributed's reductions and checks, for real."""
    from newt import distributed as nd

    group = dist.group.WORLD
    out: dict[str, Any] = {}
    sums, means, flags = nd.reduce_phase(
        [torch.tensor(float(rank + 1)), torch.tensor(0.0)],
        [torch.tensor(2.0 * rank)],
        [torch.tensor(True), torch.tensor(rank == 0)],
        process_group=group)
    out["phase"] = [sums.tolist(), means.tolist(), flags.tolist()]
    out["mean"] = nd.reduce_mean(torch.tensor([float(rank), 4.0]), group).tolist()
    out["all"] = nd.reduce_all(torch.tensor([True, rank == 1]), group).tolist()
    out["resolve"] = nd.resolve_process_group(group) is group
    plain = torch.zeros(3)
    marked = torch.zeros(3)
    nd.mark_sharded(marked)
    out["weights"] = [nd.reduction_weight(plain, group), nd.reduction_weight(marked, group)]
    try:
        nd.check_sharded_without_group([plain, marked], None)
        out["check"] = None
    except RuntimeError as error:
        out["check"] = str(error)
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    fully_shard(model)
    weight = model[0].weight
    out["dtensor"] = [nd.is_sharded(weight), nd.reduction_weight(weight, group)]
    local = nd.local_tensor(weight)
    with torch.no_grad():
        local.fill_(rank + 1.0)  # in-place writes to the local shard reach the DTensor
    out["local_write"] = float(weight.full_tensor().sum())
    out["local_numel"] = local.numel()
    return out


def harness(rank: int, world_size: int) -> dict[str, Any]:
    return {"ddp_sgd": sgd_train(rank, world_size, ddp=True), "fsdp2_probe": fsdp2_probe(),
            "units": units(rank, world_size)}


# ---------------------------------------------------------------------------- newt
def newt_train(rank: int, world_size: int, mode: str, wrap: str,
               steps: int = STEPS, use_group: bool = True) -> dict[str, Any]:
    """50 newt(Adam) steps in ``mode`` (closure, closure_free, reuse) on a model that
    ``wrap`` makes data parallel ("ddp"), sharded ("fsdp2") or leaves alone ("none")."""
    import newt

    model = mlp()
    net: torch.nn.Module = model
    if wrap == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif wrap == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[2]):
            fully_shard(layer)
        net = fully_shard(model)
    group = dist.group.WORLD if world_size > 1 and use_group else None
    opt = newt.NewtOptimizer(torch.optim.Adam(net.parameters(), lr=1e-3),
                             reuse_lookahead=mode == "reuse", process_group=group)
    fixed = mode == "reuse"  # reuse needs a deterministic closure: one fixed batch
    x, y = batch(0, rank, world_size, fixed=True)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        return loss

    alphas, losses = [], []
    for t in range(steps):
        if not fixed:
            x, y = batch(t, rank, world_size)
        if mode == "closure_free":
            loss = closure()
            opt.step()
        else:
            loss = opt.step(closure)
        alphas.append([float(a) for a in opt.alphas])
        losses.append(float(loss.detach()))
    return {"alphas": alphas, "losses": losses,
            "params": checksum(full_tensors(model.parameters()))}


def newt_modes(rank: int, world_size: int, wrap: str, modes: list[str]) -> dict[str, Any]:
    return {mode: newt_train(rank, world_size, mode, wrap) for mode in modes}


# A model cut by features: rank r holds w[r·4:(r+1)·4] (marked as a shard), the bias is
# replicated, and a third group w2 is used on rank 0 only (no gradient on rank 1); at
# POISON_STEP only rank 1's shard has a NaN gradient, so both ranks must skip that step.
def _sharded_linear_parts(rank: int, world_size: int):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 1, generator=gen, dtype=torch.float64) * 0.3
    w2 = torch.randn(2, 1, generator=gen, dtype=torch.float64) * 0.3
    per = 8 // world_size
    local_w = torch.nn.Parameter(w[rank * per:(rank + 1) * per].clone())
    bias = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    local_w2 = torch.nn.Parameter(w2.clone())
    return local_w, bias, local_w2, per


POISON_STEP = 10
"""At this step rank 1's shard of the feature-sharded model gets a NaN gradient."""


def manual_shard_train(rank: int, world_size: int, mode: str, empty_group: bool = True,
                       steps: int = STEPS) -> dict[str, Any]:
    import newt
    from newt import distributed as nd

    local_w, bias, w2, per = _sharded_linear_parts(rank, world_size)
    group = dist.group.WORLD if world_size > 1 else None
    if group is not None:
        nd.mark_sharded([local_w, w2])
    opt = newt.NewtOptimizer(
        torch.optim.Adam([{"params": [local_w]}, {"params": [bias]}, {"params": [w2]}], lr=1e-2),
        process_group=group, controller="newton")
    x_all, _ = data()

    def forward(x: torch.Tensor) -> torch.Tensor:
        z = x[:, rank * per:(rank + 1) * per] @ local_w
        if rank == 0:
            z = z + x[:, :2] ** 2 @ w2
        elif not empty_group:  # a zero gradient instead of none
            z = z + 0 * w2.sum()
        if group is not None:  # the sum of the ranks' parts; gradient flows to the local one
            total = z.detach().clone()
            dist.all_reduce(total, group=group)
            z = z + (total - z.detach())
        return z + bias

    alphas = []
    for t in range(steps):
        lo = (t * BATCH) % x_all.shape[0]
        x, y = x_all[lo:lo + BATCH], torch.sin(x_all[lo:lo + BATCH, :1] * 2)

        def closure(x=x, y=y, t=t) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(forward(x), y)
            loss.backward()
            if t == POISON_STEP and local_w.grad is not None:  # NaN in rank 1's shard only
                with torch.no_grad():
                    if world_size > 1 and rank == 1:
                        local_w.grad.fill_(float("nan"))
                    elif world_size == 1:
                        local_w.grad[8 // 2:] = float("nan")
            return loss

        if mode == "closure_free":
            closure()
            opt.step()
        else:
            opt.step(closure)
        alphas.append([float(a) for a in opt.alphas])
    full, owned = [local_w.detach()], w2.detach().clone()
    if group is not None:  # gather the shards; w2 lives on rank 0
        parts = [torch.empty_like(local_w) for _ in range(world_size)]
        dist.all_gather(parts, local_w.detach(), group=group)
        full = [torch.cat(parts)]
        dist.broadcast(owned, src=0, group=group)
    return {"alphas": alphas, "params": checksum([*full, bias.detach(), owned])}


def manual_shard_modes(rank: int, world_size: int, modes: list[str],
                       empty_group: bool = True) -> dict[str, Any]:
    return {mode: manual_shard_train(rank, world_size, mode, empty_group) for mode in modes}


NEWT_MODES = ["closure", "closure_free", "reuse"]
SHARD_MODES = ["closure", "closure_free"]


def everything(rank: int, world_size: int, newt: bool) -> dict[str, Any]:
    """Every 2-process run in one launch (starting processes costs more than the runs)."""
    out = harness(rank, world_size)
    if newt:
        out["ddp"] = newt_modes(rank, world_size, "ddp", NEWT_MODES)
        out["fsdp2"] = newt_modes(rank, world_size, "fsdp2", NEWT_MODES)
        out["manual"] = manual_shard_modes(rank, world_size, SHARD_MODES, empty_group=True)
        out["without"] = ddp_without_group(rank, world_size)
    return out


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max((abs(u - v) for u, v in zip(a, b, strict=True)), default=0.0) if a else math.nan


def ddp_without_group(rank: int, world_size: int) -> dict[str, Any]:
    """DDP in closure mode with process_group=None: what the group prevents (and the
    misuse check that FSDP2 without a group runs into)."""
    import warnings

    import newt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out: dict[str, Any] = {"closure": newt_train(rank, world_size, "closure", "ddp",
                                                     use_group=False)}
    out["warned"] = any("without process_group" in str(c.message) for c in caught)
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    fully_shard(model)
    try:
        newt.NewtOptimizer(torch.optim.Adam(model.parameters()))
        out["fsdp2_error"] = None
    except RuntimeError as error:
        out["fsdp2_error"] = str(error)
    return out
