"""What newt adds to a training step: time and peak memory, as interleaved ratios.

Run from the repository root::

    python -m benchmarks.overhead            # about 6 minutes
    python -m benchmarks.overhead --quick    # about 2 minutes, noisier

Three measurements, every variant in one process, interleaved (variants
alternate within each repeat, in a rotating order), each ratio the median
over repeats of per-repeat medians:

1. **Own work on a ~10M-parameter model** (4 × ``Linear(1600, 1600)``, a
   closure on a batch of 8 rows). The closure calls and the inner step are
   timed inside newt's step (the closure and ``inner.step`` are wrapped with
   timers); newt's own work is the rest of the step. Ratio: own work ÷ a plain
   Adam step on an identical model, timed in the same repeat. Goal ≤ 1.3.
2. **Whole training steps** (forward, backward, step) on the digits MLP
   (64-128-128-10) and digits CNN of :mod:`newt.problems` (batch 128) and a
   10.2M-parameter MLP (4 × ``Linear(1600, 1600)``, batch 32), with Adam and
   SGD as the inner optimizer, and the digits MLP with Adam on two parameter groups
   (weights; biases without weight decay, as trainers split them): closure-free
   newt ÷ the plain step, closure newt ÷ two evaluations plus the plain step, the
   same two with ``interval=8`` (``--interval``; the closure row then against one
   evaluation plus the step), and Prodigy and Schedule-Free AdamW ÷ the Adam
   step, as a user would compare them. Per-step times are means over whole
   cycles of the interval. Goal ≤ 1.05 (≤ 1.02 on the 10M MLP).
3. **Peak memory** of one step, newt ÷ plain, for the same variants:
   the bytes of every tensor alive before the step (parameters, gradients,
   optimizer states, newt's snapshots; counted directly) plus the largest
   excess of tensor allocations over frees during the step, read from the
   torch profiler's memory timeline. It counts tensor storage only (no
   allocator caching, no Python objects).

4. **Kernels** (``--only kernels``): newt's per-step kernels on the digits MLP,
   each against the form it replaced, interleaved: two groups' inner products in
   one fused call against one call per group, the fused-path check made once per
   step against at each call, the finiteness check read as one number against a
   bool tensor then read.

Inner optimizer: ``torch.optim.Adam`` with its CPU default (the single-tensor
loop) and a float lr unless ``--tensor-lr`` (then ``lr`` is a 0-d tensor and
newt writes α back without a host read). ``--threads`` sets torch's intra-op
threads (default 1: the numbers are then about the work, not about thread
contention on a shared machine). Results are printed as Markdown.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import newt

__all__ = ["INTERVAL", "live_bytes", "main", "peak_step_bytes"]

INTERVAL = 8
"""The ``interval`` of the amortised rows (α measured on one step in 8)."""


# ---------------------------------------------------------------- memory
def live_bytes(*collections: Any) -> int:
    """Bytes of the distinct tensor storages found in nested dicts/lists/tuples."""
    seen: dict[int, int] = {}

    def visit(x: Any) -> None:
        if isinstance(x, Tensor):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    for c in collections:
        visit(c)
    return sum(seen.values())


def _resident(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    tensors: list[Any] = [list(model.parameters()), [p.grad for p in model.parameters()]]
    for opt in optimizers:
        tensors.append(dict(opt.state))
        tensors.append([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    return live_bytes(*tensors)


def peak_step_bytes(step: Callable[[], Any], model: nn.Module,
                    optimizers: list[torch.optim.Optimizer]) -> int | None:
    """Peak live tensor bytes over one call of ``step`` (``None`` if the profiler cannot tell).

    Tensors alive before the step are counted directly; the growth during the
    step comes from the profiler's memory timeline (creations minus
    destructions, in time order).
    """
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action
    except ImportError:  # pragma: no cover - private API moved
        return None
    before = _resident(model, optimizers)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    try:
        timeline = prof._memory_profile().timeline
    except Exception:  # pragma: no cover - private API changed
        return None
    growth = peak = 0
    for t, action, _, size in sorted(timeline, key=lambda e: e[0]):
        if t < 0:
            continue  # PREEXISTING: counted in `before`
        if action == Action.CREATE:
            growth += size
        elif action == Action.DESTROY:
            growth -= size
        peak = max(peak, growth)
    return before + peak


# ---------------------------------------------------------------- timing helpers
_clock = time.process_time  # CPU seconds of this process; ``--clock wall`` for perf_counter


class _Timed:
    """Wrap a callable and add its wall time to ``self.seconds``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = _clock()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += _clock() - start


