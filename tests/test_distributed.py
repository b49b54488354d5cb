"""Data-parallel and sharded newt on 2 real gloo processes (loopback, bounded timeouts).

One launch of a pair of processes runs every case (process start-up dominates the
time); a hang kills the pair and fails the test (`distributed.run_workers`).
"""

from __future__ import annotations

import inspect

import dist_workers as w
import pytest
import torch
import torch.distributed as dist
from distributed import WorkerError, run_workers

import newt
from newt import distributed as nd

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

CORE_V2 = "process_group" in inspect.signature(newt.NewtOptimizer).parameters
needs_core_v2 = pytest.mark.skipif(not CORE_V2, reason="NewtOptimizer(process_group=...) "
                                   "arrives with the core v2")
MODES = w.NEWT_MODES


@pytest.fixture(scope="module")
def runs():
    """Every 2-process run, in one launch (the newt ones once the core v2 is in)."""
    return run_workers("dist_workers:everything", world_size=2, timeout=150, newt=CORE_V2)


@pytest.fixture(scope="module")
def harness(runs):
    return runs


def test_harness_ddp_sgd_matches_one_process_on_the_concatenated_batch(harness):
    ranks = [r["ddp_sgd"] for r in harness]
    assert ranks[0]["params"]["sha1"] == ranks[1]["params"]["sha1"]
    single = w.sgd_train(0, 1, ddp=False)
    assert w.max_abs_diff(ranks[0]["params"]["values"], single["params"]["values"]) < 1e-10
    # Each rank's loss is its half's; their mean is the concatenated batch's loss.
    for t in (0, 49):
        mean = (ranks[0]["losses"][t] + ranks[1]["losses"][t]) / 2
        assert mean == pytest.approx(single["losses"][t], rel=1e-9)
    assert ranks[0]["losses"][0] != ranks[1]["losses"][0]


def test_fsdp2_fully_shard_runs_on_cpu_gloo(harness):
    probe = harness[0]["fsdp2_probe"]
    assert probe["ok"], probe["error"]
    assert probe["kinds"] == ["DTensor"]


def test_reductions_for_real(harness):
    for rank, r in enumerate(harness):
        u = r["units"]
        assert u["phase"] == [[3.0, 0.0], [1.0], [True, False]]
        assert u["mean"] == [0.5, 4.0]
        assert u["all"] == [True, False]
        assert u["resolve"] is True
        assert u["weights"] == [0.5, 1.0]  # replicated counts once over 2 ranks; a shard fully
        assert "1 parameter(s) are sharded" in u["check"]
        assert "process_group" in u["check"]
        assert u["dtensor"] == [True, 1.0]
        assert u["local_write"] == 8 * 8 * 1.0 + 8 * 8 * 2.0  # both shards written in place
        assert u["local_numel"] == 8 * 8, rank


def test_a_hang_fails_instead_of_hanging():
    with pytest.raises(WorkerError, match="hung"):
        run_workers("dist_workers_hang:hang", world_size=2, timeout=3)


def test_a_failing_rank_fails_fast_with_its_traceback():
    with pytest.raises(WorkerError, match="ZeroDivisionError"):
        run_workers("dist_workers_hang:fail_on_rank_1", world_size=2, timeout=60)


def test_process_group_argument_checks():
    assert nd.resolve_process_group(None) is None
    with pytest.raises(TypeError, match="ProcessGroup"):
        nd.resolve_process_group("world")
    with pytest.raises(ValueError, match="1-D"):
        nd.all_reduce_sum(torch.zeros(2, 2), None)
    assert nd.world_size(None) == 1
    # Single process: the reductions are the identity.
    sums, means, flags = nd.reduce_phase([torch.tensor(2.0)], [torch.tensor(3.0)],
                                         [torch.tensor(False)], process_group=None)
    assert sums.tolist() == [2.0] and means.tolist() == [3.0] and flags.tolist() == [False]
    nd.check_sharded_without_group([torch.zeros(1)], None)  # no job: nothing to check


