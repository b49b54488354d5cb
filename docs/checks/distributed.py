"""docs/distributed.md: α and a parameter checksum per rank, 2 gloo processes, each mode.

Runs the same 2-process jobs as tests/test_distributed.py (50 newt(Adam) steps
of a float64 MLP; DDP and FSDP2 in closure, closure-free and reuse modes; a
feature-sharded linear model with a group one rank has no gradient for) and
prints, per rank, the final α, the sum and SHA-1 of the parameters, and the
largest parameter difference from one process on the concatenated batch; then
DDP in closure mode without process_group (what the group prevents) and the
error FSDP2 without a group raises.

Run: PYTHONPATH=. python docs/checks/distributed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import dist_workers as w
from distributed import run_workers


def report(label: str, ranks: list[dict], single: dict) -> None:
    for rank, r in enumerate(ranks):
        alphas = ", ".join(f"{a:.6g}" for a in r["alphas"][-1])
        diff = w.max_abs_diff(r["params"]["values"], single["params"]["values"])
        print(f"{label:<22} rank {rank}: α [{alphas}]  sum {r['params']['sum']:+.12f}  "
              f"sha1 {r['params']['sha1']}  max|Δ| vs 1 process {diff:.1e}")


start = time.perf_counter()
runs = run_workers("dist_workers:everything", world_size=2, timeout=300, newt=True)
elapsed = time.perf_counter() - start
without = [r["without"] for r in runs]
report("ddp closure, no group", [r["closure"] for r in without],
       w.newt_train(0, 1, "closure", wrap="none"))
print(f"warned: {[r['warned'] for r in without]}; FSDP2 without a group: "
      f"{without[0]['fsdp2_error']}")
for wrap in ("ddp", "fsdp2"):
    for mode in w.NEWT_MODES:
        single = w.newt_train(0, 1, mode, wrap="none")
        report(f"{wrap} {mode}", [r[wrap][mode] for r in runs], single)
for mode in w.SHARD_MODES:
    report(f"manual shard {mode}", [r["manual"][mode] for r in runs],
           w.manual_shard_train(0, 1, mode))
print(f"the 2-process launch (incl. start-up): {elapsed:.1f} s")
