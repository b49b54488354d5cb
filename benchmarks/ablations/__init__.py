"""Research harnesses for newt's design decisions (not installed with the package).

- :mod:`benchmarks.ablations.alpha_controller`: candidate α controllers as pure
  functions of the per-step scalars, and the ablations of ``docs/design/alpha.md``.
"""