def test_sharding_marks_and_weights_in_one_process():
    plain, marked = torch.zeros(3), torch.zeros(3)
    nd.mark_sharded(marked)
    assert not nd.is_sharded(plain) and nd.is_sharded(marked)
    assert nd.local_tensor(plain) is plain
    assert nd.reduction_weight(marked, None) == 1.0  # no group: every weight is 1
    with pytest.raises(TypeError, match="mark_sharded"):
        nd.mark_sharded([plain, 3])


@needs_core_v2
def test_newt_process_group_argument_is_checked():
    w_ = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match=r"process_group=.*ProcessGroup"):
        newt.NewtOptimizer(torch.optim.SGD([w_], lr=0.1), process_group="world")
    opt = newt.NewtOptimizer(torch.optim.SGD([w_], lr=0.1), process_group=None)
    assert opt.process_group is None


def test_an_empty_local_shard_counts_as_finite():
    from newt import functional as F

    # FSDP2 gives rank 1 an empty shard of a 1-element bias; the inf-norm has no identity.
    assert bool(F.all_finite([torch.zeros(0), torch.ones(2)]))
    assert not bool(F.all_finite([torch.zeros(0), torch.tensor([float("nan")])]))
    assert bool(F.all_finite([torch.zeros(0)]))


# ---------------------------------------------------------------------------- newt (core v2)
@pytest.fixture(scope="module")
def single_runs():
    return {mode: w.newt_train(0, 1, mode, wrap="none") for mode in MODES}


def _assert_identical_and_single(ranks, single) -> None:
    assert ranks[0]["alphas"] == ranks[1]["alphas"]  # bit for bit
    assert ranks[0]["params"]["sha1"] == ranks[1]["params"]["sha1"]
    for t in range(0, len(single["alphas"]), 7):
        for a, b in zip(ranks[0]["alphas"][t], single["alphas"][t], strict=True):
            assert a == pytest.approx(b, rel=1e-8), t
    assert w.max_abs_diff(ranks[0]["params"]["values"], single["params"]["values"]) < 1e-9
    alphas = [a[0] for a in ranks[0]["alphas"]]
    assert max(alphas) > 1.5 * min(alphas)  # α moved: the test is not on a frozen α


@needs_core_v2
@pytest.mark.parametrize("mode", MODES)
def test_ddp_newt_ranks_agree_and_match_one_process(runs, single_runs, mode):
    _assert_identical_and_single([r["ddp"][mode] for r in runs], single_runs[mode])


@needs_core_v2
@pytest.mark.parametrize("mode", MODES)
def test_fsdp2_newt_ranks_agree_and_match_one_process(runs, single_runs, mode):
    _assert_identical_and_single([r["fsdp2"][mode] for r in runs], single_runs[mode])


@needs_core_v2
@pytest.mark.parametrize("mode", w.SHARD_MODES)
def test_manual_shard_with_an_empty_group_and_a_nan_on_one_rank(runs, mode):
    single = w.manual_shard_train(0, 1, mode)
    ranks = [r["manual"][mode] for r in runs]
    _assert_identical_and_single(ranks, single)
    # The NaN was in rank 1's gradient only; on both ranks the step was skipped and the
    # sharded group's α kept (the other groups' gradients were finite).
    t = w.POISON_STEP
    assert ranks[0]["alphas"][t][0] == ranks[0]["alphas"][t - 1][0]


@needs_core_v2
def test_without_a_group_ddp_closure_ranks_diverge_and_fsdp2_is_refused(runs):
    ranks = [r["without"] for r in runs]
    # Each rank judged its own loss: α differs (the misuse the warning names).
    assert ranks[0]["closure"]["alphas"] != ranks[1]["closure"]["alphas"]
    assert all(r["warned"] for r in ranks)
    assert "pass NewtOptimizer(..., process_group=" in ranks[0]["fsdp2_error"]
