r"""Per-group tensor work of a newt step: snapshots, inner products, restores.

Each operation has a single-tensor reference loop and a multi-tensor path built
on ``torch._foreach_*`` (tensors grouped by device and dtype); both take the
same keyword-only ``foreach`` switch and agree to rounding (``tests/test_functional.py``).

The only quantity newt needs from a group's parameters is the inner product of
a gradient with the displacement :math:`d = \theta_t - \theta_{t+1}`,

.. math:: \langle g, d\rangle = \sum_{p \in \text{group}} \langle g_p,\ s_p - p\rangle,

where :math:`s_p` is the snapshot of :math:`\theta_t`. It is computed here and
only here, so a data-parallel run can reduce it across processes in
:func:`group_inner_product`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "copy_snapshot",
    "group_inner_product",
    "restore_where",
    "zero_where",
]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Inner products of half-precision tensors accumulate in float32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.float32
    return dtype.to_real() if dtype.is_complex else dtype


def _real(t: Tensor) -> Tensor:
    # Re⟨g, d⟩ for complex tensors: view (re, im) pairs as real numbers.
    return torch.view_as_real(t) if t.is_complex() else t


def _single_tensor_inner_product(grads: list[Tensor], snapshots: list[Tensor],
                                 params: list[Tensor], out_dtype: torch.dtype) -> Tensor:
    total = torch.zeros((), dtype=out_dtype, device=params[0].device)
    for g, s, p in zip(grads, snapshots, params, strict=True):
        acc = _accumulation_dtype(p.dtype)
        d = _real(s - p).reshape(-1).to(acc)
        total = total + torch.dot(_real(g).reshape(-1).to(acc), d).to(out_dtype)
    return total


def _multi_tensor_inner_product(grads: list[Tensor], snapshots: list[Tensor],
                                params: list[Tensor], out_dtype: torch.dtype) -> Tensor:
    total = torch.zeros((), dtype=out_dtype, device=params[0].device)
    grouped = _group_tensors_by_device_and_dtype([grads, snapshots, params])
    for (_, dtype), ((g, s, p), _) in grouped.items():
        acc = _accumulation_dtype(dtype)
        products = torch._foreach_sub(s, p)  # d = θ_t − θ_{t+1}
        torch._foreach_mul_(products, g)
        sums = [_real(x).sum(dtype=acc) for x in products]
        total = total + torch.stack(sums).sum().to(out_dtype)
    return total


def group_inner_product(
    grads: list[Tensor],
    snapshots: list[Tensor],
    params: list[Tensor],
    *,
    out_dtype: torch.dtype,
    foreach: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> Tensor:
    r"""Return :math:`\sum_p \operatorname{Re}\langle g_p, s_p - p\rangle` as a 0-d tensor.

    Args:
        grads: gradients, one per parameter.
        snapshots: :math:`\theta_t`, one per parameter.
        params: the current parameters :math:`\theta_{t+1}`.
        out_dtype: dtype of the result (the widest parameter dtype of the group,
            at least float32).
        foreach: use the multi-tensor path.
        process_group: if given and ``torch.distributed`` is initialised, the
            result is summed over the processes of this group (for parameters
            sharded across processes; replicated data-parallel parameters have
            equal gradients after the all-reduce and need no reduction).
    """
    if not params:
        return torch.zeros((), dtype=out_dtype)
    impl = _multi_tensor_inner_product if foreach else _single_tensor_inner_product
    total = impl(grads, snapshots, params, out_dtype)
    if process_group is not None and dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, group=process_group)
    return total


def copy_snapshot(snapshots: list[Tensor], params: list[Tensor], *, foreach: bool = True) -> None:
    """``snapshots ← params`` (θ_t, kept to undo a step and to form d)."""
    if foreach and params:
        torch._foreach_copy_(snapshots, params)
    else:
        for s, p in zip(snapshots, params, strict=True):
            s.copy_(p)


def restore_where(keep: Tensor, params: list[Tensor], snapshots: list[Tensor]) -> None:
    """``params ← params if keep else snapshots`` elementwise, without a host sync."""
    for p, s in zip(params, snapshots, strict=True):
        torch.where(keep, p, s, out=p)


def zero_where(keep: Tensor, tensors: list[Tensor]) -> None:
    """``t ← t if keep else 0``, without a host sync (used on non-finite gradients)."""
    for t in tensors:
        torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device), out=t)