def _adam(params: Any, tensor_lr: bool) -> torch.optim.Adam:
    if tensor_lr:
        return torch.optim.Adam(params, lr=torch.tensor(1e-3), foreach=False)
    return torch.optim.Adam(params, lr=1e-3)


def _interleave(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant once per repeat, rotating the order; collect their values."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            out[n].append(variants[n]())
    return out


def _median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def _iqr(values: list[float]) -> str:
    if len(values) < 4:
        return ""
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.2f}–{q[2]:.2f}"


# ---------------------------------------------------------------- 1. own work, 10M parameters
@dataclass
class _OwnWork:
    """One newt variant on its own copy of the big model, with timers inside its step."""

    model: nn.Module
    opt: newt.NewtOptimizer
    mode: str  # "closure", "reuse" or "free"
    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        self.inner_timer = _Timed(self.opt.inner.step)
        self.opt.inner.step = self.inner_timer  # newt calls self.inner.step()

        def closure() -> Tensor:
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.model(self.x), self.y)
            loss.backward()
            return loss

        self.closure = _Timed(closure)

    def step(self) -> tuple[float, float]:
        """One step; returns (newt's own seconds, inner step seconds)."""
        self.inner_timer.seconds = self.closure.seconds = 0.0
        if self.mode.startswith("free"):
            self.closure()  # the user's forward and backward, outside newt's step
            self.closure.seconds = 0.0
            start = _clock()
            self.opt.step()
        else:
            start = _clock()
            self.opt.step(self.closure)
        total = _clock() - start
        return total - self.closure.seconds - self.inner_timer.seconds, self.inner_timer.seconds


