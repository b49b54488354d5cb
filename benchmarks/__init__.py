"""Quality and cost benchmarks for newt (not installed with the package).

Run from the repository root::

    python -m benchmarks.run --quick      # a few minutes: 5 problems, 2 seeds
    python -m benchmarks.run --full       # every problem, short + long budgets, 3 seeds
    python -m benchmarks.run --full --estimate   # how long --full takes here

Modules:

- :mod:`benchmarks.methods`: the methods compared (fixed-LR inner optimizers
  with and without warmup + cosine, newt in each mode and preset with and
  without it, learning-rate-free peers as their authors recommend them,
  L-BFGS, SGD-HD);
- :mod:`benchmarks.harness`: :func:`~benchmarks.harness.run_one`, one run of
  one method on one problem at one initial learning rate and seed;
- :mod:`benchmarks.analysis`: ratios (excess in nats for the language model)
  to the tuned baseline, robust width;
- :mod:`benchmarks.report`: Markdown tables and plots;
- :mod:`benchmarks.cost`: time per step and state memory, interleaved;
- :mod:`benchmarks.run`: the command line.

:mod:`benchmarks.overhead` measures newt's per-step time and peak memory on
larger models in detail (``docs/performance.md``).

The protocol is ``docs/benchmark-protocol.md``; the results are in
``docs/benchmarks.md``.
"""
