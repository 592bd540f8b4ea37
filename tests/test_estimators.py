"""Behaviour of the three probes: equivalences, invariances, oracles, planted tasks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    LastTokenProbeClassifier,
    MeanProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe.datasets import make_planted_task

FAST_ATTN = dict(max_iter=60, random_state=0)


def ragged_data(n=40, d=6, lo=1, hi=12, n_classes=2, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=n)
    X = [rng.standard_normal((t, d)).astype(dtype) for t in lengths]
    y = np.arange(n) % n_classes
    return X, y


ESTIMATORS = [
    lambda: AttentionProbeClassifier(n_heads=3, **FAST_ATTN),
    lambda: MeanProbeClassifier(),
    lambda: LastTokenProbeClassifier(),
]


@pytest.mark.parametrize("make", ESTIMATORS)
def test_list_ragged_and_3d_forms_agree(make):
    X, y = ragged_data(n_classes=3)
    R = RaggedArray.from_list(X)
    a = make().fit(X, y).decision_function(X)
    b = make().fit(R, y).decision_function(R)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # equal-length texts: the 3-D form too
    X3 = np.stack([np.resize(x, (7, x.shape[1])) for x in X])
    c = make().fit(X3, y).decision_function(X3)
    d = make().fit(list(X3), y).decision_function(RaggedArray.from_padded(X3, [7] * len(X3)))
    np.testing.assert_allclose(c, d, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", ESTIMATORS)
@settings(max_examples=8, deadline=None)
@given(subset=st.lists(st.integers(0, 39), min_size=1, max_size=15, unique=True))
def test_predicting_a_subset_gives_the_same_rows(make, subset):
    X, y = ragged_data(n_classes=3, dtype=np.float64)
    est = _fitted(make, X, y)
    full = est.predict_proba(X)
    part = est.predict_proba([X[i] for i in subset])
    np.testing.assert_allclose(part, full[subset], rtol=1e-9, atol=1e-12)


_FIT_CACHE = {}


def _fitted(make, X, y):
    key = id(make)
    if key not in _FIT_CACHE:
        _FIT_CACHE[key] = make().fit(X, y)
    return _FIT_CACHE[key]


def _manual_logits(probe, pooled_heads):
    """(n, H, d) pooled states -> logits through the probe's values and bias."""
    value = probe.module_.value.detach().double().numpy()
    bias = probe.module_.bias.detach().double().numpy()
    out = np.einsum("nhd,hdc->nc", pooled_heads, value) + bias
    return out[:, 0] if out.shape[1] == 1 else out


def test_large_last_slope_is_last_token_pooling():
    X, y = ragged_data(dtype=np.float64)
    probe = AttentionProbeClassifier(n_heads=2, **FAST_ATTN).fit(X, y)
    with torch.no_grad():
        probe.module_.slope.fill_(1e4)
    last = np.stack([x[-1] for x in X])
    expected = _manual_logits(probe, np.repeat(last[:, None], 2, axis=1))
    np.testing.assert_allclose(probe.decision_function(X), expected, rtol=1e-9)
    w = probe.attention_weights(X)
    assert all(np.allclose(wi[-1], 1.0) for wi in w)


def test_zero_query_and_slope_one_head_is_mean_pooling():
    X, y = ragged_data(dtype=np.float64)
    probe = AttentionProbeClassifier(n_heads=1, **FAST_ATTN).fit(X, y)
    with torch.no_grad():
        probe.module_.query.zero_()
        probe.module_.slope.zero_()
    mean = np.stack([x.mean(0) for x in X])
    np.testing.assert_allclose(probe.decision_function(X),
                               _manual_logits(probe, mean[:, None]), rtol=1e-9)
    ent = probe.attention_entropy(X)
    np.testing.assert_allclose(ent.ratio, 1.0)


