"""The fused attention-pooling operator against the reference kernels."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_attnprobe import RaggedArray
from sklearn_attnprobe import _fused
from sklearn_attnprobe._fused import backend_for, fused_attention_pool, load_backend
from sklearn_attnprobe._kernels import attention_pool, relative_positions
from sklearn_attnprobe._modules import AttentionProbeModule, StackedAttentionProbeModule
from sklearn_attnprobe._packing import pack

numba_backend = load_backend("numba")
needs_numba = pytest.mark.skipif(numba_backend is None, reason="numba not installed")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# tolerances of float32 accumulation against float64 (the data are the same
# values in both: half-precision inputs are compared to their exact widening)
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9)}
TOL32 = dict(atol=2e-4, rtol=2e-4)


def make_block(lengths, d, dtype, rng, scale=1.0):
    k, T = len(lengths), max(lengths)
    lengths = torch.as_tensor(lengths)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    x = torch.as_tensor(rng.standard_normal((k, T, d)) * scale) * mask[..., None]
    return x.to(dtype), mask, lengths


def reference(x, mask, lengths, query, slope, position, dpooled):
    """Pooled states and (dQ, dslope) of the reference kernel, in float64."""
    q = query.detach().double().requires_grad_()
    s = slope.detach().double().requires_grad_()
    pooled, _ = attention_pool(x.double(), mask, lengths, q, s, position)
    (pooled * dpooled.double()).sum().backward()
    return pooled.detach(), q.grad, s.grad if position else torch.zeros_like(s)


def fused(x, lengths, query, slope, position, dpooled, backend=None):
    q = query.detach().clone().requires_grad_()
    s = slope.detach().clone().requires_grad_()
    pooled, lse = fused_attention_pool(x, lengths, q, s, position, backend=backend)
    (pooled * dpooled.to(pooled.dtype)).sum().backward()
    ds = s.grad if s.grad is not None else torch.zeros_like(s)
    return pooled.detach(), q.grad, ds, lse


def check(x, mask, lengths, query, slope, position, rng, backend=None):
    k, T, d = x.shape
    dpooled = torch.as_tensor(rng.standard_normal((k, query.shape[1], d)))
    exp = reference(x, mask, lengths, query, slope, position, dpooled)
    got = fused(x, lengths, query, slope, position, dpooled, backend)
    tol = TOL.get(x.dtype, TOL32)
    assert got[0].dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    for g, e in zip(got[:3], exp):
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(g.double() / scale, e / scale, **tol)
    return got


@needs_numba
@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=7),
       d=st.integers(1, 40), H=st.integers(1, 5), dtype=st.sampled_from(DTYPES),
       position=st.sampled_from(["last", "first", None]),
       qscale=st.sampled_from([0.0, 0.3, 3.0]), seed=st.integers(0, 2**16))
def test_values_and_gradients_match_reference(lengths, d, H, dtype, position, qscale,
                                               seed):
    rng = np.random.default_rng(seed)
    x, mask, lengths = make_block(lengths, d, dtype, rng)
    query = torch.as_tensor(rng.standard_normal((d, H)) * qscale)
    slope = torch.as_tensor(rng.standard_normal(H))
    check(x, mask, lengths, query, slope, position, rng)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep", [True, False])
def test_kept_and_recomputed_weights(monkeypatch, dtype, keep):
    # the CPU backward either uses the forward's weights or recomputes them
    # from the log-sum-exp; force each on both sides of the size rule
    monkeypatch.setattr(numba_backend, "keeps_weights", lambda T, d: keep)
    rng = np.random.default_rng(11)
    for lengths, d in [([9, 1, 14], 20), ([40, 3], 6)]:
        x, mask, lengths = make_block(lengths, d, dtype, rng)
        query = torch.as_tensor(rng.standard_normal((d, 3)) * 0.7)
        slope = torch.as_tensor(rng.standard_normal(3) * 0.2)
        check(x, mask, lengths, query, slope, "last", rng)


@needs_numba
def test_weights_kept_only_when_no_larger_than_pooled():
    rng = np.random.default_rng(12)
    for lengths, d, kept in [([7, 12], 12, True), ([13, 2], 12, False)]:
        x, mask, lengths = make_block(lengths, d, torch.float32, rng)
        query = torch.as_tensor(rng.standard_normal((d, 2)), dtype=torch.float32)
        slope = torch.zeros(2, dtype=torch.float32)
        _, _, weights, _ = numba_backend.forward(x, lengths, query, slope, 1,
                                              keep_weights=True)
        assert (weights is not None) == kept
        if kept:  # (k, T, H), the softmax of each head over the real tokens
            ref = torch.softmax((x.double() @ query.double()).masked_fill(
                ~mask[..., None], -torch.inf), dim=1)
            # (padded rows are scratch, never read)
            torch.testing.assert_close(weights.double()[mask], ref[mask],
                                       atol=1e-6, rtol=1e-5)
        # nothing kept where no backward will run
        assert numba_backend.forward(x, lengths, query, slope, 1)[2] is None


def head_logits_and_grads(fn, x, lengths, query, slope, value, position, dz):
    q, s, v = (t.detach().clone().requires_grad_() for t in (query, slope, value))
    out = fn(x, lengths, q, s, v, position)
    (out * dz.to(out.dtype)).sum().backward()
    ds = s.grad if s.grad is not None else torch.zeros_like(s)
    return [t.detach().double() for t in (out, q.grad, ds, v.grad)]


def reference_head_logits(x, lengths, query, slope, value, position):
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    pooled, _ = attention_pool(x.double(), mask, lengths, query, slope, position)
    return torch.einsum("khd,hdc->khc", pooled, value)


@needs_numba
@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6),
       d=st.integers(1, 30), H=st.integers(1, 6), C=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), position=st.sampled_from(["last", "first", None]),
       keep=st.booleans(), seed=st.integers(0, 2**16))
def test_head_logits_match_pool_then_values(lengths, d, H, C, dtype, position, keep, seed):
    # the value projection inside the kernels (stacked CV modules on CPU)
    # against the reference pooling followed by the value product
    rng = np.random.default_rng(seed)
    x, _, lengths = make_block(lengths, d, dtype, rng)
    query = torch.as_tensor(rng.standard_normal((d, H)) * 0.5)
    slope = torch.as_tensor(rng.standard_normal(H) * 0.3)
    value = torch.as_tensor(rng.standard_normal((H, d, C)))
    dz = torch.as_tensor(rng.standard_normal((len(lengths), H, C)))
    keeps = numba_backend.keeps_weights
    numba_backend.keeps_weights = lambda T, d: keep
    try:
        got = head_logits_and_grads(_fused.fused_head_logits, x, lengths, query, slope,
                                    value, position, dz)
    finally:
        numba_backend.keeps_weights = keeps
    exp = head_logits_and_grads(reference_head_logits, x, lengths, query.double(),
                                slope.double(), value.double(), position, dz)
    tol = TOL.get(x.dtype, TOL32)
    for g, e in zip(got, exp):
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(g / scale, e / scale, **tol)


@needs_numba
def test_head_logits_gradcheck_float64():
    rng = np.random.default_rng(13)
    x, _, lengths = make_block([1, 4, 7, 3], 5, torch.float64, rng)

    def f(q, s, v):
        return _fused.fused_head_logits(x, lengths, q, s, v, "last")
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (q, s, v))


@needs_numba
def test_kernel_outputs_reused_only_when_free(monkeypatch):
    from sklearn_attnprobe import _scratch

    monkeypatch.setattr(_scratch, "MIN_BYTES", 0)  # pool these small arrays too
    rng = np.random.default_rng(14)
    x, _, lengths = make_block([300, 280], 700, torch.float32, rng)
    query = torch.as_tensor(rng.standard_normal((700, 4)) * 0.1, dtype=torch.float32)
    slope = torch.zeros(4, dtype=torch.float32)
    with _scratch.reuse():
        first = numba_backend.forward(x, lengths, query, slope, 1, keep_weights=True)
        expected = [t.clone() for t in first[:3]]
        # still held: a second forward must not write into these arrays
        second = numba_backend.forward(x, lengths, -query, slope, 1, keep_weights=True)
        assert second[0].data_ptr() != first[0].data_ptr()
        for a, b in zip(first[:3], expected):  # (the weights' padded rows: scratch)
            torch.testing.assert_close(a, b, equal_nan=True)
        ptr = second[0].data_ptr()
        del second
        _scratch.tick()
        third = numba_backend.forward(x, lengths, query, slope, 1, keep_weights=True)
        assert third[0].data_ptr() == ptr  # let go of: reused
        torch.testing.assert_close(third[0], expected[0])
        del first, third, a, b
        _scratch.tick()
        _scratch.tick()  # entries not taken for a step are dropped
        assert not _scratch._local.pool.entries
    assert _scratch._local.pool is None


@needs_numba
@pytest.mark.parametrize("position", ["last", "first", None])
def test_gradcheck_float64(position):
    rng = np.random.default_rng(0)
    x, _, lengths = make_block([1, 3, 7, 6], 5, torch.float64, rng)

    def f(q, s):
        return fused_attention_pool(x, lengths, q, s, position)[0]
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (q, s))


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_texts(dtype):
    rng = np.random.default_rng(1)
    x, mask, lengths = make_block([2500, 2047, 300], 16, dtype, rng)
    query = torch.as_tensor(rng.standard_normal((16, 4)) * 0.3)
    slope = torch.tensor([0.0, 1e-3, 0.05, 30.0], dtype=torch.float64)
    pooled = check(x, mask, lengths, query, slope, "last", rng)[0]
    # a steep slope: all weight on the last token, even in bfloat16 (the
    # positions of the last tokens of a 2,500-token text must not tie)
    last = x[torch.arange(3), lengths - 1].double()
    torch.testing.assert_close(pooled[:, 3].double(), last, atol=1e-6, rtol=1e-6)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_of_1e4(dtype):
    rng = np.random.default_rng(2)
    x, mask, lengths = make_block([5, 9, 2], 6, dtype, rng)
    query = torch.as_tensor(rng.standard_normal((6, 2)) * 1e4)
    slope = torch.tensor([1e4, -1e4], dtype=torch.float64)
    pooled, dq, ds, lse = check(x, mask, lengths, query, slope, "first", rng)
    assert torch.isfinite(pooled).all() and torch.isfinite(dq).all()
    assert torch.isfinite(lse).all() and lse.abs().max() > 1e3


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_token_texts(dtype):
    rng = np.random.default_rng(3)
    x, mask, lengths = make_block([1, 1, 1], 7, dtype, rng)
    query = torch.as_tensor(rng.standard_normal((7, 2)))
    slope = torch.ones(2, dtype=torch.float64)
    pooled, dq, ds, _ = check(x, mask, lengths, query, slope, "last", rng)
    torch.testing.assert_close(pooled.double(), x[:, :1].double().expand(-1, 2, -1))
    assert float(dq.abs().max()) < 1e-5 and float(ds.abs().max()) < 1e-5


@needs_numba
@pytest.mark.parametrize("length", [1, 2, 5, 64])
def test_block_of_one_text(length):
    rng = np.random.default_rng(4)
    x, mask, lengths = make_block([length], 9, torch.float32, rng)
    query = torch.as_tensor(rng.standard_normal((9, 3)))
    check(x, mask, lengths, query, torch.randn(3, dtype=torch.float64), "last", rng)


def test_positions_exact_in_half_precision():
    # regression: bfloat16 rounded t - (L - 1) to multiples of 8 near 2,000
    p = relative_positions(torch.tensor([2500, 3]), 2500, "last", torch.bfloat16)
    assert p.dtype == torch.float32
    np.testing.assert_array_equal(p[0].numpy(), np.arange(2500) - 2499)
    assert len(np.unique(p[0, -20:].numpy())) == 20
    rng = np.random.default_rng(5)
    x, mask, lengths = make_block([2000], 8, torch.bfloat16, rng)
    pooled, w = attention_pool(x, mask, lengths, torch.zeros(8, 1, dtype=torch.bfloat16),
                               torch.tensor([40.0]), "last")
    assert float(w[0, 0, -1]) > 0.99
    torch.testing.assert_close(pooled[0, 0].float(), x[0, -1].float())


def test_x_requiring_grad_uses_reference():
    x = torch.zeros(2, 3, 4, requires_grad=True)
    assert backend_for(x) is None


def _batch(rng, dtype, lengths=(1, 3, 5, 17, 40, 41, 90)):
    texts = [rng.standard_normal((n, 12)) for n in lengths]
    return pack(RaggedArray.from_list(texts), dtype, torch.device("cpu"))


def _module_grads(module, batch):
    module.zero_grad()
    out = module(batch)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in module.parameters()]


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stacked", [False, True])
def test_modules_fast_path_equals_fallback(monkeypatch, dtype, stacked):
    rng = np.random.default_rng(6)
    batch = _batch(rng, dtype)
    if stacked:
        module = StackedAttentionProbeModule(3, 12, 2, 4, generators=[
            torch.Generator().manual_seed(i) for i in range(3)])
    else:
        module = AttentionProbeModule(12, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.query.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        module.slope.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    fast = _module_grads(module, batch)
    monkeypatch.setattr(_fused, "_loaded", {"numba": None, "triton": None})
    slow = _module_grads(module, batch)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(fast[0], slow[0], **tol)
    for g, e in zip(fast[1], slow[1]):
        torch.testing.assert_close(g, e, **tol)


@needs_numba
def test_pool_block_weights_for_inspection():
    rng = np.random.default_rng(7)
    batch = _batch(rng, torch.float64)
    module = AttentionProbeModule(12, 2, 3).double()
    with torch.no_grad():
        module.query.normal_()
        module.slope.fill_(0.3)
        for block in batch.blocks:
            pooled, w = module.pool_block(block)
            ref_pooled, ref_w = module._reference_pool(block)
            torch.testing.assert_close(pooled, ref_pooled)
            torch.testing.assert_close(w, ref_w)


TRITON_CHILD = textwrap.dedent(r"""
    import numpy as np, torch
    torch.set_num_threads(1)
    from test_fused import DTYPES, check, make_block
    from sklearn_attnprobe._fused import load_backend
    backend = load_backend("triton")
    assert backend is not None
    rng = np.random.default_rng(0)
    for dtype, lengths, d, H, position in [
            (torch.float32, [33, 1, 7], 20, 3, "last"),
            (torch.float16, [5, 18], 70, 17, "first"),
            (torch.bfloat16, [2], 8, 1, None)]:
        x, mask, lengths = make_block(lengths, d, dtype, rng)
        query = torch.as_tensor(rng.standard_normal((d, H)) * 0.5)
        slope = torch.as_tensor(rng.standard_normal(H))
        check(x, mask, lengths, query, slope, position, rng, backend=backend)
    print("ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton not installed")
