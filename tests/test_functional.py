"""The multi-tensor kernels of newt.functional agree with the single-tensor reference."""

from __future__ import annotations

import math

import pytest
import torch

from newt import functional as F

SHAPES = [(3, 4), (7,), (), (2, 3, 5), (1, 1), (40,), (9, 11)]


def _triples(dtypes, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params, grads, snapshots = [], [], []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i % len(dtypes)]
        p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if dtype.is_complex:
            p = p + 1j * torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        params.append(p)
        grads.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                     if not dtype.is_complex else torch.randn_like(p))
        snapshots.append(p + 0.1 * torch.randn_like(p))
    return grads, snapshots, params


def _exact(grads, snapshots, params) -> float:
    """Σ Re⟨g, s − p⟩ in float64/complex128, one tensor at a time."""
    total = 0.0
    for g, s, p in zip(grads, snapshots, params, strict=True):
        if g is None:
            continue
        wide = torch.complex128 if g.is_complex() else torch.float64
        d = s.to(wide) - p.to(wide)
        total += float(torch.vdot(g.to(wide).reshape(-1), d.reshape(-1)).real)
    return total


def _both(grads, snapshots, params, out_dtype=torch.float64):
    return [F.group_inner_product(grads, snapshots, params, out_dtype=out_dtype, foreach=foreach)
            for foreach in (False, True)]


@pytest.fixture(params=[F.CHUNK, 7, 40], ids=lambda c: f"chunk{c}")
def chunk(request, monkeypatch):
    """Small chunks make the multi-tensor path pack and slice even these small tensors."""
    monkeypatch.setattr(F, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_product_paths_agree_in_float64(chunk, seed):
    grads, snapshots, params = _triples([torch.float64], seed=seed)
    single, multi = _both(grads, snapshots, params)
    assert single.dtype == multi.dtype == torch.float64
    assert single.shape == multi.shape == ()
    exact = _exact(grads, snapshots, params)
    torch.testing.assert_close(single, multi, rtol=1e-13, atol=1e-13)
    assert single.item() == pytest.approx(exact, rel=1e-13, abs=1e-13)


def test_inner_product_of_a_large_tensor_is_sliced_without_changing_it(monkeypatch):
    grads, snapshots, params = _triples([torch.float64], shapes=[(1000,), (30, 40)])
    reference = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float64)
    monkeypatch.setattr(F, "CHUNK", 64)
    sliced = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float64)
    torch.testing.assert_close(sliced, reference, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("foreach", [False, True])
def test_inner_product_of_an_empty_group_is_a_zero_scalar(foreach):
    total = F.group_inner_product([], [], [], out_dtype=torch.float32, foreach=foreach)
    assert total.dtype == torch.float32 and total.shape == () and total.item() == 0.0


@pytest.mark.parametrize("foreach", [False, True])
def test_a_missing_gradient_counts_as_zero(foreach, chunk):
    grads, snapshots, params = _triples([torch.float64])
    grads[1] = grads[4] = None
    zeros = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    with_none = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float64,
                                      foreach=foreach)
    with_zeros = F.group_inner_product(zeros, snapshots, params, out_dtype=torch.float64,
                                       foreach=foreach)
    torch.testing.assert_close(with_none, with_zeros, rtol=1e-13, atol=1e-13)
    all_none = F.group_inner_product([None] * len(params), snapshots, params,
                                     out_dtype=torch.float64, foreach=foreach)
    assert all_none.item() == 0.0


def test_mismatched_lists_are_refused():
    grads, snapshots, params = _triples([torch.float64])
    with pytest.raises(ValueError, match="one of each per parameter"):
        F.group_inner_product(grads[:-1], snapshots, params, out_dtype=torch.float64)


def test_mixed_dtypes_agree_and_keep_the_output_dtype(chunk):
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    grads, snapshots, params = _triples(dtypes)
    single, multi = _both(grads, snapshots, params)
    assert single.dtype == multi.dtype == torch.float64
    # Half-precision pieces round d = s − p (and, on the multi-tensor path, the products)
    # in their own dtype before accumulating in float32.
    exact = _exact(grads, snapshots, params)
    assert single.item() == pytest.approx(exact, rel=2e-2, abs=2e-2)
    assert multi.item() == pytest.approx(exact, rel=2e-2, abs=2e-2)
    torch.testing.assert_close(single, multi, rtol=2e-2, atol=2e-2)


