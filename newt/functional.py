r"""Per-group tensor work of a newt step: snapshots, inner products, restores.

Each operation has a simple single-tensor reference loop and a multi-tensor
path built on ``torch._foreach_*`` with the tensors grouped by device and
dtype; both take the same keyword-only ``foreach`` switch and agree to rounding
(``tests/test_functional.py``).

The only quantity newt needs from a group's parameters is the inner product of
a gradient with the displacement $d = \theta_t - \theta_{t+1}$,

$$
\langle g, d\rangle = \sum_{p \in \text{group}} \operatorname{Re}\langle g_p,\ s_p - p\rangle,
$$

where $s_p$ is the snapshot of $\theta_t$ (complex tensors count
as pairs of reals). It is computed here and only here, so a data-parallel run
can reduce it across processes in `group_inner_product`.

Cost. Newt keeps one parameter-sized buffer per parameter, the snapshot; the
displacement is never stored. The multi-tensor path forms $s - p$ in
pieces of at most ``CHUNK`` elements (small tensors are packed together,
large ones sliced), so the temporary stays in cache between its two uses and
the inner product costs one read of $g$, $s$ and $p$.

Host synchronisation. Nothing here reads a tensor's value on the host.
`restore_where` and `zero_where` take the flag as a Python bool where the
controller runs on host scalars (the CPU), and skip the pass over the
parameters when there is nothing to undo; given a tensor flag they are pure
tensor ops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal, overload

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "CHUNK",
    "all_finite",
    "copy_snapshot",
    "group_inner_product",
    "inner_products",
    "nothing_to_undo",
    "one_piece",
    "restore_where",
    "zero_where",
]

CHUNK = 1 << 18
"""Elements per temporary piece of $s - p$ in the multi-tensor inner product
(1 MiB in float32: it stays in a core's cache between the subtraction and the dot)."""


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Inner products of half-precision tensors accumulate in float32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _real(t: Tensor) -> Tensor:
    # Re⟨g, d⟩ for complex tensors: view (re, im) pairs as real numbers.
    if not t.is_complex():
        return t
    return torch.view_as_real(t.resolve_conj() if t.is_conj() else t)


def _check_lengths(grads: Sequence[Tensor | None], snapshots: Sequence[Tensor],
                   params: Sequence[Tensor], where: str = "group_inner_product: got") -> None:
    if len(grads) != len(params) or len(snapshots) != len(params):
        raise ValueError(
            f"{where} {len(grads)} grads, {len(snapshots)} snapshots and "
            f"{len(params)} params; pass one of each per parameter"
        )


# ---------------------------------------------------------------- inner products
def _single_tensor_inner_product(grads: Sequence[Tensor | None], snapshots: Sequence[Tensor],
                                 params: Sequence[Tensor], out_dtype: torch.dtype,
                                 device: torch.device, refresh: bool) -> Tensor:
    # Reference: ⟨g, s − p⟩ one tensor at a time, as the module docstring's formula reads.
    total = torch.zeros((), dtype=out_dtype, device=device)
    for g, s, p in zip(grads, snapshots, params, strict=True):
        if g is not None:
            acc = _accumulation_dtype(_real(p).dtype)
            d = _real(s - p).reshape(-1).to(acc)
            total = total + torch.dot(_real(g).reshape(-1).to(acc), d).to(device, out_dtype)
        if refresh:
            s.copy_(p)
    return total


def _pieces(grads: list[Tensor], snapshots: list[Tensor], params: list[Tensor],
            chunk: int) -> Iterator[tuple[list[Tensor], list[Tensor], list[Tensor]]]:
    """Lists of (g, s, p) of at most ``chunk`` elements in all: small tensors packed
    together, contiguous large ones sliced (a non-contiguous large one goes whole)."""
    bucket: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    size = 0
    for g, s, p in zip(grads, snapshots, params, strict=True):
        n = p.numel()
        if n > chunk or size + n > chunk:
            if size:
                yield bucket
                bucket, size = ([], [], []), 0
        if n > chunk:
            if g.is_contiguous() and s.is_contiguous() and p.is_contiguous():
                g, s, p = g.view(-1), s.view(-1), p.view(-1)
                for i in range(0, n, chunk):
                    yield [g[i:i + chunk]], [s[i:i + chunk]], [p[i:i + chunk]]
            else:
                yield [g], [s], [p]
            continue
        bucket[0].append(g)
        bucket[1].append(s)
        bucket[2].append(p)
        size += n
    if size:
        yield bucket


def one_piece(snapshots: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """Whether a group's tensors take the fused path: real, of one dtype and device,
    contiguous, at most ``CHUNK`` elements in all (and at least one tensor).

    These tensors do not change within a step, so a caller can find this once and pass
    it to every inner product of the step; the gradients are checked at each call (they
    must all be present, of the parameters' dtype and device, as autograd makes them).
    """
    if not params or params[0].dtype.is_complex:
        return False
    dtype, device, size = params[0].dtype, params[0].device, 0
    for s, p in zip(snapshots, params, strict=True):
        if (p.dtype != dtype or s.dtype != dtype or p.device != device or s.device != device
                or not p.is_contiguous() or not s.is_contiguous()):
            return False
        size += p.numel()
    return size <= CHUNK


def _grads_fit(grads: Sequence[Tensor | None], param: Tensor) -> bool:
    return all(g is not None and g.dtype == param.dtype and g.device == param.device
               for g in grads)


def _one_piece_inner_products(grads: Sequence[Tensor], snapshots: Sequence[Tensor],
                              params: Sequence[Tensor], sizes: list[int],
                              out_dtypes: Sequence[torch.dtype], refresh: bool) -> list[Tensor]:
    """Tensors of one device and dtype, ≤ CHUNK elements, cut into consecutive groups of
    ``sizes`` tensors: one ⟨g, s − p⟩ per group from four kernels for all of them (the
    subtraction, the product, one concatenation; a sum per group)."""
    products = torch._foreach_sub(list(snapshots), list(params))  # d = θ_t − θ_{t+1}
    if refresh:
        torch._foreach_copy_(list(snapshots), list(params))
    torch._foreach_mul_(products, list(grads))
    acc = _accumulation_dtype(products[0].dtype)
    device = products[0].device
    flat = (torch.cat([x.reshape(-1) for x in products]) if len(products) > 1
            else products[0].reshape(-1))
    if len(sizes) == 1:
        return [flat.sum(dtype=acc).to(device, out_dtypes[0])]
    numels, start = [], 0
    for n in sizes:  # elements per group
        numels.append(sum(x.numel() for x in products[start:start + n]))
        start += n
    return [part.sum(dtype=acc).to(device, dtype)
            for part, dtype in zip(flat.split(numels), out_dtypes, strict=True)]


def _multi_tensor_inner_product(grads: Sequence[Tensor | None], snapshots: Sequence[Tensor],
                                params: Sequence[Tensor], out_dtype: torch.dtype,
                                device: torch.device, refresh: bool,
                                fused: bool | None = None) -> Tensor:
    if fused is None:
        fused = one_piece(snapshots, params)
    # ``fused`` is the caller's `one_piece`; the cheap parts of it are checked again here
    if fused and params and not params[0].is_complex() and _grads_fit(grads, params[0]):
        # A small group of one device and dtype (the common case): four kernels in all.
        return _one_piece_inner_products(grads, snapshots, params,  # type: ignore[arg-type]
                                         [len(params)], [out_dtype], refresh)[0]
    chunk = CHUNK  # read at call time, so tests can make it small
    kept = [(_real(g), _real(s), _real(p))
            for g, s, p in zip(grads, snapshots, params, strict=True) if g is not None]
    if refresh and len(kept) < len(params):  # no gradient: only refresh the snapshot
        copy_snapshot([s for g, s in zip(grads, snapshots, strict=True) if g is None],
                      [p for g, p in zip(grads, params, strict=True) if g is None])
    partials = []
    lists = [[t[i] for t in kept] for i in range(3)]
    grouped = _group_tensors_by_device_and_dtype(lists) if kept else {}
    for (_, dtype), ((g, s, p), _) in grouped.items():
        acc = _accumulation_dtype(dtype)
        for gs, ss, ps in _pieces(g, s, p, chunk):
            if len(ps) == 1 and acc == dtype and gs[0].is_contiguous():
                # One piece: d = s − p, then a BLAS dot while d is still in cache.
                d = torch.sub(ss[0], ps[0])
                if refresh:
                    ss[0].copy_(ps[0])
                partials.append(torch.dot(gs[0].view(-1), d.reshape(-1)))
                continue
            products = torch._foreach_sub(ss, ps)  # d = θ_t − θ_{t+1}
            if refresh:
                torch._foreach_copy_(ss, ps)
            torch._foreach_mul_(products, gs)
            flat = (products[0].reshape(-1) if len(products) == 1
                    else torch.cat([x.reshape(-1) for x in products]))
            partials.append(flat.sum(dtype=acc))
    if not partials:
        return torch.zeros((), dtype=out_dtype, device=device)
    if len(partials) == 1:
        return partials[0].to(device, out_dtype)
    return torch.stack([x.to(device, out_dtype) for x in partials]).sum()


def group_inner_product(
    grads: Sequence[Tensor | None],
    snapshots: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    out_dtype: torch.dtype,
    foreach: bool = True,
    refresh_snapshots: bool = False,
    process_group: dist.ProcessGroup | None = None,
    fused: bool | None = None,
) -> Tensor:
    r"""Return $\sum_p \operatorname{Re}\langle g_p, s_p - p\rangle$ as a 0-d tensor.

    Args:
        grads: gradients, one per parameter; ``None`` counts as a zero gradient.
        snapshots: $\theta_t$, one per parameter.
        params: the current parameters $\theta_{t+1}$.
        out_dtype: dtype of the result (the widest parameter dtype of the group,
            at least float32).
        foreach: use the multi-tensor path (else the single-tensor reference).
        refresh_snapshots: once $s - p$ is read, set ``snapshots ← params``
            (what `copy_snapshot` does) in the same pass over the
            parameters: the next step's snapshot without reading $p$ again.
        process_group: if given and ``torch.distributed`` is initialised, the
            result is summed over the processes of this group (for parameters
            sharded across processes; replicated data-parallel parameters have
            equal gradients after the all-reduce and need no reduction).
        fused: `one_piece` ``(snapshots, params)`` if the caller already has it
            (found here otherwise). It must be that value: a ``True`` for tensors of
            mixed dtypes or devices, or non-contiguous ones, is not checked again.

    Returns:
        A 0-d tensor of ``out_dtype`` on the first parameter's device (CPU for
        an empty group). Half-precision products accumulate in float32.
    """
    _check_lengths(grads, snapshots, params)
    device = params[0].device if len(params) else torch.device("cpu")
    if foreach:
        total = _multi_tensor_inner_product(grads, snapshots, params, out_dtype, device,
                                            refresh_snapshots, fused)
    else:
        total = _single_tensor_inner_product(grads, snapshots, params, out_dtype, device,
                                             refresh_snapshots)
    if process_group is not None and dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, group=process_group)
    return total


def inner_products(
    grads: Sequence[Sequence[Tensor | None]],
    snapshots: Sequence[Sequence[Tensor]],
    params: Sequence[Sequence[Tensor]],
    *,
    out_dtypes: Sequence[torch.dtype],
    foreach: bool = True,
    refresh_snapshots: bool = False,
    fused: Sequence[bool] | None = None,
) -> list[Tensor]:
    r"""`group_inner_product` of several groups at once: one 0-d tensor per group.

    When every group is one piece together (all gradients present, one device and
    dtype, contiguous, at most ``CHUNK`` elements in all: a small model split into
    parameter groups, e.g. with and without weight decay), the groups share one
    subtraction, one product and one concatenation, so $G$ groups cost $3 + G$
    kernels instead of $4G$ (the refresh adds one, instead of $G$). Otherwise each
    group is `group_inner_product`'s. ``fused``: each group's `one_piece`, if known.
    """
    if not (len(grads) == len(snapshots) == len(params) == len(out_dtypes)):
        raise ValueError(
            f"inner_products: got {len(grads)} grad lists, {len(snapshots)} snapshot lists, "
            f"{len(params)} param lists and {len(out_dtypes)} dtypes; pass one per group"
        )
    for i, (g, s, p) in enumerate(zip(grads, snapshots, params, strict=True)):
        _check_lengths(g, s, p, where=f"inner_products: group {i} has")
    if fused is None:
        fused = [one_piece(s, p) for s, p in zip(snapshots, params, strict=True)]
    if foreach and len(params) > 1 and all(fused):
        first = params[0][0]
        together = (all(p[0].dtype == first.dtype and p[0].device == first.device
                        for p in params)
                    and sum(x.numel() for p in params for x in p) <= CHUNK
                    and all(_grads_fit(g, first) for g in grads))
        if together:
            return _one_piece_inner_products(
                [g for gs in grads for g in gs],  # type: ignore[misc]
                [s for ss in snapshots for s in ss], [p for ps in params for p in ps],
                [len(p) for p in params], out_dtypes, refresh_snapshots)
    return [group_inner_product(g, s, p, out_dtype=dtype, foreach=foreach,
                                refresh_snapshots=refresh_snapshots, fused=f)
            for g, s, p, dtype, f in zip(grads, snapshots, params, out_dtypes, fused,
                                         strict=True)]


# ---------------------------------------------------------------- snapshots and restores
def copy_snapshot(snapshots: Sequence[Tensor], params: Sequence[Tensor], *,
                  foreach: bool = True) -> None:
    """``snapshots ← params`` (θ_t, kept to undo a step and to form d)."""
    if foreach and len(params):
        torch._foreach_copy_(list(snapshots), list(params))
    else:
        for s, p in zip(snapshots, params, strict=True):
            s.copy_(p)


def nothing_to_undo(keep: bool | Tensor) -> bool:
    """True when ``keep`` is the Python bool ``True``; a tensor flag is never read."""
    return not isinstance(keep, Tensor) and bool(keep)


def restore_where(keep: bool | Tensor, params: Sequence[Tensor],
                  snapshots: Sequence[Tensor]) -> None:
    """``params ← params if keep else snapshots`` elementwise, without a host sync.

    ``torch.where`` rather than ``p + d``: the restore is exact and also undoes
    a step whose parameters went to inf/NaN. A bool ``keep`` is decided on the host.
    """
    if nothing_to_undo(keep):
        return
    if not isinstance(keep, Tensor):
        copy_snapshot(params, snapshots)  # params ← snapshots
        return
    for p, s in zip(params, snapshots, strict=True):
        torch.where(keep, p, s, out=p)


def zero_where(keep: bool | Tensor, tensors: Sequence[Tensor | None]) -> None:
    """``t ← t if keep else 0``, without a host sync (used on non-finite gradients)."""
    if nothing_to_undo(keep):
        return
    present = [t for t in tensors if t is not None]
    if not isinstance(keep, Tensor):
        for t in present:
            t.zero_()
        return
    drop = ~keep
    for t in present:
        t.masked_fill_(drop, 0)


def _total(tensors: Sequence[Tensor | None]) -> Tensor | None:
    """The sum of every entry of ``tensors`` as one 0-d tensor (``None`` if there is none)."""
    present = [t for t in tensors if t is not None and t.numel()]  # an empty shard is finite
    if not present:
        return None
    device, dtype = present[0].device, present[0].dtype
    if (len(present) > 1 and not dtype.is_complex and sum(t.numel() for t in present) <= CHUNK
            and all(t.dtype == dtype and t.device == device for t in present)):
        # a small model: one concatenation and one sum instead of a sum per tensor
        return torch.cat([t.reshape(-1) for t in present]).sum(dtype=_accumulation_dtype(dtype))
    sums = [_real(t).sum(dtype=_accumulation_dtype(_real(t).dtype)) for t in present]
    if any(x.dtype != sums[0].dtype or x.device != device for x in sums):
        sums = [x.to(device, torch.float64) for x in sums]
    return torch.stack(sums).sum()


@overload
def all_finite(tensors: Sequence[Tensor | None], *, read: Literal[False] = ...) -> Tensor: ...
@overload
def all_finite(tensors: Sequence[Tensor | None], *, read: Literal[True]) -> bool: ...
def all_finite(tensors: Sequence[Tensor | None], *, read: bool = False) -> Tensor | bool:
    """No NaN or inf in any of ``tensors`` (``None`` entries are skipped): a 0-d bool
    tensor (no host sync), or with ``read`` a Python bool (one read of one number).

    One read pass. A small model's tensors (at most `CHUNK` entries in all; plain, dense,
    of a floating dtype up to 64 bits and on one device) go through one fused kernel, the
    non-finite check of ``torch.amp.GradScaler`` with an unscale factor of 1 (the values and
    their version counters stay as they were), which is exact: 11–12 µs against 17–18 µs
    for the sum of the concatenation on the digits MLP's 26K gradients
    (``docs/checks/light_step.py``). Larger ones are summed tensor by tensor (half
    precision in float32): a sum is non-finite if any term is, and one that overflows
    finite entries counts as non-finite too (conservative); the fused kernel also writes
    every tensor back (a second pass), which only a small model's fixed costs hide.
    (``_foreach_norm(..., inf)`` would be exact but is a slow per-tensor loop on the CPU:
    28 ms against 1.5 ms on 10M parameters here.)
    """
    present = [t for t in tensors if t is not None and t.numel()]  # an empty shard is finite
    if present and _fusable(present):
        device = present[0].device
        unit = _UNIT.get(device)
        if unit is None:  # the kernel wants float32 flags, whatever the default dtype
            unit = _UNIT[device] = torch.ones(1, dtype=torch.float32, device=device)
        found = torch.zeros(1, dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(present, found, unit)
        return found.item() == 0 if read else found[0] == 0
    total = _total(present)
    if read:
        return total is None or math.isfinite(total.item())
    return torch.ones((), dtype=torch.bool) if total is None else torch.isfinite(total)


_UNIT: dict[torch.device, Tensor] = {}
"""The fused check's unscale factor 1, one tensor per device (only ever read)."""
_FUSABLE_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _fusable(tensors: list[Tensor]) -> bool:
    """Whether `all_finite` takes the fused kernel: plain dense tensors of the kernel's
    dtypes on one device, at most `CHUNK` entries in all."""
    device, total = tensors[0].device, 0
    for t in tensors:
        total += t.numel()
        if total > CHUNK or (type(t) is not Tensor and type(t) is not torch.nn.Parameter) or (
                t.layout is not torch.strided or t.dtype not in _FUSABLE_DTYPES
                or t.device != device):
            return False  # a large model stops at the tensor that passes CHUNK
    return True
