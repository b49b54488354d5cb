r"""A library of optimisation problems shared by benchmarks, tests and examples.

Every problem is a `Problem`: build fresh parameters with `problem.init(seed)`
(an `nn.Module`), draw batches with `problem.batches(seed)` (an endless
iterator; `None` batches for full-batch problems), and evaluate
`problem.loss(model, batch)`.

Deterministic (full batch, float64):

- `rosenbrock`, `beale`, `booth`, `himmelblau`: the classic 2-D functions
  from their classic starts;
- `quadratic_1e2`, `quadratic_1e4`, `quadratic_1e6`:
  $\tfrac12 (\theta - \mathbf{1})^\top Q \Lambda Q^\top (\theta - \mathbf{1})$
  in $d = 50$ with $\Lambda = \operatorname{diag}(\lambda_i)$,
  $\lambda_i = \kappa^{-(i-1)/(d-1)}$, a seeded random orthogonal $Q$ and
  $\theta_0 = 0$;
- `breast_cancer_logreg`: standardised, L2-regularised ($\lambda = 10^{-3}$)
  logistic regression; $f^*$ from L-BFGS run to convergence (cached).

Stochastic (mini-batch, float32, batch 128, `drop_last`):

- `quadratic_deep`: DeepOBS's noisy quadratic ($d = 100$);
- `digits_logreg`, `digits_mlp` (64-128-128-10 tanh), `digits_cnn`:
  scikit-learn's 8×8 digits, $X/16$, 80/20 stratified split;
- `byte_lm`: a 2-layer byte-level transformer language model (width 64,
  context 64, batch 32) on the source of 19 Python standard-library modules,
  judged on the loss of a held-out tenth.

scikit-learn is imported only when a digits or breast-cancer problem is
built, so `import newt` never needs it.

Examples:
    >>> from newt.problems import get_problem
    >>> p = get_problem("rosenbrock")
    >>> model = p.init(0)
    >>> round(p.loss(model, next(p.batches(0))).item(), 6)
    24.2
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import sysconfig
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LM_FILES",
    "PROBLEMS",
    "Problem",
    "byte_lm",
    "deterministic_problems",
    "digits_cnn",
    "digits_mlp",
    "get_problem",
    "lm_corpus",
    "quadratic_deep",
    "rotated_quadratic",
    "stochastic_problems",
    "test_function",
]

Batch = Any  # None for full-batch problems, a tuple of tensors otherwise


@dataclass(frozen=True)
class Problem:
    """One optimisation problem: parameters, data, loss and how to judge the result.

    Attributes:
        name: short identifier (`get_problem(name)` rebuilds it).
        init: `init(seed)` returns a fresh `nn.Module` holding the parameters.
        loss: `loss(model, batch)` returns the scalar loss on one batch.
        batches: `batches(seed)` returns an endless iterator of batches
            (reshuffled every epoch from `seed`); it yields `None` for
            full-batch problems.
        train_loss: loss on the whole training set (no gradient), as a float.
        f_star: the minimum $f^*$ of `train_loss` when known, else `None`.
        test_accuracy: accuracy on the held-out set, when there is one.
        test_loss: loss on the held-out set, when there is one.
        stochastic: whether batches differ from step to step.
        steps_per_epoch: batches per pass over the training set (1 for full batch).
        dtype: the parameters' dtype.
        objective: what a benchmark judges: `"train"`, the training
            suboptimality (`suboptimality`), or `"test"`, the held-out loss
            (`test_loss`).
        excess: compare with a baseline by the difference of the objective
            (nats, for losses of order one with unknown optimum) instead of
            the ratio.
    """

    name: str
    init: Callable[[int], nn.Module]
    loss: Callable[[nn.Module, Batch], Tensor]
    batches: Callable[[int], Iterator[Batch]]
    train_loss: Callable[[nn.Module], float]
    f_star: float | None = None
    test_accuracy: Callable[[nn.Module], float] | None = None
    test_loss: Callable[[nn.Module], float] | None = None
    stochastic: bool = False
    steps_per_epoch: int = 1
    dtype: torch.dtype = torch.float32
    objective: str = "train"
    excess: bool = False

    def objective_value(self, model: nn.Module) -> float:
        """The value a benchmark judges: `suboptimality`, or `test_loss` if `objective="test"`."""
        if self.objective == "test":
            if self.test_loss is None:
                raise ValueError(f"{self.name}: objective='test' needs a test_loss")
            return self.test_loss(model)
        return self.suboptimality(model)

    def suboptimality(self, model: nn.Module) -> float:
        """`train_loss(model)` $- f^*$ when $f^*$ is known, else the training loss itself."""
        value = self.train_loss(model)
        return value - self.f_star if self.f_star is not None else value


# ---------------------------------------------------------------- plumbing
class Point(nn.Module):
    """A single parameter vector `theta` (for problems that are plain functions)."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.detach().clone())


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with torch's global generator seeded, without disturbing it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _full_batch(seed: int) -> Iterator[None]:
    del seed
    while True:
        yield None