def test_float32_paths_agree(chunk):
    grads, snapshots, params = _triples([torch.float32], seed=3)
    single, multi = _both(grads, snapshots, params, out_dtype=torch.float32)
    assert single.dtype == multi.dtype == torch.float32
    torch.testing.assert_close(single, multi, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_complex_tensors_give_the_real_part_of_the_inner_product(chunk, dtype):
    grads, snapshots, params = _triples([dtype, torch.float64])
    grads[0] = grads[0].conj()  # a lazily conjugated view must be resolved, not ignored
    single, multi = _both(grads, snapshots, params)
    exact = _exact(grads, snapshots, params)
    tol = 1e-12 if dtype == torch.complex128 else 1e-5
    assert single.item() == pytest.approx(exact, rel=tol, abs=tol)
    assert multi.item() == pytest.approx(exact, rel=tol, abs=tol)


def test_non_contiguous_tensors(chunk):
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(30, 20, generator=gen, dtype=torch.float64) for _ in range(3)]
    params = [base[0].t(), base[1][:, ::2]]
    grads = [base[2].t(), torch.randn(30, 10, generator=gen, dtype=torch.float64)]
    snapshots = [p.clone() + 0.01 for p in params]  # clone keeps the strides of a dense p
    single, multi = _both(grads, snapshots, params)
    exact = _exact(grads, snapshots, params)
    assert single.item() == pytest.approx(exact, rel=1e-12)
    assert multi.item() == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_copy_snapshot(foreach):
    _, snapshots, params = _triples([torch.float64, torch.float32, torch.complex64])
    F.copy_snapshot(snapshots, params, foreach=foreach)
    for s, p in zip(snapshots, params, strict=True):
        assert torch.equal(s, p) and s.data_ptr() != p.data_ptr()
    F.copy_snapshot([], [], foreach=foreach)  # an empty group is a no-op


@pytest.mark.parametrize("keep", [True, False])
def test_restore_where_undoes_only_a_rejected_step(keep):
    params = [torch.tensor([1.0, float("nan")]), torch.tensor([[float("inf")]])]
    snapshots = [torch.tensor([3.0, 4.0]), torch.tensor([[5.0]])]
    before = [p.clone() for p in params]
    F.restore_where(torch.tensor(keep), params, snapshots)
    for p, b, s in zip(params, before, snapshots, strict=True):
        torch.testing.assert_close(p, b if keep else s, equal_nan=True)


@pytest.mark.parametrize("keep", [True, False])
def test_zero_where_clears_only_rejected_gradients(keep):
    grads = [torch.tensor([1.0, float("nan")]), None, torch.tensor([[float("-inf")]])]
    before = [None if g is None else g.clone() for g in grads]
    F.zero_where(torch.tensor(keep), grads)
    for g, b in zip(grads, before, strict=True):
        if g is None:
            continue
        torch.testing.assert_close(g, b if keep else torch.zeros_like(b), equal_nan=True)


def test_the_inner_product_allocates_no_parameter_sized_temporary(monkeypatch):
    """Pieces of at most CHUNK elements: the largest temporary is bounded by CHUNK."""
    n = 10 * F.CHUNK
    params = [torch.randn(n)]
    grads, snapshots = [torch.randn(n)], [params[0] + 1]
    sizes = []
    real_sub = torch.sub

    def spy(a, b, *args, **kwargs):
        sizes.append(a.numel())
        return real_sub(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "sub", spy)
    total = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float32)
    assert sizes and max(sizes) <= F.CHUNK
    assert total.item() == pytest.approx(float(grads[0].double().sum()), rel=1e-4)


@pytest.mark.parametrize("foreach", [False, True])
def test_refreshing_snapshots_in_the_same_pass_changes_nothing_else(foreach, chunk):
    grads, snapshots, params = _triples([torch.float64, torch.float32, torch.complex128])
    grads[2] = None
    expected = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float64,
                                     foreach=foreach)
    fused = F.group_inner_product(grads, snapshots, params, out_dtype=torch.float64,
                                  foreach=foreach, refresh_snapshots=True)
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-6)
    for s, p in zip(snapshots, params, strict=True):  # every snapshot, with a gradient or not
        assert torch.equal(s, p)


