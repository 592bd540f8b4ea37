"""The manual objective (no autograd) against autograd's, and fits through it."""

import numpy as np
import pytest
import torch

from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray
from sklearn_attnprobe import _loops, _manual_step
from sklearn_attnprobe._manual_step import manual_objective
from sklearn_attnprobe._modules import AttentionProbeModule, StackedAttentionProbeModule
from sklearn_attnprobe._packing import pack
from sklearn_attnprobe._training import objectives
from sklearn_attnprobe.datasets import make_planted_task

pytest.importorskip("numba")
from sklearn_attnprobe import _fused_cpu  # noqa: E402


def _problem(input_dtype, n_outputs, position, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, 70)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    X = RaggedArray(rng.standard_normal((offsets[-1], 16)).astype(input_dtype), offsets)
    param_dtype = torch.float64 if input_dtype == np.float64 else torch.float32
    block_dtype = torch.float16 if input_dtype == np.float16 else param_dtype
    batch = pack(X, block_dtype, torch.device("cpu"))
    module = AttentionProbeModule(16, 3, n_outputs, position=position, dtype=param_dtype,
                                  generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # away from the zero-query start, so every term matters
        module.query.normal_(0, 0.3)
        module.slope.normal_(0, 0.1)
        module.bias.normal_()
    y = torch.as_tensor(rng.integers(0, max(n_outputs, 2), 70)[batch.order])
    w = torch.as_tensor(rng.random(70)[batch.order], dtype=param_dtype)
    return module, batch, y, w


@pytest.mark.parametrize("input_dtype, n_outputs, position, query_wd, wd, rtol", [
    (np.float64, 4, "last", None, 0.1, 1e-12),
    (np.float64, 1, "first", 0.3, 0.0, 1e-12),
    (np.float32, 3, None, None, 1e-2, 2e-6),
    (np.float16, 3, "last", 0.0, 1e-2, 2e-6),
])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("in_kernel", [True, False])
def test_manual_objective_matches_autograd(monkeypatch, input_dtype, n_outputs, position,
                                           query_wd, wd, rtol, keep, in_kernel):
    # the weights kept by the forward, or recomputed by the backward; the value
    # products inside the kernels (large pooled states) or as numpy GEMMs
    monkeypatch.setattr(_fused_cpu, "keeps_weights", lambda T, d: keep)
    monkeypatch.setattr(_manual_step, "IN_KERNEL_MIN_POOLED_BYTES", 0 if in_kernel else 1 << 62)
    module, batch, y, w = _problem(input_dtype, n_outputs, position)
    module.query_weight_decay = query_wd
    objectives(module, batch, y, w, wd).sum().backward()
    expected = {n: None if p.grad is None else p.grad.clone()
                for n, p in module.named_parameters()}
    expected_obj = float(objectives(module, batch, y, w, wd).detach())
    for p in module.parameters():
        p.grad = None
    values_passed = []
    forward_arrays = _fused_cpu.forward_arrays

    def spy(*args, **kwargs):
        values_passed.append(kwargs.get("Vt") is not None)
        return forward_arrays(*args, **kwargs)

    monkeypatch.setattr(_fused_cpu, "forward_arrays", spy)
    manual = manual_objective(module, wd)
    with manual.blas_context():
        obj = manual(batch, y, w)
    np.testing.assert_allclose(float(obj), expected_obj, rtol=rtol)
    assert values_passed and set(values_passed) == {in_kernel}
    for name, p in module.named_parameters():
        if expected[name] is None:  # no position bias: the slopes get no gradient
            assert p.grad is None and position is None
            continue
        scale = float(expected[name].abs().max())
        np.testing.assert_allclose(p.grad.numpy(), expected[name].numpy(), rtol=0,
                                   atol=rtol * scale)


def test_manual_objective_applies_only_where_it_can():
    stacked = StackedAttentionProbeModule(2, 8, 2, 3)
    assert manual_objective(stacked, 0.0) is None
    single = AttentionProbeModule(8, 2, 3)
    assert manual_objective(single, torch.tensor([0.0, 0.1])) is None
    assert manual_objective(single, 0.1) is not None
    # a float32 module on float64 blocks: autograd (the accumulation dtypes differ)
    module, batch, y, w = _problem(np.float64, 3, "last")
    assert manual_objective(module.float(), 0.0)(batch, y, w) is None


@pytest.mark.parametrize("dtype, batch_size", [(np.float64, None), (np.float32, 40)])
def test_fits_through_the_manual_objective_match_autograd_fits(monkeypatch, dtype,
                                                               batch_size):
    X, y = make_planted_task("needle", n_texts=120, d_model=12, n_classes=3, dtype=dtype,
                             random_state=0)
    params = dict(n_heads=2, weight_decay=1e-2, max_iter=60, n_iter_no_change=None,
                  batch_size=batch_size, random_state=0)
    calls = []
    real = _loops.manual_objective

    def counted(module, decay):
        step = real(module, decay)
        calls.append(step is not None)
        return step
    monkeypatch.setattr(_loops, "manual_objective", counted)
    manual = AttentionProbeClassifier(**params).fit(X, y)
    assert calls == [True]
    monkeypatch.setattr(_loops, "manual_objective", lambda module, decay: None)
    autograd = AttentionProbeClassifier(**params).fit(X, y)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(manual.loss_curve_, autograd.loss_curve_, rtol=rtol)
    np.testing.assert_allclose(manual.decision_function(X), autograd.decision_function(X),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("n_outputs", [1, 4])
def test_loss_gradient_stays_finite_at_extreme_logits(n_outputs):
    from sklearn_attnprobe._fused_numba import weighted_log_loss_grad
    from sklearn_attnprobe._training import weighted_log_loss

    rng = np.random.default_rng(0)
    logits = rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=(50, n_outputs))
    y = rng.integers(0, max(n_outputs, 2), 50)
    w = rng.random(50)
    grad = np.empty_like(logits)
    loss = weighted_log_loss_grad(logits, y, w, grad)
    t = torch.tensor(logits, requires_grad=True)
    expected = weighted_log_loss(t, torch.as_tensor(y), torch.as_tensor(w))
    expected.backward()
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, float(expected.detach()), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-9, atol=1e-15)