def own_work(steps: int, repeats: int, tensor_lr: bool, width: int = 1600,
             layers: int = 4) -> tuple[list[dict[str, Any]], int]:
    """Newt's own time per step ÷ a plain Adam step, on a ~10M-parameter model."""
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    n_params = sum(p.numel() for p in base.parameters())
    x, y = torch.randn(8, width), torch.randn(8, width)

    plain_model = copy.deepcopy(base)
    plain = _adam(plain_model.parameters(), tensor_lr)
    nn.functional.mse_loss(plain_model(x), y).backward()

    variants: dict[str, _OwnWork] = {}
    modes = ["closure", "reuse", "free"] + ([f"free_k{INTERVAL}"] if INTERVAL > 1 else [])
    for mode in modes:
        model = copy.deepcopy(base)
        opt = newt.NewtOptimizer(_adam(model.parameters(), tensor_lr),
                                 reuse_lookahead=mode == "reuse",
                                 **({"interval": INTERVAL} if mode.endswith(f"k{INTERVAL}")
                                    else {}))
        variants[mode] = _OwnWork(model, opt, mode, x, y)

    def time_plain() -> float:
        times = []
        for _ in range(steps):
            start = _clock()
            plain.step()
            times.append(_clock() - start)
        return statistics.median(times)

    inner_times: dict[str, list[float]] = {m: [] for m in variants}

    def time_newt(mode: str) -> Callable[[], float]:
        cycle = mode.endswith(f"k{INTERVAL}")  # the mean over a whole cycle of the interval
        average = statistics.fmean if cycle else statistics.median

        def run() -> float:
            own, inner = [], []
            for _ in range(INTERVAL if cycle else steps):
                o, i = variants[mode].step()
                own.append(o)
                inner.append(i)
            inner_times[mode].append(average(inner))
            return average(own)
        return run

    for v in variants.values():  # warm up: states exist, the first Newton step is done
        for _ in range(3):
            v.step()
    time_plain()
    results = _interleave({"adam": time_plain, **{m: time_newt(m) for m in variants}}, repeats)

    rows = []
    for mode in variants:
        ratios = [o / a for o, a in zip(results[mode], results["adam"], strict=True)]
        rows.append({
            "mode": mode,
            "own_ms": statistics.median(results[mode]) * 1e3,
            "adam_ms": statistics.median(results["adam"]) * 1e3,
            "ratio": statistics.median(ratios),
            "iqr": _iqr(ratios),
            "ratio_inner": _median_ratio(results[mode], inner_times[mode]),
        })

    # Peak memory of one step of each variant against a plain Adam step (closure included).
    def plain_step() -> None:
        plain.zero_grad()
        nn.functional.mse_loss(plain_model(x), y).backward()
        plain.step()

    plain_peak = peak_step_bytes(plain_step, plain_model, [plain])
    for row in rows:
        v = variants[row["mode"]]
        if v.mode.startswith("free"):
            def step(v: _OwnWork = v) -> None:
                v.closure()
                v.opt.step()
        else:
            def step(v: _OwnWork = v) -> None:
                v.opt.step(v.closure)
        peak = peak_step_bytes(step, v.model, [v.opt, v.opt.inner])
        row["memory"] = None if peak is None or plain_peak is None else peak / plain_peak
        row["state_ratio"] = live_bytes(dict(v.opt.state)) / (4 * n_params)
    return rows, n_params


# ---------------------------------------------------------------- 2. whole training steps
@dataclass
class _Workload:
    """A model, its loss on a batch and a few fixed batches."""

    name: str
    init: Callable[[], nn.Module]
    loss: Callable[[nn.Module, Any], Tensor]
    batches: list[Any]


def _workload(name: str) -> _Workload:
    if name == "mlp_10m":  # 4 × Linear(1600, 1600), batch 32 (10.2M parameters)
        gen = torch.Generator().manual_seed(0)
        data = [(torch.randn(32, 1600, generator=gen), torch.randn(32, 1600, generator=gen))
                for _ in range(4)]

        def init() -> nn.Module:
            torch.manual_seed(0)
            return nn.Sequential(*[nn.Linear(1600, 1600) for _ in range(4)])

        return _Workload(name, init, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), data)
    from newt.problems import get_problem

    problem = get_problem(name)
    batches_iter = problem.batches(0)
    return _Workload(name, lambda: problem.init(0), problem.loss,
                     [next(batches_iter) for _ in range(8)])


def _inner(name: str, params: Any, tensor_lr: bool) -> torch.optim.Optimizer:
    if name == "Adam":
        return _adam(params, tensor_lr)
    if name == "SGD":
        return torch.optim.SGD(params, lr=torch.tensor(1e-2) if tensor_lr else 1e-2)
    if name == "Prodigy":
        from prodigyopt import Prodigy  # the benchmark extra

        return Prodigy(params, lr=1.0)
    if name == "SF-AdamW":
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(params, lr=1e-3)
        opt.train()
        return opt
    raise ValueError(name)


