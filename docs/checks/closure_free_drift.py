"""choosing.md and faq.md: the closure-free mode's α drifts down on noisy mini-batches.

The 64-64-10 tanh MLP on all 1797 digits, batches of 64, Adam at lr=1e-3, 600
steps, default preset, two seeds. For each run: α at a few steps, the first
step at which α is at most 1e-6 and at most 1.01e-8 (lr_min is 1e-8), and
the full-batch training loss at the end. The closure mode is run for 600
steps (1200 evaluations) and its loss after 300 steps (600 evaluations, the
closure-free run's cost) is printed too; plain Adam at lr=1e-3 is the
reference. For the closure-free runs, the safeguards reported by
`last_stats()` and the mean of log(α_{t+1}/α_t) are printed per window of
200 steps; then a variant (gamma=0.1) of the closure-free mode.

    python docs/checks/closure_free_drift.py
"""

import collections
import math

import torch

import newt
from newt.problems import digits_mlp

STEPS, SEEDS = 600, (0, 1)
problem = digits_mlp((64,), "tanh", test_size=None, batch_size=64)


def run(mode: str, seed: int, **options) -> None:
    model = problem.init(seed)
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = inner if mode == "adam" else newt.NewtOptimizer(inner, **options, controller="newton")
    batches = problem.batches(seed)
    first_1e6 = first_lrmin = None
    trace, half = {}, None
    windows = [(collections.Counter(), []) for _ in range(STEPS // 200)]
    for t in range(1, STEPS + 1):
        batch = next(batches)
        if mode == "closure":
            def closure(batch=batch):
                opt.zero_grad()
                loss = problem.loss(model, batch)
                loss.backward()
                return loss
            opt.step(closure)
        else:
            opt.zero_grad()
            problem.loss(model, batch).backward()
            opt.step()
        alpha = float(opt.param_groups[0]["lr"])
        stats = opt.last_stats()[0] if mode == "closure-free" else None
        if stats is not None and stats.safeguard not in ("first_step", "skipped"):
            # The closure-free mode decides α_t at step t from step t−1's displacement.
            counts, logs = windows[(t - 1) // 200]
            counts[stats.safeguard] += 1
            logs.append(math.log(stats.alpha / stats.used_alpha))
        if first_1e6 is None and alpha <= 1e-6:
            first_1e6 = t
        if first_lrmin is None and alpha <= 1.01e-8:
            first_lrmin = t
        if t in (100, 200, 300, 400, 500, 600):
            trace[t] = alpha
        if t == STEPS // 2:
            half = problem.train_loss(model)
    final = problem.train_loss(model)
    alphas = " ".join(f"{t}:{a:.2g}" for t, a in trace.items())
    label = mode + "".join(f" {k}={v}" for k, v in options.items())
    print(f"{label:12s} seed {seed}: full-batch loss {final:.4f} at {STEPS} steps "
          f"({half:.4f} at {STEPS // 2}); α≤1e-6 from step {first_1e6}, "
          f"α≤1.01e-8 from step {first_lrmin}; α at {alphas}", flush=True)
    for i, (counts, logs) in enumerate(windows):
        if logs:
            print(f"    steps {200 * i + 1}-{200 * (i + 1)}: mean log(α_t+1/α_t) "
                  f"{sum(logs) / len(logs):+.3f}; safeguards {dict(counts.most_common())}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for seed in SEEDS:
        for mode in ("closure-free", "closure", "adam"):
            run(mode, seed)
    for seed in SEEDS:
        for options in ({"gamma": 0.1},):
            run("closure-free", seed, **options)
