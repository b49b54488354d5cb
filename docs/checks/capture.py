"""performance.md: what newt's capture of the model state costs a closure step's evaluation.

`newt.lookahead.capture` runs around the first evaluation of every closure step: it keeps
the RNG state and finds, with a global forward pre-hook, the modules that update running
statistics (BatchNorm), to save their buffers before their first forward. A global hook
sends every module call down torch's slow path. This script times one evaluation (zero
the gradients, forward, backward) of the digits MLP of `benchmarks.overhead` (64-128-128-10
tanh, batch 128, one thread), interleaved over repeats, in six forms: plain; with an empty
global pre-hook (torch's slow path alone); with the hook inside `warnings.catch_warnings`;
inside the capture as it was before this script (`_capture_before`: the weak-key lookup
first, `catch_warnings` always); inside `newt.lookahead.capture` now; and inside it for a
model with BatchNorm, whose buffers it saves (for scale).

    python docs/checks/capture.py
"""

import contextlib
import statistics
import time
import warnings

import torch
from torch import nn

from newt import lookahead as L

torch.set_num_threads(1)
REPEATS, CALLS = 25, 200
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
loss_fn = nn.CrossEntropyLoss()


def mlp(norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128)]
    layers += [nn.BatchNorm1d(128)] if norm else []
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(128, 10))


@contextlib.contextmanager
def _capture_before():
    """The capture of commit b5e48f0 (the store lookup first, catch_warnings always)."""
    store = L._BufferStore()
    state = L.ModelState(rng=L.capture_rng(), modules=None, _before=store)

    def hook(module, args):
        if module not in store and L.tracks_running_stats(module):
            store.save(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` "
                                    r"when there are global hooks", category=UserWarning)
            yield state
    finally:
        handle.remove()


@contextlib.contextmanager
def _empty_hook():
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _hook_in_catch_warnings():
    with _empty_hook(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="x", category=UserWarning)
        yield


def main() -> None:
    net, bn_net = mlp(), mlp(norm=True)

    def evaluation(model: nn.Module) -> None:
        model.zero_grad()
        loss_fn(model(x), y).backward()

    variants = {
        "evaluation": (net, contextlib.nullcontext),
        "in an empty global pre-hook": (net, _empty_hook),
        "in the hook and catch_warnings": (net, _hook_in_catch_warnings),
        "in the capture before": (net, _capture_before),
        "in newt.lookahead.capture": (net, L.capture),
        "BatchNorm MLP: evaluation": (bn_net, contextlib.nullcontext),
        "BatchNorm MLP: in newt.lookahead.capture": (bn_net, L.capture),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for model, context in variants.values():  # warm up
        for _ in range(20):
            with context():
                evaluation(model)
    for _ in range(REPEATS):
        for name, (model, context) in variants.items():
            start = time.perf_counter()
            for _ in range(CALLS):
                with context():
                    evaluation(model)
            times[name].append((time.perf_counter() - start) / CALLS * 1e6)
    base = {"BatchNorm": "BatchNorm MLP: evaluation"}
    print("| evaluation of the digits MLP | µs | ratio to the plain evaluation (IQR) |")
    print("|---|---|---|")
    for name, values in times.items():
        ref = times[base["BatchNorm"] if name.startswith("BatchNorm") else "evaluation"]
        ratios = sorted(a / b for a, b in zip(values, ref, strict=True))
        q = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {statistics.median(values):.1f} | "
              f"{statistics.median(ratios):.3f} ({q[0]:.2f}–{q[2]:.2f}) |")


if __name__ == "__main__":
    main()