def _variants(k: int) -> dict[str, tuple[str, dict[str, Any] | None, str, str | None]]:
    """name → (optimizer, newt's keyword arguments or None, step mode, baseline name).

    Modes: "free" (one evaluation, step()), "closure" (step(closure)), "2eval" (two
    evaluations, then step(): what a closure step of newt evaluates)."""
    variants: dict[str, tuple[str, dict[str, Any] | None, str, str | None]] = {
        "plain": ("inner", None, "free", None),
        "plain_2eval": ("inner", None, "2eval", None),
        "newt": ("inner", {}, "free", "plain"),
        f"newt_k{k}": ("inner", {"interval": k}, "free", "plain"),
        "newt_closure": ("inner", {}, "closure", "plain_2eval"),
        f"newt_closure_k{k}": ("inner", {"interval": k}, "closure", "plain"),
        "Prodigy": ("Prodigy", None, "free", "plain"),
        "SF-AdamW": ("SF-AdamW", None, "free", "plain"),
    }
    if k == 1:  # no amortised rows (also what runs on a newt without `interval`)
        del variants["newt_k1"], variants["newt_closure_k1"]
    return variants


def _label(name: str) -> str:
    k = name.rsplit("_k", 1)[-1]
    return {
        "newt": "closure-free newt ÷ inner step",
        f"newt_k{k}": f"closure-free newt, interval={k} ÷ inner step",
        "newt_closure": "closure newt ÷ 2 evals + inner step",
        f"newt_closure_k{k}": f"closure newt, interval={k} ÷ 1 eval + inner step",
        "Prodigy": "Prodigy ÷ Adam step",
        "SF-AdamW": "Schedule-Free AdamW ÷ Adam step",
    }[name]


_VARIANTS = _variants(INTERVAL)


def _param_groups(model: nn.Module, groups: int) -> Any:
    """All parameters in one group, or (``groups=2``) the weights and the biases apart,
    as a trainer that exempts biases from weight decay builds them."""
    if groups == 1:
        return model.parameters()
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not n.endswith("bias")]},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]


def whole_steps(workload_name: str, inner: str, steps: int, repeats: int,
                tensor_lr: bool, groups: int = 1) -> list[dict[str, Any]]:
    """Whole training steps (forward, backward, step) of every variant, interleaved;
    each ratio is against the plain step with the evaluations its comparison names."""
    work = _workload(workload_name)
    base = work.init()
    names = [n for n, (opt, _, _, _) in _VARIANTS.items()
             if opt == "inner" or inner == "Adam"]  # the peers are Adam-like

    setups: dict[str, tuple[nn.Module, torch.optim.Optimizer, str]] = {}
    for name in names:
        which, kwargs, mode, _ = _VARIANTS[name]
        model = copy.deepcopy(base)
        opt = _inner(inner if which == "inner" else which, _param_groups(model, groups),
                     tensor_lr)
        if kwargs is not None:
            opt = newt.NewtOptimizer(opt, **kwargs)
        setups[name] = (model, opt, mode)
    counters = dict.fromkeys(setups, 0)

    def one_step(name: str) -> None:
        model, opt, mode = setups[name]
        batch = work.batches[counters[name] % len(work.batches)]
        counters[name] += 1

        def closure() -> Tensor:
            opt.zero_grad()
            loss = work.loss(model, batch)
            loss.backward()
            return loss

        if mode == "closure":
            opt.step(closure)
            return
        closure()
        if mode == "2eval":
            closure()
        opt.step()

    def timer(name: str) -> Callable[[], float]:
        def run() -> float:
            start = _clock()
            for _ in range(steps):  # a multiple of INTERVAL: whole cycles
                one_step(name)
            return (_clock() - start) / steps
        return run

    for name in setups:  # warm up: states exist, α has moved
        for _ in range(2 * INTERVAL):
            one_step(name)
    results = _interleave({name: timer(name) for name in setups}, repeats)

    def peak(name: str) -> float | None:
        model, opt, _ = setups[name]
        opts = [opt] + ([opt.inner] if isinstance(opt, newt.NewtOptimizer) else [])
        return peak_step_bytes(lambda: one_step(name), model, opts)

    peaks = {name: peak(name) for name in setups}
    rows = []
    for name in names:
        base_name = _VARIANTS[name][3]
        if base_name is None:
            continue
        ratios = [a / b for a, b in zip(results[name], results[base_name], strict=True)]
        p, q = peaks[name], peaks[base_name]
        rows.append({
            "problem": workload_name + (f", {groups} groups" if groups > 1 else ""),
            "inner": inner, "comparison": _label(name),
            "newt_us": statistics.median(results[name]) * 1e6,
            "base_us": statistics.median(results[base_name]) * 1e6,
            "ratio": statistics.median(ratios), "iqr": _iqr(ratios),
            "memory": None if p is None or q is None else p / q,
        })
    return rows