def test_untrained_attention_probe_starts_as_mean_pooling():
    # zero query and zero slopes at initialisation: one AdamW step moves them
    # by at most the learning rate, so with a tiny rate the attention stays uniform
    X, y = ragged_data(dtype=np.float64)
    probe = AttentionProbeClassifier(n_heads=2, learning_rate=1e-12, max_iter=1,
                                     random_state=0).fit(X, y)
    for w, x in zip(probe.attention_weights(X), X):
        np.testing.assert_allclose(w, 1.0 / len(x), rtol=1e-6)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_same_random_state_is_bit_identical(make):
    X, y = ragged_data(n_classes=3)
    a = make().fit(X, y).predict_proba(X)
    b = make().fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)


def test_different_random_state_differs():
    X, y = ragged_data()
    a = AttentionProbeClassifier(max_iter=5, random_state=0).fit(X, y)
    b = AttentionProbeClassifier(max_iter=5, random_state=1).fit(X, y)
    assert not np.array_equal(a.decision_function(X), b.decision_function(X))


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("weight_decay", [1e-3, 1e-1])
@pytest.mark.parametrize("Probe, pool", [
    (MeanProbeClassifier, lambda x: x.mean(0)),
    (LastTokenProbeClassifier, lambda x: x[-1]),
])
def test_pooled_probe_matches_logistic_regression(Probe, pool, n_classes, weight_decay):
    X, y = make_planted_task("shift", n_texts=150, d_model=10, n_classes=n_classes,
                             dtype=np.float64, random_state=n_classes)
    rng = np.random.default_rng(0)
    sw = rng.uniform(0.2, 3.0, size=len(y))
    probe = Probe(weight_decay=weight_decay, tol=1e-10, max_iter=5000).fit(X, y, sample_weight=sw)
    feats = np.stack([pool(x) for x in X])
    # objective sum(sw * loss) / sum(sw) + wd / 2 ||W||^2  <=>  C = 1 / (wd * sum(sw))
    C = 1.0 / (weight_decay * sw.sum())
    lr = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(feats, y, sample_weight=sw)
    np.testing.assert_allclose(probe.predict_proba(X), lr.predict_proba(feats), atol=1e-4)
    np.testing.assert_allclose(probe.coef_, lr.coef_, atol=1e-4)
    if n_classes == 2:
        np.testing.assert_allclose(probe.intercept_, lr.intercept_, atol=1e-4)
    else:  # multinomial intercepts are defined up to a common shift
        np.testing.assert_allclose(probe.intercept_ - probe.intercept_.mean(),
                                   lr.intercept_ - lr.intercept_.mean(), atol=1e-4)


def test_adamw_mean_probe_approaches_lbfgs_solution():
    X, y = make_planted_task("shift", n_texts=150, d_model=8, dtype=np.float64,
                             random_state=0)
    lbfgs = MeanProbeClassifier(weight_decay=1e-2).fit(X, y)
    adam = MeanProbeClassifier(solver="adamw", weight_decay=1e-2, max_iter=3000,
                               learning_rate=1e-2, random_state=0).fit(X, y)
    np.testing.assert_allclose(adam.coef_, lbfgs.coef_, atol=2e-3)


def test_weight_decay_shrinks_attention_weights():
    X, y = ragged_data(n=60)
    norms = []
    for wd in [0.0, 1e-1, 1.0]:
        m = AttentionProbeClassifier(n_heads=2, weight_decay=wd, **FAST_ATTN).fit(X, y).module_
        norms.append(float(m.value.detach().norm() + m.query.detach().norm()))
    assert norms[0] > norms[1] > norms[2]


def test_float16_input_is_accepted_and_close_to_float32():
    X, y = ragged_data(dtype=np.float32)
    X16 = [x.astype(np.float16) for x in X]
    X32 = [x.astype(np.float32) for x in X16]
    a = AttentionProbeClassifier(**FAST_ATTN).fit(X16, y)
    b = AttentionProbeClassifier(**FAST_ATTN).fit(X32, y)
    np.testing.assert_array_equal(a.decision_function(X16), b.decision_function(X32))
    assert a.module_.query.dtype == torch.float32


