"""method.md: one undamped, unclamped newt step on a quadratic is the exact line search."""

import warnings

import torch

import newt

UNDAMPED = dict(gamma=1.0, eps=0.0, lr_min=1e-300, lr_max=float("inf"),
                factor_min=0.0, factor_max=float("inf"), slope="same_batch")


def spd(n, lo, hi):
    """Q diag(logspace(lo, hi)) Q^T with a random orthogonal Q."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(lo, hi, n, dtype=torch.float64)) @ q.T


def one_group():
    torch.manual_seed(0)
    d = 20
    H = spd(d, 0, 3)  # condition number 1e3
    b = torch.randn(d, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.ones(d, dtype=torch.float64))
    print("one group, Adam inner, d = 20, condition number 1e3")
    print("curvature  learned α         exact line search")
    for curvature in ("gradient", "loss"):
        with torch.no_grad():
            theta.fill_(1.0)
        opt = newt.NewtOptimizer(torch.optim.Adam([theta], lr=1e-2), curvature=curvature,
                                 **UNDAMPED, controller="newton")

        def closure(opt=opt):
            opt.zero_grad()
            loss = 0.5 * theta @ H @ theta - b @ theta
            loss.backward()
            return loss

        theta_t = theta.detach().clone()
        opt.step(closure)
        u = (theta_t - theta.detach()) / 1e-2  # the inner direction u_t
        g = H @ theta_t - b
        exact = (g @ u / (u @ H @ u)).item()
        print(f"{curvature:10s} {opt.alphas[0]:.12g}    {exact:.12g}")


def two_groups():
    torch.manual_seed(0)
    H1, H2 = spd(10, 0, 1), spd(10, 2, 3)  # uncoupled groups, eigenvalues [1, 10] and [1e2, 1e3]
    x = torch.nn.Parameter(torch.ones(10, dtype=torch.float64))
    y = torch.nn.Parameter(torch.ones(10, dtype=torch.float64))
    print("two uncoupled groups, SGD inner")
    for curvature in ("gradient", "loss"):
        with torch.no_grad():
            x.fill_(1.0)
            y.fill_(1.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = newt.NewtOptimizer(
                torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=1e-3),
                curvature=curvature, **UNDAMPED, controller="newton")
        for w in caught:
            print(f"  {curvature}: {w.category.__name__}: {w.message}")

        def closure(opt=opt):
            opt.zero_grad()
            loss = 0.5 * (x @ H1 @ x + y @ H2 @ y)
            loss.backward()
            return loss

        g1, g2 = H1 @ x.detach(), H2 @ y.detach()  # SGD: u_i is the group's gradient
        exact = [(g1 @ g1 / (g1 @ H1 @ g1)).item(), (g2 @ g2 / (g2 @ H2 @ g2)).item()]
        opt.step(closure)
        learned = opt.alphas
        print(f"  {curvature:8s} learned {learned[0]:.6g} {learned[1]:.6g}"
              f"   exact {exact[0]:.6g} {exact[1]:.6g}")


if __name__ == "__main__":
    one_group()
    two_groups()