def _minibatches(tensors: Sequence[Tensor], batch_size: int) -> Callable[[int], Iterator[Batch]]:
    """Endless shuffled mini-batches (`drop_last`), one permutation per epoch."""
    n = len(tensors[0])
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training samples")

    def batches(seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                yield tuple(t[index] for t in tensors)

    return batches


def _no_grad_float(fn: Callable[[nn.Module], Tensor]) -> Callable[[nn.Module], float]:
    def wrapped(model: nn.Module) -> float:
        with torch.no_grad():
            return float(fn(model))

    return wrapped


def _deterministic(name: str, start: Tensor, fn: Callable[[Tensor], Tensor],
                   f_star: float | None) -> Problem:
    """A full-batch problem `fn(theta)` from a fixed start (the seed is unused)."""
    start = start.to(torch.float64)

    def loss(model: nn.Module, batch: Batch = None) -> Tensor:
        return fn(model.theta)

    return Problem(
        name=name,
        init=lambda seed: Point(start),
        loss=loss,
        batches=_full_batch,
        train_loss=_no_grad_float(lambda model: fn(model.theta)),
        f_star=f_star,
        dtype=torch.float64,
    )


# ---------------------------------------------------------------- 2-D test functions
def _rosenbrock(t: Tensor) -> Tensor:
    return (1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2


def _beale(t: Tensor) -> Tensor:
    x, y = t[0], t[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _booth(t: Tensor) -> Tensor:
    return (t[0] + 2 * t[1] - 7) ** 2 + (2 * t[0] + t[1] - 5) ** 2


def _himmelblau(t: Tensor) -> Tensor:
    return (t[0] ** 2 + t[1] - 11) ** 2 + (t[0] + t[1] ** 2 - 7) ** 2


_TEST_FUNCTIONS = {
    # name: (function, start, f*)
    "rosenbrock": (_rosenbrock, (-1.2, 1.0), 0.0),
    "beale": (_beale, (1.0, 1.0), 0.0),
    "booth": (_booth, (0.0, 0.0), 0.0),
    "himmelblau": (_himmelblau, (0.0, 0.0), 0.0),
}


def test_function(name: str) -> Problem:
    """A classic 2-D test function from its classic start; $f^* = 0$.

    Args:
        name: `"rosenbrock"` (start $(-1.2, 1)$), `"beale"` ($(1, 1)$),
            `"booth"` ($(0, 0)$) or `"himmelblau"` ($(0, 0)$).
    """
    fn, start, f_star = _TEST_FUNCTIONS[name]
    return _deterministic(name, torch.tensor(start, dtype=torch.float64), fn, f_star)


# ---------------------------------------------------------------- quadratics
def rotated_quadratic(kappa: float, dim: int = 50, basis_seed: int = 0) -> Problem:
    r"""A rotated quadratic with condition number $\kappa$:

    $$
    L(\theta) = \tfrac12 (\theta - \theta^*)^\top A\, (\theta - \theta^*), \qquad
    A = Q \operatorname{diag}(\lambda) Q^\top, \qquad
    \lambda_i = \kappa^{-(i-1)/(d-1)},
    $$

    with $Q$ a random orthogonal matrix, $\theta^* = \mathbf{1}$, start
    $\theta_0 = 0$ and $f^* = 0$. The minimum is away from the origin so that
    weight decay (AdamW) does not pull toward it.

    Args:
        kappa: the condition number $\kappa$.
        dim: the dimension $d$.
        basis_seed: the seed $Q$ is drawn from.
    """
    generator = torch.Generator().manual_seed(basis_seed)
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
    eigenvalues = kappa ** (-torch.arange(dim, dtype=torch.float64) / (dim - 1))
    hessian = (q * eigenvalues) @ q.T
    minimum = torch.ones(dim, dtype=torch.float64)

    def fn(theta: Tensor) -> Tensor:
        diff = theta - minimum
        return 0.5 * diff @ (hessian @ diff)

    name = f"quadratic_{kappa:.0e}".replace("+0", "")
    return _deterministic(name, torch.zeros(dim), fn, 0.0)


def _haar_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation in SO(dim) by the subgroup algorithm (Diaconis & Shahshahani, 1987).

    Consumes `rng` exactly as DeepOBS's `random_rotation` does, so the
    matrix matches theirs.
    """
    angle = 2 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v /= np.sqrt(v.T @ v)
        e = np.zeros((d + 1, 1))
        e[0, 0] = 1.0
        x = (e - v) / np.sqrt((e - v).T @ (e - v))
        embedded = np.eye(d + 1)
        embedded[1:, 1:] = rotation
        rotation = embedded - 2 * np.outer(x, x.T @ embedded)  # Householder reflection
    return -rotation


def quadratic_deep(batch_size: int = 128) -> Problem:
    r"""DeepOBS `quadratic_deep`: $\tfrac12 (\theta-x)^\top Q (\theta-x)$ averaged over a batch.

    $d = 100$; $Q = R^\top \operatorname{diag}(\lambda) R$ with 90 eigenvalues from
    $U(0, 1)$ and 10 from $U(30, 60)$, drawn with $R$ from a fresh
    `RandomState(42)`; 1000 training points $x \sim N(0, 0.6^2)$ from
    `RandomState(42)`, the test set from `RandomState(43)`;
    $\theta_0 = \mathbf{1}$. $f^*$ of the training loss is known in closed form
    ($\theta^*$ is the mean of the training points).

    Args:
        batch_size: mini-batch size (`drop_last`).
    """
    dim, noise = 100, 0.6
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rotation = _haar_rotation(dim, rng)
    hessian = torch.from_numpy(rotation.T @ np.diag(eigenvalues) @ rotation).float()
    x_train = torch.from_numpy(np.random.RandomState(42).normal(0.0, noise, (1000, dim))).float()
    x_test = torch.from_numpy(np.random.RandomState(43).normal(0.0, noise, (1000, dim))).float()

    def mean_loss(theta: Tensor, x: Tensor) -> Tensor:
        diff = theta - x
        return 0.5 * ((diff @ hessian) * diff).sum(dim=1).mean()

    centred = (x_train - x_train.mean(0)).double()
    f_star = float(0.5 * ((centred @ hessian.double()) * centred).sum(dim=1).mean())
    return Problem(
        name="quadratic_deep",
        init=lambda seed: Point(torch.ones(dim)),
        loss=lambda model, batch: mean_loss(model.theta, batch[0]),
        batches=_minibatches((x_train,), batch_size),
        train_loss=_no_grad_float(lambda model: mean_loss(model.theta, x_train)),
        test_loss=_no_grad_float(lambda model: mean_loss(model.theta, x_test)),
        f_star=f_star,
        stochastic=True,
        steps_per_epoch=len(x_train) // batch_size,
    )


# ---------------------------------------------------------------- breast cancer
@functools.lru_cache(maxsize=1)
def _breast_cancer() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.from_numpy(x), torch.from_numpy(y).double()


def _lbfgs_minimum(fn: Callable[[nn.Module], Tensor], model: nn.Module) -> float:
    """Run L-BFGS (strong Wolfe) on `fn` until it stops moving; return the minimum."""
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=1000,
                                  tolerance_grad=1e-11, tolerance_change=1e-16,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = fn(model)
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 569×30: threads only add overhead (30× slower on a busy machine)
    try:
        for _ in range(3):  # restarts: each ends on a tolerance or max_iter
            optimizer.step(closure)
        with torch.no_grad():
            return float(fn(model))
    finally:
        torch.set_num_threads(threads)


def breast_cancer_logreg(l2: float = 1e-3) -> Problem:
    r"""Full-batch logistic regression on standardised breast-cancer data.

    The loss is the mean binary cross-entropy plus
    $\tfrac{\lambda}{2}\lVert w\rVert^2$ on the weights (not the bias), from
    zero weights; $f^*$ is computed once with L-BFGS.

    Args:
        l2: the regularisation strength $\lambda$.
    """
    x, y = _breast_cancer()

    def init(seed: int) -> nn.Module:
        model = nn.Linear(x.shape[1], 1, dtype=torch.float64)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        return model

    def full_loss(model: nn.Module) -> Tensor:
        logits = model(x).squeeze(1)
        data = nn.functional.binary_cross_entropy_with_logits(logits, y)
        return data + 0.5 * l2 * model.weight.pow(2).sum()

    return Problem(
        name="breast_cancer_logreg",
        init=init,
        loss=lambda model, batch: full_loss(model),
        batches=_full_batch,
        train_loss=_no_grad_float(full_loss),
        f_star=_lbfgs_minimum(full_loss, init(0)),
        dtype=torch.float64,
    )


# ---------------------------------------------------------------- digits
@functools.lru_cache(maxsize=4)
def _digits(test_size: float | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """X/16 (float32) and labels; an 80/20 stratified split unless `test_size` is None."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x / 16.0).float()
    y = torch.from_numpy(y).long()
    if not test_size:
        return x, y, None, None
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=test_size,
                                   stratify=y.numpy(), random_state=0)
    return x[train], y[train], x[test], y[test]


def _classification(name: str, build: Callable[[], nn.Module], batch_size: int | None,
                    test_size: float | None, image: bool = False) -> Problem:
    """Cross-entropy on the digits with the model `build()`; `batch_size=None` is full batch."""
    x_train, y_train, x_test, y_test = _digits(test_size)
    if image:
        x_train = x_train.view(-1, 1, 8, 8)
        x_test = None if x_test is None else x_test.view(-1, 1, 8, 8)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        x, y = (x_train, y_train) if batch is None else batch
        return nn.functional.cross_entropy(model(x), y)

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).double().mean())

    full = batch_size is None or batch_size >= len(y_train)
    return Problem(
        name=name,
        init=functools.partial(_seeded, build),
        loss=loss,
        batches=_full_batch if full else _minibatches((x_train, y_train), batch_size),
        train_loss=_no_grad_float(lambda model: loss(model, None)),
        test_accuracy=None if x_test is None else accuracy,
        test_loss=None if x_test is None else _no_grad_float(
            lambda model: nn.functional.cross_entropy(model(x_test), y_test)),
        stochastic=not full,
        steps_per_epoch=1 if full else len(y_train) // batch_size,
    )


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _activation(activation: str | type[nn.Module] | Callable[[Tensor], Tensor]) -> nn.Module:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown; use one of {list(_ACTIVATIONS)}")
        return _ACTIVATIONS[activation]()
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if callable(activation):
        return _Lambda(activation)
    raise TypeError(f"activation must be a name, an nn.Module class or a function, "
                    f"got {type(activation).__name__}")


