"""MkDocs hook: the presets tables on choosing.md, computed from the installed code.

``<!-- newt:presets -->`` becomes a table of every option of every preset in
``newt.presets.PRESETS``; ``<!-- newt:preset-bounds -->`` becomes a table of
what each preset lets α do in one step, obtained by running
``newt.rule.update_lr`` on inputs that trigger each branch. Nothing here is
typed in by hand, so the page cannot drift from the code. The hook also fails
the (strict) build if an option of a preset has no row in the page's option
table (a line starting with ``| `name` ``).
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.newt_presets")
_ROOT = str(Path(__file__).resolve().parents[2])


def _use_checkout() -> None:
    """Import newt from the checkout being built, not whichever newt is installed.

    mkdocstrings reads the source from ``paths: [.]``; the computed tables must
    describe the same code.
    """
    if sys.path[:1] != [_ROOT]:
        sys.path.insert(0, _ROOT)
    module = sys.modules.get("newt")
    if module is not None and not str(getattr(module, "__file__", "")).startswith(_ROOT):
        for name in [n for n in sys.modules if n == "newt" or n.startswith("newt.")]:
            del sys.modules[name]


def _fmt(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value!r}`"


def _options_table(presets: dict) -> str:
    names = list(presets)
    keys = list(dict.fromkeys(k for p in presets.values() for k in p))
    lines = ["| Option | " + " | ".join(f'`"{n}"`' for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| `{key}` | " + " | ".join(_fmt(presets[n].get(key, "—")) for n in names)
                     + " |")
    return "\n".join(lines)


def _bounds_table(presets: dict) -> str:
    import torch

    from newt.rule import newton_update, update_lr

    rule_options = set(inspect.signature(newton_update).parameters) - {
        "lr", "slope", "lookahead_slope", "curvature", "loss_increase", "losses_finite"}
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731

    def factor(preset: dict, A: float, B: float, L0: float | None = None,
               L1: float | None = None) -> float:
        options = {k: v for k, v in preset.items() if k in rule_options}
        options.update(lr_min=0.0, lr_max=math.inf)  # measure the factor, not the clamp on α
        out = update_lr(t(1.0), t(A), t(B), None if L0 is None else t(L0),
                        None if L1 is None else t(L1), curvature="gradient", **options)
        return float(out.lr)  # α_t = 1, so α_{t+1} is the factor

    rows = {
        # A = 1 and B = 1 − 1/f give the Newton factor f with C = 1/f > 0.
        "Largest factor from a Newton step (f = 10³)": lambda p: factor(p, 1.0, 1.0 - 1e-3),
        "Smallest factor from a Newton step (f = 10⁻³)": lambda p: factor(p, 1.0, 1.0 - 1e3),
        "Factor after a loss increase, at most (f = 10³, loss up)": lambda p: factor(
            p, 1.0, 1.0 - 1e-3, 0.0, 1.0),
        "Factor on non-positive curvature": lambda p: factor(p, 1.0, 2.0),
        "Factor after a non-finite lookahead": lambda p: factor(p, 1.0, float("nan")),
    }
    names = list(presets)
    lines = ["| | " + " | ".join(f'`"{n}"`' for n in names) + " |",
             "|---|" + "---|" * len(names)]
    growth = {}
    for label, fn in rows.items():
        values = [fn(dict(presets[n])) for n in names]
        if label.startswith("Largest"):
            growth = dict(zip(names, values, strict=True))
        lines.append(f"| {label} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    steps = [math.ceil(math.log(1e4) / math.log(growth[n])) if growth[n] > 1 else "never"
             for n in names]
    lines.append("| Fewest steps to grow α 10⁴-fold | " + " | ".join(map(str, steps)) + " |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- newt:presets -->" not in markdown and "<!-- newt:preset-bounds -->" not in markdown:
        return markdown
    _use_checkout()
    from newt.presets import PRESETS

    presets = {name: dict(p) for name, p in PRESETS.items()}
    documented = set()
    for line in markdown.splitlines():  # first cells of table rows, before the tables go in
        if line.startswith("| `"):
            documented.update(line.split("|")[1].replace(",", " ").replace("`", " ").split())
    markdown = markdown.replace("<!-- newt:presets -->", _options_table(presets))
    markdown = markdown.replace("<!-- newt:preset-bounds -->", _bounds_table(presets))
    for key in dict.fromkeys(k for p in presets.values() for k in p):
        if key not in documented:
            log.warning("%s: option %r of newt.presets has no row in the option table",
                        page.file.src_uri, key)
    return markdown
