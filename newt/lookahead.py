r"""A lookahead evaluation that dropout and BatchNorm do not notice.

In closure mode newt evaluates the closure twice per step on the same batch:
at $\theta_t$ and, after the inner step, at $\theta_{t+1}$ (the *lookahead*).
Both evaluations should see the same network, so that

- the loss check $L(\theta_{t+1}) > L(\theta_t)$ and the curvature estimate
  $C = A - B$ compare two points of *one* function: dropout must draw the same
  masks in both evaluations;
- the model's state advances once per step: BatchNorm must update its running
  statistics once (`num_batches_tracked` grows by 1), and a step that newt
  undoes must leave them as they were before the step.

The optimizer uses three calls around its two evaluations:

```python
with capture() as saved:       # RNG state and norm buffers before the first evaluation
    loss = closure()
inner.step()
with lookahead(saved):         # same RNG draws; running statistics left alone
    lookahead_loss = closure()
if undone:
    restore_model_state(saved)  # norm buffers as before the step
```

How. `capture` records the RNG state of the CPU generator and of every
*initialised* accelerator (CUDA, XPU, MPS, ... through
`torch.accelerator` and `torch.get_device_module`). `lookahead` sets that
state again before the closure runs, so `torch.nn.Dropout` and every other
draw from the default generators repeat the first evaluation's; at exit the
RNG goes back to the state it had when the lookahead began, so the random
stream advances exactly as with one evaluation per step. Modules that update
running statistics are found without the user passing the model: a global
forward pre-hook (`torch.nn.modules.module.register_module_forward_pre_hook`),
installed only inside `capture`, saves each such module's buffers the first
time it runs there (the values from before the step, for
`restore_model_state`); `lookahead` saves those modules' buffers at entry and
restores them at exit, without hooks. Cost: while the hook is installed every
module call takes torch's hooked (slower) path, a few microseconds per module
call of the first evaluation; nothing parameter-sized is copied. The
modules covered are every `torch.nn.modules.batchnorm._NormBase` in training
mode with `track_running_stats=True`: all BatchNorm variants (`SyncBatchNorm`
and the lazy ones included) and InstanceNorm with `track_running_stats=True`.

What cannot be handled without help:

- random numbers the closure draws from a generator of its own (a
  `torch.Generator` passed to an op, Python's `random`, NumPy), or from a data
  loader it pulls the next batch from (the lookahead must evaluate the *same*
  batch: draw it outside the closure);
- custom modules that keep running buffers of their own (not a
  `_NormBase`); for those pass the modules explicitly:
  `capture(modules=[model])` saves and restores *every* buffer of the given
  modules and their children instead of relying on the hooks;
- modules whose forward does not go through `Module.__call__` (an exported
  or traced graph, `torch.func.functional_call` with buffers passed in): no
  hook fires for them, so use the explicit form. (`torch.compile(model)` is
  fine: dynamo runs the global hooks of the modules it inlines, and the
  tests check it does not recompile.)
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase

__all__ = [
    "ModelState",
    "RNGState",
    "capture",
    "capture_rng",
    "lookahead",
    "restore_model_state",
    "restore_rng",
    "tracks_running_stats",
]


# ---------------------------------------------------------------------------- RNG
@dataclass(frozen=True)
class RNGState:
    """The state of the default CPU generator and of each initialised accelerator.

    Attributes:
        cpu: ``torch.get_rng_state()``.
        device_type: the accelerator's type (``"cuda"``, ``"xpu"``, ...) or ``None``.
        devices: one state per device of that type, in device order (empty when the
            accelerator was not initialised: nothing has drawn from it).
    """

    cpu: Tensor
    device_type: str | None = None
    devices: tuple[Tensor, ...] = ()


def _accelerator_module() -> tuple[str | None, Any]:
    """The current accelerator's device module if it is initialised, else ``(None, None)``.

    An accelerator that was never initialised has drawn no random numbers; querying
    its generators would initialise it (slow, and it breaks forked workers).
    """
    accelerator = getattr(torch, "accelerator", None)
    acc = accelerator.current_accelerator() if accelerator is not None else None
    if acc is None or acc.type in ("cpu", "meta"):
        return None, None
    module = torch.get_device_module(acc.type)
    is_initialized = getattr(module, "is_initialized", None)
    if is_initialized is None or not is_initialized():
        return None, None
    return acc.type, module


def capture_rng() -> RNGState:
    """Snapshot the default generators: the CPU's and each initialised accelerator's."""
    device_type, module = _accelerator_module()
    devices: tuple[Tensor, ...] = ()
    if module is not None:
        devices = tuple(module.get_rng_state(i) for i in range(module.device_count()))
    return RNGState(torch.get_rng_state(), device_type, devices)


def restore_rng(state: RNGState) -> None:
    """Set the default generators to ``state`` (the inverse of `capture_rng`)."""
    if not isinstance(state, RNGState):
        raise TypeError(
            f"restore_rng(state=...) must be an RNGState from capture_rng(), "
            f"got {type(state).__name__}"
        )
    torch.set_rng_state(state.cpu)
    if state.device_type is not None:
        module = torch.get_device_module(state.device_type)
        for i, device_state in enumerate(state.devices):
            module.set_rng_state(device_state, i)


# ---------------------------------------------------------------------------- buffers
def tracks_running_stats(module: torch.nn.Module) -> bool:
    """True for a module whose forward updates running statistics now.

    That is a `torch.nn.modules.batchnorm._NormBase` (every BatchNorm variant,
    `SyncBatchNorm`, InstanceNorm) in training mode with ``track_running_stats``.
    """
    return (isinstance(module, _NormBase) and module.training
            and bool(module.track_running_stats))


def _buffers_of(module: torch.nn.Module, all_buffers: bool) -> dict[str, Tensor]:
    """The buffers to save (lazy, not yet materialised ones have no value to keep)."""
    if all_buffers:
        found = dict(module.named_buffers(recurse=False))
    else:
        names = ("running_mean", "running_var", "num_batches_tracked")
        found = {n: getattr(module, n, None) for n in names}
    return {n: b for n, b in found.items()
            if isinstance(b, Tensor) and not torch.nn.parameter.is_lazy(b)}


class _BufferStore:
    """Copies of module buffers, keyed by module (weakly: a deleted model is not kept)."""

    def __init__(self) -> None:
        self._saved: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Tensor]] = (
            weakref.WeakKeyDictionary())

    def __contains__(self, module: torch.nn.Module) -> bool:
        return module in self._saved

    def __len__(self) -> int:
        return len(self._saved)

    def modules(self) -> list[torch.nn.Module]:
        return list(self._saved.keys())

    def save(self, module: torch.nn.Module, all_buffers: bool = False) -> None:
        if module not in self._saved:
            with torch.no_grad():
                self._saved[module] = {n: b.detach().clone()
                                       for n, b in _buffers_of(module, all_buffers).items()}

    def restore(self, keep: Tensor | None = None) -> None:
        """Put the copies back (where ``keep`` is false, if given: no host sync)."""
        with torch.no_grad():
            for module, saved in list(self._saved.items()):
                for name, value in saved.items():
                    buffer = getattr(module, name, None)
                    if not (isinstance(buffer, Tensor) and buffer.shape == value.shape):
                        # replaced or re-materialised (lazy modules): put the copy back
                        if keep is None:
                            setattr(module, name, value.clone())
                    elif keep is None:
                        buffer.copy_(value)
                    else:
                        torch.where(keep.to(buffer.device), buffer, value, out=buffer)


def _explicit_modules(modules: torch.nn.Module | Iterable[torch.nn.Module] | None
                      ) -> list[torch.nn.Module] | None:
    if modules is None:
        return None
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    try:
        roots = list(modules)
    except TypeError:
        raise TypeError(
            f"modules=... must be a torch.nn.Module or an iterable of modules, got "
            f"{type(modules).__name__}"
        ) from None
    for m in roots:
        if not isinstance(m, torch.nn.Module):
            raise TypeError(
                f"modules=... must contain torch.nn.Module objects, got {type(m).__name__}"
            )
    seen: dict[int, torch.nn.Module] = {}
    for root in roots:
        for m in root.modules():
            seen.setdefault(id(m), m)
    return list(seen.values())


@contextlib.contextmanager
def _save_on_first_forward(store: _BufferStore) -> Iterator[None]:
    """Inside the context, save each stats-tracking module's buffers before its first forward."""

    def hook(module: torch.nn.Module, args: Any) -> None:
        # The type test first: it is false for almost every module, and cheaper than the
        # store's weak-key lookup (this runs at every module call of the evaluation).
        if tracks_running_stats(module) and module not in store:
            store.save(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        if "torch._dynamo" not in sys.modules:
            # No torch.compile has run, so no OptimizedModule exists to warn (below), and
            # the warning filters are left alone: catch_warnings costs ~15 µs a step.
            yield
            return
        with warnings.catch_warnings():
            # torch.compile(module) warns that global hooks also fire for the OptimizedModule
            # wrapper; this hook ignores every module that is not a norm layer.
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` "
                                    r"when there are global hooks", category=UserWarning)
            yield
    finally:
        handle.remove()


@dataclass
class ModelState:
    """What `capture` recorded around the first evaluation of a step.

    Attributes:
        rng: the RNG state just before the first evaluation (replayed by `lookahead`).
        modules: the explicit modules (`capture(modules=...)`), or ``None`` when the
            stats-tracking modules are found by the forward hooks.
        found: how many modules' buffers are held for `restore_model_state`.
    """

    rng: RNGState
    modules: list[torch.nn.Module] | None = None
    _before: _BufferStore = field(default_factory=_BufferStore, repr=False)

    @property
    def found(self) -> int:
        return len(self._before)


@contextlib.contextmanager
def capture(modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
            ) -> Iterator[ModelState]:
    """Record the RNG state and the model state around the first evaluation of a step.

    Use it around the evaluation at $\\theta_t$; pass the yielded `ModelState` to
    `lookahead` for the evaluation at $\\theta_{t+1}$ and to `restore_model_state`
    if the step is undone.

    Args:
        modules: ``None`` (default): the modules that update running statistics
            are found by a forward pre-hook active only inside the context, and
            their buffers are saved before their first forward. A module or an
            iterable of modules: every buffer of these modules and of their
            children is saved at entry instead (covers custom modules with
            running buffers; no hooks).

    Yields:
        The `ModelState` of the step.
    """
    explicit = _explicit_modules(modules)
    state = ModelState(rng=capture_rng(), modules=explicit)
    if explicit is not None:
        for m in explicit:
            state._before.save(m, all_buffers=True)
        yield state
        return
    with _save_on_first_forward(state._before):
        yield state


@contextlib.contextmanager
def lookahead(state: ModelState, *, replay_rng: bool = True,
              freeze_buffers: bool = True) -> Iterator[None]:
    """Evaluate the closure at $\\theta_{t+1}$ as if the model state had not moved.

    Args:
        state: the `ModelState` that `capture` yielded for this step's first
            evaluation.
        replay_rng: set the RNG to its state before the first evaluation, so
            dropout draws the same masks; at exit the RNG is put back to its
            state at entry (the stream advances as with one evaluation).
        freeze_buffers: the running statistics of the modules the first
            evaluation updated (with explicit modules, every buffer of them) are
            restored at exit to their values at entry, so the lookahead leaves
            them as the first evaluation left them. Turn it off when the
            lookahead *is* the next step's first evaluation (``reuse_lookahead``).
    """
    if not isinstance(state, ModelState):
        raise TypeError(
            f"lookahead(state=...) must be the ModelState yielded by capture(), "
            f"got {type(state).__name__}"
        )
    after_first = capture_rng() if replay_rng else None
    if replay_rng:
        restore_rng(state.rng)
    entry = _BufferStore()
    try:
        if freeze_buffers:
            # The modules the first evaluation updated, saved as they are now; no hooks
            # (a global hook sends every module call down torch's slow path).
            explicit = state.modules is not None
            for m in state.modules if explicit else state._before.modules():
                entry.save(m, all_buffers=explicit)
        yield
    finally:
        if freeze_buffers:
            entry.restore()
        if after_first is not None:
            restore_rng(after_first)


def restore_model_state(state: ModelState, keep: Tensor | None = None) -> None:
    """Put the buffers `capture` saved back: the model state from before the step.

    Args:
        state: the `ModelState` of the step.
        keep: optional 0-d bool tensor; the buffers are restored only where it is
            false (``torch.where``: no host sync, for an undo decided on the device).

    The RNG is not rewound: an undone step has drawn its random numbers.
    """
    if not isinstance(state, ModelState):
        raise TypeError(
            f"restore_model_state(state=...) must be the ModelState yielded by capture(), "
            f"got {type(state).__name__}"
        )
    if keep is not None and (not isinstance(keep, Tensor) or keep.numel() != 1):
        raise TypeError("restore_model_state(keep=...) must be a one-element bool tensor")
    state._before.restore(None if keep is None else keep.reshape(()).to(torch.bool))