def digits_mlp(
    hidden: Sequence[int] = (64,),
    activation: str | type[nn.Module] | Callable[[Tensor], Tensor] = "tanh",
    *,
    batch_size: int | None = 128,
    test_size: float | None = 0.2,
    zero_init: bool = False,
    name: str | None = None,
) -> Problem:
    r"""An MLP $64$-$h_1$-…-$10$ on the 8×8 digits ($X/16$), cross-entropy loss.

    Args:
        hidden: hidden widths; `()` is multinomial logistic regression.
        activation: `"tanh"`, `"relu"`, `"gelu"`, an `nn.Module` class
            or a function such as `torch.tanh`.
        batch_size: mini-batch size (`drop_last`); `None` for full batch.
        test_size: held-out fraction (stratified, `random_state=0`);
            `None` trains on all 1797 samples and has no test set.
        zero_init: start from all-zero weights (the usual for logistic regression).
        name: the problem's name (default from the architecture).

    Examples:
        The 64-64-10 tanh MLP on all 1797 samples, in batches of 64:

        >>> p = digits_mlp((64,), "tanh", test_size=None, batch_size=64)
        >>> p.name, p.steps_per_epoch, p.test_accuracy is None
        ('digits_mlp_64-64-10', 28, True)
    """
    widths = [64, *hidden, 10]

    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers.append(_activation(activation))
            layers.append(nn.Linear(n_in, n_out))
        model = nn.Sequential(*layers)
        if zero_init:
            for p in model.parameters():
                nn.init.zeros_(p)
        return model

    default_name = "digits_mlp_" + "-".join(map(str, widths))
    return _classification(name or default_name, build, batch_size, test_size)


