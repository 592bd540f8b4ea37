"""The position bias: one switch, no anchor (the anchor cancels in the softmax)."""

import copy
import warnings

import numpy as np
import pytest
import torch

from sklearn_attnprobe import AttentionProbeClassifier, AttentionProbeClassifierCV
from sklearn_attnprobe.datasets import make_planted_task
from sklearn_attnprobe.inspection import max_activating_examples

FAST = dict(max_iter=40, n_iter_no_change=None, random_state=0)


@pytest.fixture(scope="module")
def data():
    return make_planted_task("last", n_texts=120, d_model=8, min_length=4, max_length=30,
                             dtype=np.float64, random_state=0)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    probe = AttentionProbeClassifier(n_heads=2, **FAST).fit(X, y)
    with torch.no_grad():  # slopes large enough for the anchor to matter to raw logits
        probe.module_.slope.copy_(torch.tensor([0.7, -0.4], dtype=torch.float64))
    return probe


def first_anchored(probe):
    """The same probe with positions counted from the first token (slope sign flipped)."""
    other = copy.deepcopy(probe)
    other.module_.position = "first"
    with torch.no_grad():
        other.module_.slope.neg_()
    return other


def test_anchor_does_not_change_the_probe(data, fitted):
    X, _ = data
    other = first_anchored(fitted)
    np.testing.assert_allclose(other.decision_function(X), fitted.decision_function(X),
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(other.attention_weights(X), fitted.attention_weights(X)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_rank_by_score_does_not_depend_on_the_anchor(data, fitted):
    X, _ = data
    found = [max_activating_examples(p, X, n_examples=8, rank_by="score")
             for p in (fitted, first_anchored(fitted))]
    keys = [[(e.text, e.token) for h in range(2) for e in f.attention[h]] for f in found]
    assert keys[0] == keys[1]
    # the score is the content part x_t @ q_h, without the position term
    query = fitted.module_.query.detach().numpy()
    for h in range(2):
        for e in found[0].attention[h]:
            assert e.score == pytest.approx(X[e.text][e.token] @ query[:, h], rel=1e-9)


def test_position_bias_switch(data):
    X, y = data
    on = AttentionProbeClassifier(n_heads=2, **FAST).fit(X, y)
    off = AttentionProbeClassifier(n_heads=2, position_bias=False, **FAST).fit(X, y)
    assert on.module_.position == "last" and off.module_.position is None
    assert not np.allclose(on.decision_function(X), off.decision_function(X))
    # without a bias the slopes never move and cannot reach the logits
    assert torch.all(off.module_.slope == 0)


@pytest.mark.parametrize("position, bias", [("last", True), ("first", True), (None, False)])
def test_deprecated_position_maps_onto_position_bias(data, position, bias):
    X, y = data
    with pytest.warns(FutureWarning, match="'position' is deprecated"):
        old = AttentionProbeClassifier(n_heads=2, position=position, **FAST).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = AttentionProbeClassifier(n_heads=2, position_bias=bias, **FAST).fit(X, y)
    np.testing.assert_array_equal(old.decision_function(X), new.decision_function(X))


def test_cv_deprecated_position_refits_without_warning_twice(data):
    X, y = data
    with pytest.warns(FutureWarning, match="'position' is deprecated") as record:
        cv = AttentionProbeClassifierCV(n_heads=1, position=None, cv=2,
                                        weight_decays=(0.0, 0.1), **FAST).fit(X, y)
    assert cv.best_estimator_.position == "deprecated"
    assert cv.best_estimator_.position_bias is False
    assert cv.best_estimator_.module_.position is None
    assert len(record) >= 1


def test_warm_start_keeps_module_only_for_same_switch(data):
    X, y = data
    probe = AttentionProbeClassifier(n_heads=2, warm_start=True, **FAST).fit(X, y)
    module = probe.module_
    probe.fit(X, y)
    assert probe.module_ is module
    probe.set_params(position_bias=False).fit(X, y)
    assert probe.module_ is not module and probe.module_.position is None
