r"""The arithmetic of newt's controller, on Python floats or on 0-d tensors.

The controller (`newt.rule`) is a function of a few scalars per group. Where
they live decides what it costs:

- on the **host** (parameters on the CPU), reading a tensor's value is a memory
  load, so the scalars are Python floats: a decision is a few microseconds of
  Python instead of a few dozen dispatched tensor operations;
- on an **accelerator**, reading a value waits for the device, so the scalars
  stay 0-d tensors on it and every choice is a ``torch.where``: no host
  synchronisation, and the functions trace with ``torch.compile(fullgraph=True)``.

The controller is written once against the small set of operations below;
`ops` picks the implementation from its inputs (any tensor: `TENSORS`, else
`FLOATS`). Both follow IEEE semantics on NaN and inf the same way, so a
decision is the same on both to rounding (``tests/test_scalars.py``).

Division is written as ``/`` in the controller: every divisor there is
guarded to be non-zero (a ``where`` that replaces it by 1 where it could be 0),
so the Python division never raises.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Protocol, Union

import torch
from torch import Tensor

__all__ = ["FLOATS", "TENSORS", "Ops", "Scalar", "ops"]

Scalar = Union[Tensor, float, int, bool]  # noqa: UP007 (a runtime alias)
"""A value of the controller: a 0-d tensor, or a Python number on the host."""


class Ops(Protocol):
    """The operations the controller uses, on one kind of scalar."""

    def where(self, cond: Any, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def clamp(self, x: Any, lo: float | None = None, hi: float | None = None) -> Any: ...
    def exp(self, x: Any) -> Any: ...
    def log(self, x: Any) -> Any: ...
    def sqrt(self, x: Any) -> Any: ...
    def pow(self, base: Any, exponent: Any) -> Any: ...
    def isfinite(self, x: Any) -> Any: ...
    def not_(self, x: Any) -> Any: ...
    def real(self, x: Any, like: Any = None) -> Any: ...
    def integer(self, x: Any) -> Any: ...
    def const(self, value: float | int | bool, like: Any) -> Any: ...
    def tiny(self, like: Any) -> float: ...


class _Floats:
    """Python floats, bools and ints (host scalars), NaN-propagating like torch."""

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        return a if a != a or a <= b else b

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        return a if a != a or a >= b else b

    @staticmethod
    def clamp(x: Any, lo: float | None = None, hi: float | None = None) -> Any:
        if x != x:
            return x
        if lo is not None and x < lo:
            x = lo
        if hi is not None and x > hi:
            x = hi
        return float(x)

    @staticmethod
    def exp(x: Any) -> float:
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf

    @staticmethod
    def log(x: Any) -> float:
        if x > 0 or x != x:
            return math.log(x)
        return -math.inf if x == 0 else math.nan

    @staticmethod
    def sqrt(x: Any) -> float:
        return math.sqrt(x) if x >= 0 else math.nan

    @staticmethod
    def pow(base: Any, exponent: Any) -> float:
        try:
            return float(base) ** exponent
        except OverflowError:
            return math.inf
        except ZeroDivisionError:  # 0 ** negative
            return math.inf

    @staticmethod
    def isfinite(x: Any) -> bool:
        return math.isfinite(x)

    @staticmethod
    def not_(x: Any) -> bool:
        return not x

    @staticmethod
    def real(x: Any, like: Any = None) -> float:
        return float(x)

    @staticmethod
    def integer(x: Any) -> int:
        return int(x)

    @staticmethod
    def const(value: float | int | bool, like: Any) -> float | int | bool:
        return value

    @staticmethod
    def tiny(like: Any) -> float:
        return sys.float_info.min


class _Tensors:
    """0-d tensors; no operation reads a value on the host."""

    where = staticmethod(torch.where)
    minimum = staticmethod(torch.minimum)
    maximum = staticmethod(torch.maximum)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    sqrt = staticmethod(torch.sqrt)
    isfinite = staticmethod(torch.isfinite)

    @staticmethod
    def clamp(x: Tensor, lo: float | None = None, hi: float | None = None) -> Tensor:
        return torch.clamp(x, min=lo, max=hi)

    @staticmethod
    def pow(base: Any, exponent: Any) -> Tensor:
        return torch.pow(base, exponent)

    @staticmethod
    def not_(x: Tensor) -> Tensor:
        return ~x

    @staticmethod
    def real(x: Any, like: Any = None) -> Tensor:
        """``x`` as a float tensor: ``like``'s dtype and device if given, else float64."""
        if like is None:
            return torch.as_tensor(x, dtype=torch.float64)
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)

    @staticmethod
    def integer(x: Tensor) -> Tensor:
        return x.long()

    @staticmethod
    def const(value: float | int | bool, like: Tensor) -> Tensor:
        if isinstance(value, bool):
            dtype = torch.bool
        elif isinstance(value, int):
            dtype = torch.int64
        else:  # a float takes ``like``'s dtype when that is a float dtype
            dtype = like.dtype if like.dtype.is_floating_point else torch.float64
        return torch.full((), value, dtype=dtype, device=like.device)

    @staticmethod
    def tiny(like: Tensor) -> float:
        return torch.finfo(like.dtype).tiny


FLOATS: Ops = _Floats()
"""Host scalars: Python floats (float64), bools and ints."""
TENSORS: Ops = _Tensors()
"""0-d tensors on any device."""


def ops(*values: Any) -> Ops:
    """`TENSORS` if any of ``values`` is a tensor, else `FLOATS`."""
    return TENSORS if any(isinstance(v, Tensor) for v in values) else FLOATS