def digits_cnn(batch_size: int | None = 128, test_size: float | None = 0.2) -> Problem:
    """A small CNN on the 8×8 digits: conv 8 → max-pool → conv 16 → linear 10 (ReLU).

    Args:
        batch_size: mini-batch size (`drop_last`); `None` for full batch.
        test_size: held-out fraction (stratified, `random_state=0`);
            `None` trains on all 1797 samples and has no test set.
    """

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
        )

    return _classification("digits_cnn", build, batch_size, test_size, image=True)


# ---------------------------------------------------------------- byte-level language model
LM_FILES = (
    "abc.py", "bisect.py", "calendar.py", "colorsys.py", "difflib.py", "fnmatch.py",
    "fractions.py", "functools.py", "glob.py", "heapq.py", "numbers.py", "pprint.py",
    "queue.py", "random.py", "sched.py", "shlex.py", "statistics.py", "string.py",
    "textwrap.py",
)
"""The standard-library modules whose source (UTF-8 bytes, in this order) is `byte_lm`'s text."""

LM_SHA256 = "2da6d1f6279d6a89a7e09951f669a02a89c89336eb3fba74dda3ee084a87d568"
"""SHA-256 of the corpus on CPython 3.11.7; `lm_corpus` warns when the text differs."""

_LM_BLOCK = 4096  # bytes; every tenth block is held out


