r"""The reductions a data-parallel or sharded newt run needs.

Every decision newt takes in a step (the Newton factor, the loss-increase
check, the undo of a non-finite step, the reuse of the lookahead) is a
function of a few scalars per parameter group: the inner products
$A = \langle\nabla L(\theta_t), d\rangle$ and $B = \langle\nabla L(\theta_{t+1}), d\rangle$
with $d = \theta_t - \theta_{t+1}$, the losses $L(\theta_t)$, $L(\theta_{t+1})$
and finiteness flags. When several processes train one model, each of them
sees only part of these scalars:

- **data parallel** (DDP: replicated parameters, gradients averaged by DDP's
  all-reduce): the inner products are already equal on every rank, but each
  rank's closure returns the loss of *its* batch;
- **sharded** (FSDP2's `fully_shard`, ZeRO-style or tensor-parallel shards:
  each rank holds part of a group): each rank holds a partial sum of each
  inner product, and its loss.

With ``process_group`` the optimizer stacks, per phase of a step, all groups'
scalars into one 1-D tensor and reduces it with one collective
(`reduce_phase`): inner products are summed, each tensor's local contribution
weighted so that replicated tensors count once (`reduction_weight`), losses
are averaged (the loss of the concatenated batch when the ranks' batches have
equal sizes), flags are and-ed. Every rank then holds the same bits and takes
the same decision. The sequence of collectives must not depend on the data:
a group with no gradient on a rank contributes zeros, it does not skip the
collective.

Cost: one all-reduce of a few float64 scalars per phase (2–3 per closure step,
1–2 per closure-free step), latency-bound: tens of microseconds on loopback,
one network round trip across machines; nothing parameter-sized is moved.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_sum",
    "check_sharded_without_group",
    "is_sharded",
    "local_tensor",
    "mark_sharded",
    "reduce_all",
    "reduce_mean",
    "reduce_phase",
    "reduction_weight",
    "resolve_process_group",
    "warn_if_losses_unreduced",
    "world_size",
]

_MARK = "_newt_sharded"

try:  # DTensor (FSDP2, tensor parallel); absent from builds without distributed support
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - every supported torch build has it
    DTensor = None  # type: ignore[assignment,misc]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def resolve_process_group(process_group: object, where: str = "NewtOptimizer"
                          ) -> dist.ProcessGroup | None:
    """Validate a ``process_group`` argument: ``None`` or a `torch.distributed` group.

    Raises:
        TypeError: ``process_group`` is neither.
        RuntimeError: a group was given but `torch.distributed` is not initialised.
    """
    if process_group is None:
        return None
    if not dist.is_available():
        raise RuntimeError(
            f"{where}(process_group=...): this torch build has no torch.distributed; "
            "pass process_group=None"
        )
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"{where}(process_group=...) must be None or a torch.distributed ProcessGroup "
            f"(e.g. torch.distributed.group.WORLD or torch.distributed.new_group(...)), "
            f"got {type(process_group).__name__}"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            f"{where}(process_group=...): torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) before building the optimizer"
        )
    return process_group


def world_size(process_group: dist.ProcessGroup | None) -> int:
    """How many processes the reductions run over (1 without a group)."""
    if process_group is None or not _initialized():
        return 1
    return dist.get_world_size(process_group)


# ---------------------------------------------------------------------------- sharding
def mark_sharded(tensors: Tensor | Iterable[Tensor]) -> None:
    """Declare plain tensors as this rank's shard (ZeRO-style or manual model parallel).

    The inner products over marked tensors are summed over the ranks (each rank
    holds a different part); unmarked plain tensors are taken as replicated
    (DDP), and DTensors say themselves how they are placed.
    """
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"mark_sharded(...) expects tensors, got {type(t).__name__}")
        setattr(t, _MARK, True)


def _shard_count(tensor: Tensor) -> int | None:
    """Into how many pieces a DTensor is cut across its mesh (``None``: not a DTensor)."""
    if DTensor is None or not isinstance(tensor, DTensor):
        return None
    mesh = tensor.device_mesh
    return math.prod(mesh.size(i) for i, placement in enumerate(tensor.placements)
                     if placement.is_shard())


def is_sharded(tensor: Tensor) -> bool:
    """True for a DTensor sharded over some mesh dimension or a tensor `mark_sharded` marked."""
    count = _shard_count(tensor)
    if count is not None:
        return count > 1
    return bool(getattr(tensor, _MARK, False))


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's part of ``tensor``: the local shard of a DTensor (sharing its
    storage, so in-place writes reach the DTensor), else ``tensor`` itself."""
    if DTensor is not None and isinstance(tensor, DTensor):
        return tensor._local_tensor
    return tensor


def reduction_weight(tensor: Tensor, process_group: dist.ProcessGroup | None) -> float:
    r"""The weight of this rank's contribution to a sum over the group.

    $w = k/n$ for a tensor cut into $k$ pieces held by the $n$ ranks of the group
    (each piece held by $n/k$ ranks), so that $\sum_{\text{ranks}} w\,x_{\text{local}}$
    counts every element once: $1/n$ for a replicated tensor (DDP), $1$ for a
    tensor sharded over the whole group (FSDP2 over the world, `mark_sharded`),
    $1/2$ for HSDP with 2 replicas. Without a group: 1.
    """
    n = world_size(process_group)
    if n == 1:
        return 1.0
    count = _shard_count(tensor)
    if count is None:
        count = n if getattr(tensor, _MARK, False) else 1
    if n % count:
        raise RuntimeError(
            f"a tensor is cut into {count} shards but the process group has {n} ranks; "
            "pass the process group its device mesh spans"
        )
    return count / n