def test_compute_dtype_auto_and_explicit():
    X, y = ragged_data(dtype=np.float64)
    assert MeanProbeClassifier().fit(X, y).module_.weight.dtype == torch.float64
    m = MeanProbeClassifier(compute_dtype="float32").fit(X, y)
    assert m.module_.weight.dtype == torch.float32
    assert m.predict_proba(X).dtype == np.float64


def test_attention_entropy_bounds_and_one_token_texts():
    X, y = ragged_data(lo=1, hi=10)
    probe = AttentionProbeClassifier(n_heads=2, **FAST_ATTN).fit(X, y)
    ent = probe.attention_entropy(X)
    lengths = np.array([len(x) for x in X])
    assert ent.entropy.shape == ent.ratio.shape == (len(X), 2)
    np.testing.assert_allclose(ent.uniform_entropy, np.log(lengths))
    assert np.all(ent.entropy >= -1e-9)
    assert np.all(ent.entropy <= ent.uniform_entropy[:, None] + 1e-6)
    assert np.all((ent.ratio >= -1e-9) & (ent.ratio <= 1 + 1e-6))
    assert np.all(ent.ratio[lengths == 1] == 1.0)
    assert np.isfinite(ent.ratio).all()
    w = probe.attention_weights(X)
    assert [wi.shape for wi in w] == [(n, 2) for n in lengths]
    for wi in w:
        np.testing.assert_allclose(wi.sum(0), 1.0, rtol=1e-5)


def test_callbacks_reach_skorch_and_are_not_mutated():
    from skorch.callbacks import EarlyStopping

    X, y = ragged_data()
    def make_cb():
        return EarlyStopping(monitor="train_loss", patience=3, threshold=1e9,
                             threshold_mode="abs", sink=print)

    cb = make_cb()
    probe = AttentionProbeClassifier(max_iter=200, callbacks=[cb], random_state=0).fit(X, y)
    # an absurd threshold stops training after `patience` epochs
    assert probe.n_iter_ < 10
    used = [c for _, c in probe.net_.callbacks_ if isinstance(c, EarlyStopping)]
    assert len(used) == 1 and used[0] is not cb and used[0].misses_ > 0
    assert cb.misses_ == make_cb().misses_  # the estimator's parameter is untouched


@pytest.mark.slow
@pytest.mark.parametrize("task, winner, losers", [
    ("needle", "attention", ["mean", "last"]),
    ("shift", "mean", ["last"]),
    ("last", "last", ["mean"]),
])
def test_planted_tasks_each_probe_wins_where_it_should(task, winner, losers):
    X, y = make_planted_task(task, n_texts=600, random_state=0)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    probes = {
        "attention": AttentionProbeClassifier(n_heads=2, random_state=0),
        "mean": MeanProbeClassifier(),
        "last": LastTokenProbeClassifier(),
    }
    acc = {k: p.fit(Xa, ya).score(Xb, yb) for k, p in probes.items()}
    for loser in losers:
        assert acc[winner] >= acc[loser] + 0.1, acc
    assert acc[winner] >= 0.8, acc


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float16"])
def test_half_precision_compute_keeps_float32_parameters(compute_dtype):
    X, y = make_planted_task("needle", n_texts=300, d_model=16, dtype=np.float16,
                             random_state=0)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    half = AttentionProbeClassifier(n_heads=2, compute_dtype=compute_dtype,
                                    random_state=0).fit(Xa, ya)
    full = AttentionProbeClassifier(n_heads=2, random_state=0).fit(Xa, ya)
    assert half.module_.query.dtype == torch.float32
    assert half.compute_dtype_ == getattr(torch, compute_dtype)
    assert abs(half.score(Xb, yb) - full.score(Xb, yb)) <= 0.05
    mean_half = MeanProbeClassifier(compute_dtype=compute_dtype).fit(Xa, ya)
    mean_full = MeanProbeClassifier().fit(Xa, ya)
    np.testing.assert_allclose(mean_half.predict_proba(Xb), mean_full.predict_proba(Xb),
                               atol=0.02)