@functools.lru_cache(maxsize=1)
def lm_corpus() -> tuple[Tensor, Tensor, str]:
    """The text of `byte_lm`: training bytes, held-out bytes (uint8) and the corpus SHA-256.

    The modules of `LM_FILES` are read from the running Python's standard
    library and concatenated; the text is cut in blocks of 4096 bytes and
    every tenth block (blocks 9, 19, …) is held out. A corpus whose hash is not
    `LM_SHA256` (another Python minor or patch release) gives a warning:
    results on it are not comparable with the published ones.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join((stdlib / name).read_bytes() for name in LM_FILES)
    digest = hashlib.sha256(text).hexdigest()
    if digest != LM_SHA256:
        warnings.warn(f"byte_lm: the corpus from {stdlib} has SHA-256 {digest[:12]}…, not the "
                      f"published {LM_SHA256[:12]}… (another Python release): results are not "
                      "comparable with the published ones", stacklevel=2)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    blocks = torch.arange(len(data)) // _LM_BLOCK
    held_out = blocks % 10 == 9
    return data[~held_out].clone(), data[held_out].clone(), digest


class ByteTransformer(nn.Module):
    """A pre-norm causal transformer over bytes: embedding + learned positions, `layers`
    blocks of causal self-attention and a GELU MLP (4× width), final LayerNorm, linear head."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4,
                 context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits (batch, time, 256) of the next byte at every position of `tokens`."""
        length = tokens.shape[1]
        hidden = self.embed(tokens) + self.position[:length]
        hidden = self.blocks(hidden, mask=self.mask[:length, :length], is_causal=True)
        return self.head(self.norm(hidden))


def _windows(data: Tensor, starts: Tensor, length: int) -> Tensor:
    return data[starts[:, None] + torch.arange(length + 1)].long()


def byte_lm(width: int = 64, layers: int = 2, context: int = 64, batch_size: int = 32,
            eval_windows: int = 128) -> Problem:
    r"""Next-byte prediction with a small transformer on Python standard-library source.

    The loss is the mean cross-entropy (nats per byte) of the next byte over
    all `context` positions of a window. Training batches are `batch_size`
    windows at uniformly random offsets into the training text (`seed`
    drives them); one epoch is `len(train) // (batch_size · context)` steps.
    `train_loss` is the loss on `eval_windows` fixed, evenly spaced training
    windows; `test_loss`, the judged objective, on `eval_windows` evenly spaced
    windows of the held-out tenth (`lm_corpus`). The optimum is unknown and
    the losses are of order one, so benchmarks report the excess over the
    tuned baseline in nats (`excess=True`).

    Args:
        width: the model width (4 heads, MLP 4× width).
        layers: transformer blocks.
        context: window length in bytes.
        batch_size: windows per batch.
        eval_windows: windows in each of the two evaluation sets.
    """
    train, held_out, _ = lm_corpus()

    def spaced(data: Tensor) -> Tensor:
        starts = torch.linspace(0, len(data) - context - 1, eval_windows).long()
        return _windows(data, starts, context)

    train_eval, test_eval = spaced(train), spaced(held_out)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        (windows,) = batch
        logits = model(windows[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))

    def batches(seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            starts = torch.randint(0, len(train) - context - 1, (batch_size,),
                                   generator=generator)
            yield (_windows(train, starts, context),)

    def build() -> nn.Module:
        return ByteTransformer(width, layers, context=context)

    return Problem(
        name="byte_lm",
        init=functools.partial(_seeded, build),
        loss=loss,
        batches=batches,
        train_loss=_no_grad_float(lambda model: loss(model, (train_eval,))),
        test_loss=_no_grad_float(lambda model: loss(model, (test_eval,))),
        stochastic=True,
        steps_per_epoch=len(train) // (batch_size * context),
        objective="test",
        excess=True,
    )


# ---------------------------------------------------------------- registry
PROBLEMS: dict[str, Callable[[], Problem]] = {
    "rosenbrock": functools.partial(test_function, "rosenbrock"),
    "beale": functools.partial(test_function, "beale"),
    "booth": functools.partial(test_function, "booth"),
    "himmelblau": functools.partial(test_function, "himmelblau"),
    "quadratic_1e2": functools.partial(rotated_quadratic, 1e2),
    "quadratic_1e4": functools.partial(rotated_quadratic, 1e4),
    "quadratic_1e6": functools.partial(rotated_quadratic, 1e6),
    "breast_cancer_logreg": breast_cancer_logreg,
    "quadratic_deep": quadratic_deep,
    "digits_logreg": functools.partial(digits_mlp, (), zero_init=True, name="digits_logreg"),
    "digits_mlp": functools.partial(digits_mlp, (128, 128), "tanh", name="digits_mlp"),
    "digits_cnn": digits_cnn,
    "byte_lm": byte_lm,
}
"""Every named problem: `PROBLEMS[name]()` builds it (`get_problem` caches it)."""


@functools.cache
def get_problem(name: str) -> Problem:
    """The problem called `name` (built once per process; see `PROBLEMS`)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}")
    return PROBLEMS[name]()


_STOCHASTIC = ("quadratic_deep", "digits_logreg", "digits_mlp", "digits_cnn", "byte_lm")


def deterministic_problems() -> list[str]:
    """Names of the full-batch problems."""
    return [name for name in PROBLEMS if name not in _STOCHASTIC]


def stochastic_problems() -> list[str]:
    """Names of the mini-batch problems."""
    return list(_STOCHASTIC)


def _check() -> None:  # pragma: no cover - a quick self-test: python -m newt.problems
    for name in PROBLEMS:
        p = get_problem(name)
        model = p.init(0)
        loss = p.loss(model, next(p.batches(0)))
        print(f"{name:22s} loss₀={float(loss):.6g} train={p.train_loss(model):.6g} "
              f"f*={p.f_star} stochastic={p.stochastic} steps/epoch={p.steps_per_epoch}")
        assert math.isfinite(float(loss))


if __name__ == "__main__":  # pragma: no cover
    _check()