@pytest.mark.parametrize("chunk", [1 << 18, 4], ids=["one-piece", "per-tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.complex64])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_all_finite_flags_any_nonfinite_entry(chunk, dtype, bad, monkeypatch):
    monkeypatch.setattr(F, "CHUNK", chunk)
    tensors = [torch.ones(3, 2, dtype=dtype), None, torch.zeros(0, dtype=dtype),
               torch.full((5,), -2.0, dtype=dtype)]
    if bad is not None:
        tensors[3][4] = bad
    assert bool(F.all_finite(tensors)) is (bad is None)
    assert F.all_finite(tensors, read=True) is (bad is None)


@pytest.mark.parametrize("read", [False, True])
@pytest.mark.parametrize("large", [False, True], ids=["fused", "summed"])
def test_all_finite_finds_one_bad_entry_in_any_dtype(large, read, monkeypatch):
    """Small models take the fused kernel, large ones (> CHUNK entries) the sums: both
    find a single NaN or inf in any tensor, of any floating dtype, and leave the
    gradients and their version counters untouched."""
    if not large:  # the fused kernel must answer alone
        monkeypatch.setattr(F, "_total", lambda tensors: pytest.fail("summed"))
    n = F.CHUNK // 2 + 1 if large else 5
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for bad in (math.nan, math.inf, -math.inf):
        for i, dtype in enumerate(dtypes):
            tensors = [torch.randn(n, dtype=d) for d in dtypes]
            tensors.insert(1, None)
            assert bool(F.all_finite(tensors, read=read))
            target = tensors[i + 1 if i else 0]
            target[n // 2] = bad
            before = [(t.clone(), t._version) for t in tensors if t is not None]
            result = F.all_finite(tensors, read=read)
            assert isinstance(result, bool) if read else result.dtype == torch.bool
            assert not bool(result), (dtype, bad)
            after = [t for t in tensors if t is not None]
            for (copy, version), t in zip(before, after, strict=True):
                assert torch.equal(copy.nan_to_num(), t.nan_to_num()) and t._version == version


def test_all_finite_complex_empty_and_overflow():
    assert bool(F.all_finite([torch.ones(2, dtype=torch.float64), torch.ones(3)]))
    assert not bool(F.all_finite([torch.ones(2), torch.tensor([math.nan], dtype=torch.float64)]))
    # complex tensors are refused by the fused kernel and summed
    assert F.all_finite([torch.ones(3, dtype=torch.complex64)], read=True) is True
    assert F.all_finite([torch.tensor([complex(0, math.nan)])], read=True) is False
    assert F.all_finite([None, torch.zeros(0)], read=True) is True
    big = torch.full((4,), 3e38)  # finite entries whose float32 sum overflows
    assert F.all_finite([big], read=True) is True  # the fused check is exact
    huge = torch.full((F.CHUNK + 1,), 3e38)
    assert F.all_finite([huge], read=True) is False  # the sum is conservative


def test_all_finite_fused_path_under_a_float64_default_dtype(monkeypatch):
    """The kernel's flags are float32 whatever the default dtype (else it refuses them)."""
    monkeypatch.setattr(F, "_total", lambda tensors: pytest.fail("summed"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tensors = [torch.randn(3), torch.randn(2, dtype=torch.float32)]
        assert F.all_finite(tensors, read=True) is True
        tensors[0][1] = math.inf
        assert F.all_finite(tensors, read=True) is False
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------- several groups at once
def _groups(dtypes, sizes=(3, 2, 2), seed=0):
    """The tensors of `_triples` cut into consecutive groups of ``sizes`` tensors."""
    grads, snapshots, params = _triples(dtypes, seed=seed)
    out, start = [], 0
    for n in sizes:
        out.append((grads[start:start + n], snapshots[start:start + n], params[start:start + n]))
        start += n
    return [list(x) for x in zip(*out, strict=True)]


@pytest.mark.parametrize("refresh", [False, True])
@pytest.mark.parametrize("case", ["fused", "missing_grad", "mixed_dtypes", "sliced", "one_group"])
def test_inner_products_of_several_groups_equal_each_group_s(case, refresh, monkeypatch):
    """Fused (one piece for all groups) or not, each group gets its own ⟨g, s − p⟩, in its
    own dtype, and the refresh sets every snapshot to its parameter."""
    sizes = (7,) if case == "one_group" else (3, 2, 2)
    dtypes = [torch.float64, torch.float32] if case == "mixed_dtypes" else [torch.float64]
    grads, snapshots, params = _groups(dtypes, sizes)
    if case == "missing_grad":
        grads[1][0] = None
    if case == "sliced":
        monkeypatch.setattr(F, "CHUNK", 40)
    out_dtypes = [torch.float64, torch.float32, torch.float64][:len(sizes)]
    expected = [_exact(g, s, p) for g, s, p in zip(grads, snapshots, params, strict=True)]
    copies = [[s.clone() for s in ss] for ss in snapshots]
    got = F.inner_products(grads, copies, params, out_dtypes=out_dtypes,
                           refresh_snapshots=refresh)
    assert [t.dtype for t in got] == out_dtypes and all(t.shape == () for t in got)
    for value, exact, dtype in zip(got, expected, out_dtypes, strict=True):
        tol = 1e-12 if dtype == torch.float64 and case != "mixed_dtypes" else 1e-5
        assert value.item() == pytest.approx(exact, rel=tol, abs=tol)
    for ss, ps, old in zip(copies, params, snapshots, strict=True):
        for s, p, o in zip(ss, ps, old, strict=True):
            torch.testing.assert_close(s, p if refresh else o, rtol=0, atol=0)


def test_inner_products_fuse_the_kernels_of_small_groups():
    """Three float64 groups in one piece: one subtraction, one product, one concatenation
    for all of them, not one of each per group (counted at the dispatcher)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    grads, snapshots, params = _groups([torch.float64])
    with Count() as fused:
        F.inner_products(grads, snapshots, params, out_dtypes=[torch.float64] * 3)
    with Count() as separate:
        for g, s, p in zip(grads, snapshots, params, strict=True):
            F.group_inner_product(g, s, p, out_dtype=torch.float64)
    for op in ("_foreach_sub", "_foreach_mul_", "cat"):
        assert fused.ops.count(op) == 1 and separate.ops.count(op) == 3, (op, fused.ops)


def test_inner_products_refuse_mismatched_groups():
    grads, snapshots, params = _groups([torch.float64])
    with pytest.raises(ValueError, match="one per group"):
        F.inner_products(grads, snapshots, params, out_dtypes=[torch.float64])
    grads[0] = grads[0][:-1]
    with pytest.raises(ValueError, match="one of each per parameter"):
        F.inner_products(grads, snapshots, params, out_dtypes=[torch.float64] * 3)


def test_one_piece_names_what_the_fused_path_needs(monkeypatch):
    _, snapshots, params = _triples([torch.float64])
    assert F.one_piece(snapshots, params)
    assert not F.one_piece([], [])
    assert not F.one_piece(*_triples([torch.float64, torch.float32])[1:])
    assert not F.one_piece(*_triples([torch.complex128])[1:])
    wide = torch.randn(4, 6, dtype=torch.float64)
    assert not F.one_piece([wide.t().clone()], [wide.t()])  # a non-contiguous parameter
    monkeypatch.setattr(F, "CHUNK", 40)
    assert not F.one_piece(snapshots, params)  # more elements than one piece holds


def test_a_non_contiguous_gradient_on_the_fused_path():
    """The fused path checks the gradients at each call but not their layout: a
    transposed gradient still gives the exact inner product."""
    p = torch.randn(6, 4, dtype=torch.float64)
    s = p + 0.1 * torch.randn_like(p)
    g = torch.randn(4, 6, dtype=torch.float64).t()
    assert not g.is_contiguous() and F.one_piece([s], [p])
    for fused in (None, True):
        total = F.group_inner_product([g, None], [s, s.clone()], [p, p.clone()],
                                      out_dtype=torch.float64, fused=fused)
        assert total.item() == pytest.approx(_exact([g], [s], [p]), rel=1e-13)
        total = F.group_inner_product([g], [s], [p], out_dtype=torch.float64, fused=fused)
        assert total.item() == pytest.approx(_exact([g], [s], [p]), rel=1e-13)
