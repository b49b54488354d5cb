r"""Baselines written here because no maintained package ships them.

Hypergradient descent for SGD (Baydin et al., 2018), equation (SGD-HD):

.. math::

    \alpha_t = \alpha_{t-1}
        + \beta\, \langle \nabla L_t(\theta_{t-1}), \nabla L_{t-1}(\theta_{t-2}) \rangle,
    \qquad \theta_t = \theta_{t-1} - \alpha_t \nabla L_t(\theta_{t-1}),

where β is ``hypergrad_lr``: the same inner product newt uses, with a fixed
step instead of 1/g″, and no extra evaluation (the next batch's gradient).

References:
    A. G. Baydin, R. Cornish, D. Martínez Rubio, M. Schmidt, F. Wood.
    Online Learning Rate Adaptation with Hypergradient Descent. ICLR 2018.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer

__all__ = ["SGDHD"]


class SGDHD(Optimizer):
    """SGD whose learning rate follows the hypergradient (one α per group)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 hypergrad_lr: float = 1e-3) -> None:
        if lr < 0 or hypergrad_lr < 0:
            raise ValueError(f"SGDHD: lr={lr} and hypergrad_lr={hypergrad_lr} must be >= 0")
        super().__init__(params, {"lr": lr, "hypergrad_lr": hypergrad_lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            previous = [self.state[p].get("direction") for p in params]
            if params and all(d is not None for d in previous):
                # h = ⟨∇L_t(θ_{t−1}), u_{t−1}⟩ with u_{t−1} = ∇L_{t−1}(θ_{t−2}) for SGD
                h = sum(float((p.grad * d).sum()) for p, d in zip(params, previous, strict=True))
                group["lr"] += group["hypergrad_lr"] * h
            for p in params:
                self.state[p]["direction"] = p.grad.clone()
                p.add_(p.grad, alpha=-group["lr"])
        return loss
