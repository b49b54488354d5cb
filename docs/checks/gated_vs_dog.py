"""design/alpha.md, H13: the step size of the gated controller against DoG's.

The benchmark's digits MLP (`newt.problems.get_problem("digits_mlp")`), 1650 closure-free
SGD steps (3× the benchmark's budget), two seeds: `NewtOptimizer(SGD(lr=1e-2),
controller="gated")` and DoG (`reps_rel=1e-6`, the benchmark's smallest start), the
step size every 150 steps (α, or DoG's η of the first tensor) and the final full-batch
training loss at the last iterate.

    python docs/checks/gated_vs_dog.py
"""

import dog
import torch

import newt
from newt.problems import get_problem

problem = get_problem("digits_mlp")

for name in ("gated", "DoG"):
    for seed in (0, 1):
        model = problem.init(seed)
        batches = problem.batches(seed)
        if name == "gated":
            opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2),
                                     controller="gated")
        else:
            opt = dog.DoG(model.parameters(), reps_rel=1e-6)
        steps = []
        for t in range(1, 1651):
            opt.zero_grad()
            problem.loss(model, next(batches)).backward()
            opt.step()
            if t % 150 == 0:
                eta = (opt.alphas[0] if name == "gated"
                       else float(torch.as_tensor(opt.param_groups[0]["eta"][0])))
                steps.append(f"{eta:.3g}")
        print(f"{name}, seed {seed}: step size every 150 steps {' '.join(steps)}; "
              f"final loss {problem.train_loss(model):.3g}")
