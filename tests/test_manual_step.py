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
def test_manual_objective_matches_autograd(monkeypatch, input_dtype, n_outputs, position,
                                           query_wd, wd, rtol):
    module, batch, y, w = _problem(input_dtype, n_outputs, position)
    module.query_weight_decay = query_wd
    objectives(module, batch, y, w, wd).sum().backward()
    expected = {n: None if p.grad is None else p.grad.clone()
                for n, p in module.named_parameters()}
    expected_obj = float(objectives(module, batch, y, w, wd).detach())
    for p in module.parameters():
        p.grad = None
    ran = []  # the one-pass step kernel only, not the forward and backward ones
    for name in ("step_arrays", "forward_arrays", "backward_arrays"):
        def spy(*args, _real=getattr(_fused_cpu, name), _name=name, **kwargs):
            ran.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(_fused_cpu, name, spy)
    manual = manual_objective(module, wd)
    with manual.blas_context():
        obj = manual(batch, y, w)
    np.testing.assert_allclose(float(obj), expected_obj, rtol=rtol)
    assert set(ran) == {"step_arrays"}
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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["long texts", "one-token texts", "logits of 1e4"])
def test_one_pass_step_matches_autograd(threads, case):
    # serial and parallel (texts in two chunks); texts longer than d_model,
    # texts of one token, and saturated softmaxes
    rng = np.random.default_rng(3)
    low, high = {"long texts": (20, 300), "one-token texts": (1, 2),
                 "logits of 1e4": (1, 40)}[case]
    lengths = rng.integers(low, high, 30)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    X = RaggedArray(rng.standard_normal((offsets[-1], 8)), offsets)
    batch = pack(X, torch.float64, torch.device("cpu"))
    module = AttentionProbeModule(8, 2, 3, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # d 8 and unit activations: logits of about 1e4 at a std of 3e3
        module.query.normal_(0, 3e3 if case == "logits of 1e4" else 0.3)
        module.slope.normal_(0, 0.1)
    y = torch.as_tensor(rng.integers(0, 3, 30)[batch.order])
    w = torch.as_tensor(rng.random(30)[batch.order])
    objectives(module, batch, y, w, 1e-2).sum().backward()
    expected = {n: p.grad.clone() for n, p in module.named_parameters()}
    expected_obj = float(objectives(module, batch, y, w, 1e-2).detach())
    for p in module.parameters():
        p.grad = None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        manual = manual_objective(module, 1e-2)
        with manual.blas_context():
            obj = manual(batch, y, w)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_allclose(float(obj), expected_obj, rtol=1e-12)
    for name, p in module.named_parameters():
        assert np.isfinite(p.grad.numpy()).all()
        scale = float(expected[name].abs().max())
        np.testing.assert_allclose(p.grad.numpy(), expected[name].numpy(), rtol=0,
                                   atol=1e-12 * max(scale, 1.0))


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
    from sklearn_attnprobe._fused_numba import row_loss_grad, total_weight
    from sklearn_attnprobe._training import weighted_log_loss

    rng = np.random.default_rng(0)
    logits = rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=(50, n_outputs))
    y = rng.integers(0, max(n_outputs, 2), 50)
    w = rng.random(50)
    total = total_weight(w)
    grad = np.empty_like(logits)
    loss = sum(row_loss_grad(logits[i], y[i], w[i], w[i] / total, grad[i])
               for i in range(50)) / total
    t = torch.tensor(logits, requires_grad=True)
    expected = weighted_log_loss(t, torch.as_tensor(y), torch.as_tensor(w))
    expected.backward()
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, float(expected.detach()), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("position, n_outputs", [("last", 3), (None, 1)])
def test_entropy_penalty_hook_matches_its_definition(monkeypatch, position, n_outputs):
    # the candidates benchmark's hook: objective + lam * weighted mean over
    # texts of the heads' mean attention entropy, gradients to match
    module, batch, y, w = _problem(np.float64, n_outputs, position)
    lam = 0.37
    entropy = []  # per text (in the batch's order), the heads' mean entropy
    with torch.no_grad():
        for block in batch.blocks:
            weights = module.pool_block(block)[1]  # (k, H, T), zero on padding
            a = weights.clamp_min(torch.finfo(weights.dtype).tiny)
            entropy.append(-(weights * a.log()).sum(-1).mean(-1))
    entropy = torch.cat(entropy)
    expected_penalty = float((w * entropy).sum() / w.sum())

    def evaluate():
        manual = manual_objective(module, 0.1)
        with manual.blas_context():
            value = float(manual(batch, y, w))
        return value, {n: p.grad.clone() for n, p in module.named_parameters()
                       if p.grad is not None}

    base, _ = evaluate()
    monkeypatch.setattr(_manual_step._ManualObjective, "entropy_penalty", lam)
    value, grads = evaluate()
    np.testing.assert_allclose(value - base, lam * expected_penalty, rtol=1e-10)
    # central differences of the penalised objective
    eps = 1e-6
    rng = np.random.default_rng(1)
    for name, p in module.named_parameters():
        if name not in grads:
            continue
        flat = p.data.view(-1)
        for j in rng.choice(flat.numel(), min(4, flat.numel()), replace=False):
            old = float(flat[j])
            flat[j] = old + eps
            plus, _ = evaluate()
            flat[j] = old - eps
            minus, _ = evaluate()
            flat[j] = old
            np.testing.assert_allclose(float(grads[name].view(-1)[j]),
                                       (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8)