def check_sharded_without_group(params: Iterable[Tensor],
                                process_group: dist.ProcessGroup | None,
                                where: str = "NewtOptimizer") -> None:
    """Raise if parameters are sharded across processes and no group reduces them.

    Cheap misuse detection: with `torch.distributed` initialised over more than
    one process, ``process_group=None`` and a sharded parameter (a DTensor
    sharded by FSDP2 or tensor parallel, or one marked by `mark_sharded`),
    each rank would compute α from its own shard: the ranks' α differ.

    Raises:
        RuntimeError: in that case, saying to pass ``process_group``.
    """
    if process_group is not None or not _initialized() or dist.get_world_size() == 1:
        return
    sharded = sum(1 for p in params if is_sharded(p))
    if sharded:
        raise RuntimeError(
            f"{where}: {sharded} parameter(s) are sharded across the {dist.get_world_size()} "
            "processes (FSDP2/DTensor or mark_sharded) but process_group is None, so each "
            "rank would learn α from its own shard and the ranks would diverge; pass "
            f"{where}(..., process_group=torch.distributed.group.WORLD) (or the group "
            "the parameters are sharded over)"
        )


def warn_if_losses_unreduced(process_group: dist.ProcessGroup | None,
                             where: str = "NewtOptimizer.step(closure)") -> bool:
    """Warn when a closure step runs in a multi-process job without a group.

    Under DDP each rank's closure returns its own batch's loss, so the
    loss-increase check and the reuse decision differ across ranks (the ranks
    diverge, and with ``reuse_lookahead=True`` they can deadlock). Ranks that
    train independent models can ignore it. Returns whether it warned.
    """
    if process_group is not None or not _initialized() or dist.get_world_size() == 1:
        return False
    warnings.warn(
        f"{where} in a job of {dist.get_world_size()} processes without process_group: "
        "each rank decides on its own loss; if the ranks train one model (DDP, FSDP), pass "
        "NewtOptimizer(..., process_group=torch.distributed.group.WORLD)",
        RuntimeWarning, stacklevel=3,
    )
    return True


# ---------------------------------------------------------------------------- reductions
def all_reduce_sum(tensor: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    """Sum a stacked 1-D tensor of per-group scalars over the group, in place.

    One collective, whatever the values: callers stack every group's scalars
    (zeros for a group with nothing local) so that all ranks issue the same
    collectives in the same order. Without a group (or with one process) the
    tensor is returned untouched.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"all_reduce_sum(tensor=...) must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != 1:
        raise ValueError(
            f"all_reduce_sum(tensor=...) must be 1-D (one stacked tensor per phase), got shape "
            f"{tuple(tensor.shape)}; torch.stack the per-group scalars first"
        )
    if world_size(process_group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group)
    return tensor


def _collective_device(process_group: dist.ProcessGroup | None,
                       values: Sequence[Tensor]) -> torch.device:
    """Where to pack a phase: NCCL reduces CUDA tensors only; otherwise the inputs' device
    (CPU when a rank has nothing to contribute, which gloo accepts)."""
    if world_size(process_group) > 1 and dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return values[0].device if values else torch.device("cpu")


def reduce_phase(
    sums: Sequence[Tensor] = (),
    means: Sequence[Tensor] = (),
    all_true: Sequence[Tensor] = (),
    *,
    process_group: dist.ProcessGroup | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One collective for a phase: sums, means and logical-ands of 0-d tensors.

    The values are packed into one float64 vector ``[sums, means, count of
    False flags]`` and summed over the group; means are divided by the group
    size, and a flag is true when no rank's was false (counts are exact in
    float64).

    Args:
        sums: 0-d tensors to sum (weighted inner products).
        means: 0-d tensors to average (losses).
        all_true: 0-d bool tensors to and (finiteness, keep decisions).
        process_group: the group, or ``None`` (values returned as they are).

    Returns:
        ``(sums, means, flags)``: a float64 vector of the sums, one of the
        means and a bool vector of the flags, on the device of the first input
        (the current CUDA device with NCCL).
    """
    values = [*sums, *means, *all_true]
    device = _collective_device(process_group, values)
    packed = torch.stack([
        *(torch.as_tensor(x, device=device).to(torch.float64).reshape(()) for x in sums),
        *(torch.as_tensor(x, device=device).to(torch.float64).reshape(()) for x in means),
        *((~torch.as_tensor(x, device=device).to(torch.bool)).to(torch.float64).reshape(())
          for x in all_true),
    ]) if values else torch.zeros(0, dtype=torch.float64, device=device)
    all_reduce_sum(packed, process_group)
    n_sum, n_mean = len(sums), len(means)
    mean = packed[n_sum:n_sum + n_mean] / world_size(process_group)
    return packed[:n_sum], mean, packed[n_sum + n_mean:] == 0


def reduce_mean(values: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    """The mean over the group of a 1-D tensor (e.g. each rank's losses); one collective."""
    _, mean, _ = reduce_phase(means=list(values.unbind()), process_group=process_group)
    return mean.to(values.dtype)


def reduce_all(flags: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    """The logical and over the group of a 1-D bool tensor; one collective."""
    _, _, out = reduce_phase(all_true=list(flags.unbind()), process_group=process_group)
    return out