# ---------------------------------------------------------------- 3. the kernels of a step
def kernels(calls: int, repeats: int) -> list[dict[str, Any]]:
    """newt's per-step kernels on the digits MLP, each against the form it replaced, timed
    interleaved: the inner products of two groups (weights, biases) in one fused call
    against one call per group; one group's inner product with its fused-path check made
    once per step against made at each call; the finiteness check between measurements
    read as one number against a 0-d bool tensor then read."""
    from newt import functional as F
    from newt.problems import get_problem

    problem = get_problem("digits_mlp")
    model = problem.init(0)
    loss = problem.loss(model, next(problem.batches(0)))
    loss.backward()
    named = list(model.named_parameters())
    split = [[p for n, p in named if not n.endswith("bias")],
             [p for n, p in named if n.endswith("bias")]]
    params = [[p.detach() for p in g] for g in split]
    snaps = [[p + 1e-3 for p in g] for g in params]
    grads = [[p.grad for p in g] for g in split]
    every = [p.grad for p in model.parameters()]
    flat = [x for g in params for x in g], [x for g in snaps for x in g], [x for g in grads
                                                                           for x in g]
    dtypes = [torch.float32, torch.float32]
    fused = [F.one_piece(s, p) for s, p in zip(snaps, params, strict=True)]
    cases = {
        "two groups: fused call": lambda: F.inner_products(grads, snaps, params,
                                                           out_dtypes=dtypes, fused=fused),
        "two groups: one call per group": lambda: [
            F.group_inner_product(g, s, p, out_dtype=torch.float32)
            for g, s, p in zip(grads, snaps, params, strict=True)],
        "one group: check made once per step": lambda: F.group_inner_product(
            flat[2], flat[1], flat[0], out_dtype=torch.float32, fused=True),
        "one group: check at each call": lambda: F.group_inner_product(
            flat[2], flat[1], flat[0], out_dtype=torch.float32),
        "finiteness: read as one number": lambda: F.all_finite(every, read=True),
        "finiteness: bool tensor, then read": lambda: bool(F.all_finite(every)),
    }

    def timer(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            start = _clock()
            for _ in range(calls):
                fn()
            return (_clock() - start) / calls
        return run

    for fn in cases.values():  # warm up
        for _ in range(100):
            fn()
    results = _interleave({name: timer(fn) for name, fn in cases.items()}, repeats)
    names = list(cases)
    rows = []
    for new_name, old_name in zip(names[::2], names[1::2], strict=True):
        rows.append({"new": new_name, "old": old_name,
                     "new_us": statistics.median(results[new_name]) * 1e6,
                     "old_us": statistics.median(results[old_name]) * 1e6,
                     "ratio": _median_ratio(results[new_name], results[old_name]),
                     "iqr": _iqr([a / b for a, b in zip(results[new_name], results[old_name],
                                                         strict=True)])})
    return rows


def _print_kernels(rows: list[dict[str, Any]]) -> None:
    print("## The kernels of a step, digits MLP\n")
    print("| kernel | µs per call | replaced form | µs per call | ratio (IQR) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['new']} | {r['new_us']:.1f} | {r['old']} | {r['old_us']:.1f} "
              f"| {r['ratio']:.2f} ({r['iqr']}) |")
    print()


# ---------------------------------------------------------------- report
def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    global _clock, INTERVAL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tensor-lr", action="store_true",
                        help="Adam(lr=tensor, foreach=False): newt writes α without a host read")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time (immune to other processes on a shared "
                        "machine); wall: time.perf_counter")
    parser.add_argument("--interval", type=int, default=INTERVAL,
                        help="the interval of the amortised rows (default %(default)s)")
    parser.add_argument("--only", choices=("own", "steps", "kernels"), default=None,
                        help="run only the 10M-parameter own-work part, the whole steps or "
                        "the kernels")
    args = parser.parse_args(argv)
    INTERVAL = args.interval
    _VARIANTS.clear()
    _VARIANTS.update(_variants(INTERVAL))
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    big_steps, big_repeats = (3, 5) if args.quick else (5, 15)
    small_steps, small_repeats = (3 * INTERVAL, 7) if args.quick else (6 * INTERVAL, 21)

    print(f"# newt overhead ({datetime.date.today().isoformat()})\n")
    print(f"- command: `python -m benchmarks.overhead{' --quick' if args.quick else ''}"
          f"{' --tensor-lr' if args.tensor_lr else ''}"
          f"{f' --threads {args.threads}' if args.threads != 1 else ''}"
          f"{' --clock wall' if args.clock == 'wall' else ''}"
          f"{f' --interval {args.interval}' if args.interval != 8 else ''}"
          f"{f' --only {args.only}' if args.only else ''}`")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()} {platform.processor() or ''}".rstrip()
          + f", {torch.get_num_threads()} intra-op thread(s), "
          + ("process CPU time" if args.clock == "cpu" else "wall time"))
    print(f"- inner: Adam(lr={'tensor' if args.tensor_lr else 'float'}), CPU\n")

    if args.only in (None, "own"):
        _print_own_work(*own_work(big_steps, big_repeats, args.tensor_lr))
    if args.only in (None, "steps"):
        _print_whole_steps(small_steps, small_repeats, 2 * INTERVAL,
                           5 if args.quick else 11, args.tensor_lr)
    if args.only in (None, "kernels"):
        _print_kernels(kernels(200, 7 if args.quick else 21))