def test_triton_kernel_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__),
                                         env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", TRITON_CHILD], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


@needs_numba
def test_parallel_kernels_match_serial():
    rng = np.random.default_rng(8)
    x, mask, lengths = make_block([3, 1, 8, 5, 2], 10, torch.float16, rng)
    query = torch.as_tensor(rng.standard_normal((10, 3)))
    slope = torch.as_tensor(rng.standard_normal(3))
    dpooled = torch.as_tensor(rng.standard_normal((5, 3, 10)))
    serial = fused(x, lengths, query, slope, "last", dpooled)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = fused(x, lengths, query, slope, "last", dpooled)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, parallel):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_numba
def test_vectorised_exp_matches_libm():
    from numba import njit

    from sklearn_attnprobe._fused_numba import _exp_row

    @njit
    def exp_rows(v):
        out = v.copy()
        _exp_row(out, out.shape[0], np.empty(out.shape[0], np.int32))
        return out

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87, 88, 20_000), rng.uniform(-1, 1, 20_000),
                        [0.0, -1e-30, 1e-30, 88.0, -87.0]]).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    got = exp_rows(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=3e-7)
    # the ends of float32's range: underflow to 0 (softmax of -inf logits),
    # NaN stays NaN (non-finite data must reach the estimators' checks)
    edges = np.array([-88.0, -200.0, -np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(exp_rows(edges)[:3], 0.0)
    assert np.isnan(exp_rows(edges)[3])
    # float64 rows keep libm's exp (float64 gradient checks need full
    # precision; numpy's own exp differs from libm's by an ulp here and there)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(exp_rows(x64), np.exp(x64), rtol=1e-15)


@needs_numba
@pytest.mark.parametrize("way", ["native", "bits"])
def test_half_widening_is_exact(way):
    # every float16 pattern, and bfloat16 patterns, widened as numpy does
    from sklearn_attnprobe import _half_numba

    if way == "native" and not _half_numba.NATIVE_HALF:
        pytest.skip("no hardware float16 conversion on this CPU")
    widen = getattr(_half_numba, f"widen_{way}")
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    out = np.full((256, 256), -1.0, np.float32)
    widen(patterns, out, 200, 1)
    expected = patterns.view(np.float16).astype(np.float32)
    finite = np.isfinite(expected[:200])
    np.testing.assert_array_equal(out[:200][finite], expected[:200][finite])
    if way == "native":  # infinities and NaNs too
        np.testing.assert_array_equal(out[:200], expected[:200])
    assert (out[200:] == -1.0).all()  # rows past L untouched
    widen(patterns, out, 256, 1)  # all 65,536 patterns
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(out[finite], expected[finite])
    if way == "native":
        np.testing.assert_array_equal(out, expected)
    widen(patterns, out, 256, 2)
    bf16 = (patterns.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out, bf16)
