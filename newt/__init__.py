"""newt: learn the learning rate of any PyTorch optimizer with a Newton step on α."""

from importlib.metadata import PackageNotFoundError, version

from newt.optimizer import NewtOptimizer, NewtStats
from newt.options import NewtOptions
from newt.presets import DEFAULT, PRESETS, SEED
from newt.rule import Safeguard, update_lr
from newt.scheduler import Newt, NewtConfig

try:
    __version__ = version("newt")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT",
    "PRESETS",
    "SEED",
    "Newt",
    "NewtConfig",
    "NewtOptimizer",
    "NewtOptions",
    "NewtStats",
    "Safeguard",
    "__version__",
    "update_lr",
]