def _print_own_work(rows: list[dict[str, Any]], n_params: int) -> None:
    print(f"## Newt's own work per step, {n_params / 1e6:.1f}M parameters\n")
    print("| mode | newt's own work (ms) | plain Adam step (ms) | own ÷ Adam (IQR) "
          "| own ÷ inner step | peak memory ÷ Adam step | newt state ÷ param bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['own_ms']:.1f} | {r['adam_ms']:.1f} | {r['ratio']:.2f} "
              f"({r['iqr']}) | {r['ratio_inner']:.2f} | {_fmt(r['memory'])} "
              f"| {_fmt(r['state_ratio'])} |")
    print()


def _print_whole_steps(small_steps: int, small_repeats: int, big_steps: int,
                       big_repeats: int, tensor_lr: bool) -> None:
    print("## Whole training steps\n")
    print("Per-step time over whole cycles of the interval, each ratio against the plain "
          "step with the evaluations it names, interleaved in this process.\n")
    print("| problem | inner | comparison | step (µs) | baseline step (µs) | ratio (IQR) "
          "| peak memory ratio |")
    print("|---|---|---|---|---|---|---|")
    cells = [(name, inner, 1) for name in ("digits_mlp", "digits_cnn", "mlp_10m")
             for inner in ("Adam", "SGD")]
    cells.insert(2, ("digits_mlp", "Adam", 2))  # weights and biases in two groups
    for name, inner, groups in cells:
        steps, repeats = (big_steps, big_repeats) if name == "mlp_10m" else (
            small_steps, small_repeats)
        for r in whole_steps(name, inner, steps, repeats, tensor_lr, groups):
            print(f"| {r['problem']} | {r['inner']} | {r['comparison']} | "
                  f"{r['newt_us']:.0f} | {r['base_us']:.0f} | {r['ratio']:.3f} ({r['iqr']}) "
                  f"| {_fmt(r['memory'], 3)} |")
    print()


if __name__ == "__main__":
    main()
