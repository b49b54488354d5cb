"""Quality and cost benchmarks for newt (not installed with the package).

Run from the repository root::

    python -m benchmarks.run --quick      # a few minutes: 5 problems, 2 seeds
    python -m benchmarks.run --full       # every problem, 3 seeds

Modules:

- :mod:`benchmarks.methods`: the methods compared (fixed-LR inner optimizers,
  newt in each mode and preset, learning-rate-free peers, L-BFGS, SGD-HD);
- :mod:`benchmarks.harness`: :func:`~benchmarks.harness.run_one`, one run of
  one method on one problem at one initial learning rate and seed;
- :mod:`benchmarks.analysis`: ratios to the tuned baseline, robust width;
- :mod:`benchmarks.report`: Markdown tables and plots;
- :mod:`benchmarks.cost`: time per step and state memory, interleaved;
- :mod:`benchmarks.run`: the command line.

:mod:`benchmarks.overhead` measures newt's per-step time and peak memory on
larger models in detail (``docs/performance.md``).

The protocol is ``docs/benchmark-protocol.md``; the results are in
``docs/benchmarks.md``.
"""
