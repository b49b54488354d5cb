"""performance.md: what a step between measurements (``interval`` > 1) costs, and where.

The digits MLP of `benchmarks.overhead` (64-128-128-10 tanh, batch 128, Adam, one
thread). Inside a training loop (fresh gradients each step, so the caches are as in
training), interleaved over repeats, the median time of: the plain Adam step;
newt's step between measurements (`NewtOptimizer(..., interval=10**9)`, every step
after the first is one); its parts: `_inner_step` alone (the inner step with newt's
lr bookkeeping), `_light_step` (that plus the finiteness check of the gradients,
without the `step()` wrapper); then the finiteness check alone in four forms.

    python docs/checks/light_step.py
"""

import math
import statistics
import time

import torch
from torch import nn

import newt
import newt.functional as F

torch.set_num_threads(1)
REPEATS, STEPS = 30, 100
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
loss_fn = nn.CrossEntropyLoss()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                         nn.Linear(128, 10))


def interleaved(variants: dict) -> dict[str, float]:
    """Median over repeats of the mean µs of the timed call, after forward + backward."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for name, (net, zero, call) in variants.items():
            total = 0.0
            for _ in range(STEPS):
                zero()
                loss_fn(net(x), y).backward()
                start = time.perf_counter()
                call()
                total += time.perf_counter() - start
            times[name].append(total / STEPS * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


plain = model()
adam = torch.optim.Adam(plain.parameters(), lr=1e-3)
steps = {"Adam step": (plain, adam.zero_grad, adam.step)}
for part in ("step()", "_light_step", "_inner_step"):
    net = model()
    opt = newt.NewtOptimizer(torch.optim.Adam(net.parameters(), lr=1e-3), interval=10**9)
    call = {"step()": opt.step, "_light_step": lambda o=opt: o._light_step(None, False),
            "_inner_step": opt._inner_step}[part]
    steps[f"newt between measurements: {part}"] = (net, opt.zero_grad, call)
print("| call (digits MLP, Adam) | µs | − Adam step |")
print("|---|---|---|")
result = interleaved(steps)
for name, us in result.items():
    print(f"| {name} | {us:.1f} | {us - result['Adam step']:+.1f} |")

net = model()
params = list(net.parameters())


def as_sum() -> bool:  # what newt does: the fused kernel on a small model
    return F.all_finite([p.grad for p in params], read=True)


def as_concatenated_sum() -> bool:  # newt's form before the fused kernel (commit ebc4580)
    return math.isfinite(F._total([p.grad for p in params]).item())


def as_norms() -> bool:
    return math.isfinite(torch.stack(torch._foreach_norm([p.grad for p in params])).sum().item())


def as_sums() -> bool:
    return math.isfinite(sum(p.grad.sum() for p in params).item())


checks = {name: (net, net.zero_grad, fn) for name, fn in
          (("all_finite(read=True) (newt)", as_sum),
           ("sum of the concatenation (newt before ebc4580)", as_concatenated_sum),
           ("_foreach_norm, summed", as_norms),
           ("one sum per tensor", as_sums))}
print("\n| finiteness check of the gradients | µs |")
print("|---|---|")
for name, us in interleaved(checks).items():
    print(f"| {name} | {us:.1f} |")


def repeated(call, n: int = 3000) -> float:
    """Median over 7 rounds of the mean µs of ``call`` repeated on the same inputs."""
    for _ in range(200):
        call()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            call()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


# Out of the loop: the same gradients every call (the tensors stay in cache).
net = model()
opt = newt.NewtOptimizer(torch.optim.SGD(net.parameters(), lr=0.0), interval=10**9)
loss_fn(net(x), y).backward()
opt.step()
params = list(net.parameters())
unwrapped = type(opt).step.__wrapped__  # torch's profiling hook around step() removed
calls = {"all_finite(read=True) (newt)": as_sum,
         "sum of the concatenation (newt before ebc4580)": as_concatenated_sum,
         "newt step() between measurements, SGD(lr=0)": opt.step,
         "the same without torch's step() wrapper": lambda: unwrapped(opt)}
print("\n| out of a loop (digits MLP gradients) | µs |")
print("|---|---|")
for name, call in calls.items():
    print(f"| {name} | {repeated(call):.1f} |")
