"""The batched CV classes against GridSearchCV over the stand-alone probes."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    LastTokenProbeClassifier,
    LastTokenProbeClassifierCV,
    MeanProbeClassifier,
    MeanProbeClassifierCV,
)
from sklearn_attnprobe.datasets import make_planted_task

GRID = [0.0, 1e-3, 1e-2, 1e-1]


@pytest.fixture(scope="module")
def data():
    return make_planted_task("needle", n_texts=150, d_model=12, n_classes=3,
                             dtype=np.float64, random_state=0, return_ragged=True)


def _grid_search_and_cv(X, y, params):
    """GridSearchCV over GRID (4 folds) and the CV class on the same problem."""
    gs = GridSearchCV(AttentionProbeClassifier(**params), {"weight_decay": GRID},
                      cv=4).fit(X, y)
    cv = AttentionProbeClassifierCV(weight_decays=GRID, cv=4, **params).fit(X, y)
    return gs, cv


@pytest.mark.parametrize("position_bias, query_weight_decay",
                         [(True, 0.0), (False, 0.0), (True, None), (True, 0.05)])
def test_attention_cv_reproduces_grid_search(data, position_bias, query_weight_decay):
    X, y = data
    params = dict(n_heads=2, max_iter=80, position_bias=position_bias,
                  query_weight_decay=query_weight_decay, random_state=0)
    gs, cv = _grid_search_and_cv(X, y, params)
    for k in range(4):
        np.testing.assert_array_equal(cv.cv_results_[f"split{k}_test_score"],
                                      gs.cv_results_[f"split{k}_test_score"])
    assert cv.best_params_ == gs.best_params_
    assert cv.best_score_ == pytest.approx(gs.best_score_)
    np.testing.assert_allclose(cv.predict_proba(X), gs.predict_proba(X), atol=1e-10)
    assert set(cv.cv_results_) <= set(gs.cv_results_)


@pytest.mark.parametrize("CV, Single", [
    (MeanProbeClassifierCV, MeanProbeClassifier),
    (LastTokenProbeClassifierCV, LastTokenProbeClassifier),
])
def test_pooled_cv_path_matches_grid_search(data, CV, Single):
    X, y = data
    gs = GridSearchCV(Single(tol=1e-9), {"weight_decay": GRID[1:]}, cv=5).fit(X, y)
    cv = CV(weight_decays=GRID[1:], tol=1e-9).fit(X, y)
    # same optimum up to the solver's tolerance: scores within one text per fold
    np.testing.assert_allclose(cv.cv_results_["mean_test_score"],
                               gs.cv_results_["mean_test_score"], atol=1 / 30 + 1e-9)
    assert abs(cv.best_score_ - gs.best_score_) <= 0.01
    assert cv.n_iter_.shape == (5, 3)
    np.testing.assert_allclose(cv.predict_proba(X), gs.predict_proba(X), atol=1e-6)


def test_neg_log_loss_scoring_and_custom_cv(data):
    X, y = data
    splitter = StratifiedKFold(3, shuffle=True, random_state=1)
    gs = GridSearchCV(MeanProbeClassifier(tol=1e-10), {"weight_decay": [1e-3, 1e-1]},
                      cv=splitter, scoring="neg_log_loss").fit(X, y)
    cv = MeanProbeClassifierCV(weight_decays=[1e-3, 1e-1], cv=splitter,
                               scoring="neg_log_loss", tol=1e-10).fit(X, y)
    np.testing.assert_allclose(cv.cv_results_["mean_test_score"],
                               gs.cv_results_["mean_test_score"], rtol=1e-5)


def test_class_weight_and_sample_weight_follow_grid_search(data):
    X, y = data
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    params = dict(n_heads=1, max_iter=40, random_state=0, class_weight="balanced")
    gs = GridSearchCV(AttentionProbeClassifier(**params), {"weight_decay": [0.0, 0.1]},
                      cv=3).fit(X, y, sample_weight=sw)
    cv = AttentionProbeClassifierCV(weight_decays=[0.0, 0.1], cv=3, **params).fit(
        X, y, sample_weight=sw)
    np.testing.assert_allclose(cv.cv_results_["mean_test_score"],
                               gs.cv_results_["mean_test_score"])


def test_refit_false_has_results_but_no_model(data):
    X, y = data
    cv = MeanProbeClassifierCV(refit=False, cv=3).fit(X, y)
    assert len(cv.cv_results_["params"]) == 4
    with pytest.raises(AttributeError, match="refit=False"):
        cv.predict(X)


def test_minibatches_and_attention_inspection(data):
    X, y = data
    cv = AttentionProbeClassifierCV(n_heads=2, cv=3, max_iter=30, batch_size=16,
                                    n_iter_no_change=None, random_state=0).fit(X, y)
    assert cv.n_iter_.shape == (3, 4) and (cv.n_iter_ == 30).all()
    w = cv.attention_weights(X[:3])
    assert [a.shape for a in w] == [(n, 2) for n in X.lengths[:3]]
    assert cv.attention_entropy(X).ratio.shape == (len(y), 2)


@pytest.mark.parametrize("bad, match", [
    ({"weight_decays": []}, "weight_decays"),
    ({"weight_decays": [-1.0]}, "weight_decays"),
    ({"cv": 200}, "n_splits|members"),
])
def test_cv_bad_parameters(data, bad, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        MeanProbeClassifierCV(**bad).fit(X, y)


@pytest.mark.parametrize("scoring", ["roc_auc_ovr", "balanced_accuracy", "f1_macro"])
def test_any_scorer_matches_grid_search(data, scoring):
    X, y = data
    gs = GridSearchCV(MeanProbeClassifier(tol=1e-10), {"weight_decay": GRID}, cv=3,
                      scoring=scoring).fit(X, y)
    cv = MeanProbeClassifierCV(weight_decays=GRID, cv=3, scoring=scoring,
                               tol=1e-10).fit(X, y)
    np.testing.assert_allclose(cv.cv_results_["mean_test_score"],
                               gs.cv_results_["mean_test_score"], rtol=1e-5)


def test_callable_scorer_and_groups_follow_grid_search(data):
    from sklearn.metrics import make_scorer, matthews_corrcoef
    from sklearn.model_selection import GroupKFold

    X, y = data
    groups = np.arange(len(y)) // 10  # 15 groups of neighbouring texts
    scorer = make_scorer(matthews_corrcoef)
    params = dict(n_heads=1, max_iter=30, random_state=0)
    gs = GridSearchCV(AttentionProbeClassifier(**params), {"weight_decay": [0.0, 0.1]},
                      cv=GroupKFold(3), scoring=scorer).fit(X, y, groups=groups)
    cv = AttentionProbeClassifierCV(weight_decays=[0.0, 0.1], cv=GroupKFold(3),
                                    scoring=scorer, **params).fit(X, y, groups=groups)
    for k in range(3):
        np.testing.assert_allclose(cv.cv_results_[f"split{k}_test_score"],
                                   gs.cv_results_[f"split{k}_test_score"], atol=1e-12)
    assert cv.refit_time_ > 0
    assert MeanProbeClassifierCV(refit=False, cv=3).fit(X, y).refit_time_ is None


# the 12 live models of a block: 12 heads take the fused operator, 48 the
# direct per-token-value path
@pytest.mark.parametrize("n_heads", [1, 4])
def test_binary_stack_skips_idle_splits_and_still_matches_grid_search(n_heads):
    X, y = make_planted_task("needle", n_texts=120, d_model=10, dtype=np.float64,
                             random_state=1, return_ragged=True)
    params = dict(n_heads=n_heads, max_iter=60, random_state=0)
    gs, cv = _grid_search_and_cv(X, y, params)
    for k in range(4):
        np.testing.assert_allclose(cv.cv_results_[f"split{k}_test_score"],
                                   gs.cv_results_[f"split{k}_test_score"])
    # (tied mean scores may rank apart by rounding, so refit the CV's choice)
    refit = AttentionProbeClassifier(weight_decay=cv.best_params_["weight_decay"],
                                     **params).fit(X, y)
    np.testing.assert_allclose(cv.predict_proba(X), refit.predict_proba(X), atol=1e-10)


def test_packing_by_idle_splits():
    import torch

    from sklearn_attnprobe import RaggedArray
    from sklearn_attnprobe._packing import pack_by_idle_splits

    rng = np.random.default_rng(0)
    X = RaggedArray.from_list([rng.normal(size=(int(t), 3)) for t in
                               rng.integers(1, 30, size=60)])
    folds = np.arange(60) % 3
    W = (folds[:, None] != np.arange(3)[None, :]).astype(float)  # split s leaves out fold s
    W[5] = 0.0  # a text no split uses
    batch = pack_by_idle_splits(X, W, torch.float64, "cpu")
    assert sorted(batch.order.tolist()) == list(range(60))
    for block in batch.blocks:
        expected = {tuple(np.flatnonzero(W[i] == 0)) for i in block.index}
        assert expected == {block.idle_splits}
    assert {b.idle_splits for b in batch.blocks} == {(0,), (1,), (2,), (0, 1, 2)}
    # overlapping splits with many patterns: plain packing, no idle splits
    W_many = rng.integers(0, 2, size=(60, 8)).astype(float)
    plain = pack_by_idle_splits(X, W_many, torch.float64, "cpu")
    assert all(b.idle_splits == () for b in plain.blocks)
    # minibatch sub-blocks keep the mark
    sub = batch.blocks[0].select(torch.tensor([0]))
    assert sub.idle_splits == batch.blocks[0].idle_splits


# binary: 2 x 4 x (1 + 3) = 32 heads take the direct path; 3 classes: the fused one
@pytest.mark.parametrize("n_classes, max_iter", [(2, 60), (3, 400)])
def test_head_count_search_is_grid_search_over_both(n_classes, max_iter):
    # one stacked pass over (n_heads, weight_decay) gives GridSearchCV's scores,
    # choice and refit over the same grid (max_iter=400: the models stop on
    # their own, at different steps, and leave the stack)
    X, y = make_planted_task("needle", n_texts=120, d_model=10, n_classes=n_classes,
                             dtype=np.float64, random_state=2, return_ragged=True)
    params = dict(max_iter=max_iter, random_state=0)
    grid = {"n_heads": [1, 3], "weight_decay": GRID}
    gs = GridSearchCV(AttentionProbeClassifier(**params), grid, cv=2).fit(X, y)
    cv = AttentionProbeClassifierCV(n_heads=[1, 3], weight_decays=GRID, cv=2,
                                    **params).fit(X, y)
    assert cv.cv_results_["params"] == gs.cv_results_["params"]
    np.testing.assert_array_equal(np.asarray(cv.cv_results_["param_n_heads"]),
                                  np.asarray(gs.cv_results_["param_n_heads"]))
    for k in range(2):
        np.testing.assert_allclose(cv.cv_results_[f"split{k}_test_score"],
                                   gs.cv_results_[f"split{k}_test_score"])
    assert cv.best_params_ == gs.best_params_
    assert cv.best_estimator_.n_heads == gs.best_params_["n_heads"]
    np.testing.assert_allclose(cv.predict_proba(X), gs.predict_proba(X), atol=1e-10)
    assert cv.n_iter_.shape == (2, 8)
    if max_iter == 400:
        assert len(np.unique(cv.n_iter_)) > 4  # models left the stack one by one
    # each head count's models are those of its own search, step for step
    for j, h in enumerate([1, 3]):
        alone = AttentionProbeClassifierCV(n_heads=h, weight_decays=GRID, cv=2,
                                           **params).fit(X, y)
        np.testing.assert_array_equal(alone.n_iter_, cv.n_iter_[:, 4 * j:4 * (j + 1)])
        np.testing.assert_allclose(alone.cv_results_["mean_test_score"],
                                   cv.cv_results_["mean_test_score"][4 * j:4 * (j + 1)])


@pytest.mark.parametrize("n_heads", [[], [0, 2], [1.5], ["two"], [[1, 2]]])
def test_bad_head_count_lists(data, n_heads):
    X, y = data
    with pytest.raises((ValueError, TypeError), match="n_heads"):
        AttentionProbeClassifierCV(n_heads=n_heads, cv=2, max_iter=5).fit(X, y)


# -- held_out_stopping --------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("cv", [4, "shuffle"])
@pytest.mark.parametrize("weighted", [False, True])
def test_held_out_loss_is_the_neg_log_loss_of_the_split(data, cv, weighted):
    """The curve's last entry of each model is its split's held-out log-loss,
    as the neg_log_loss scorer computes it (blocks packed by idle splits, or
    not: a ShuffleSplit's overlapping test sets; sample weights included)."""
    from sklearn.model_selection import ShuffleSplit

    X, y = data
    splitter = ShuffleSplit(n_splits=5, test_size=0.3, random_state=0) if cv == "shuffle" else cv
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y)) if weighted else None
    est = AttentionProbeClassifierCV(n_heads=[1, 2], weight_decays=[0.0, 0.1], cv=splitter,
                                     max_iter=6, scoring="neg_log_loss", refit=False,
                                     held_out_stopping=10, random_state=0)
    est.fit(X, y, sample_weight=sw)
    curve = est.held_out_loss_curve_
    assert curve.shape == (6, est.n_splits_, 4) and np.isfinite(curve).all()
    assert not est.held_out_stopped_.any()  # 6 epochs, patience 10
    scores = np.array([est.cv_results_[f"split{k}_test_score"] for k in range(est.n_splits_)])
    np.testing.assert_allclose(curve[-1], -scores, rtol=1e-9)
    # watching the held-out loss leaves the training itself untouched (in 6
    # epochs neither rule can fire)
    plain = clone(est).set_params(held_out_stopping=None).fit(X, y, sample_weight=sw)
    for k in range(est.n_splits_):
        np.testing.assert_array_equal(plain.cv_results_[f"split{k}_test_score"],
                                      est.cv_results_[f"split{k}_test_score"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_held_out_stopping_follows_its_rule_and_saves_steps(tmp_path):
    """Noise labels at d 64 on 60 texts: every model overfits, so the held-out
    loss stops them well before the training rule; each stop is the rule's
    (no fall by ``tol`` for more than ``n_iter_no_change`` epochs), and no
    model ran past such a stretch."""
    rng = np.random.default_rng(1)
    X = [rng.standard_normal((int(rng.integers(3, 12)), 64)) for _ in range(60)]
    y = rng.integers(0, 2, 60)
    params = dict(n_heads=2, weight_decays=[0.0, 1e-3], cv=3, max_iter=300, tol=1e-4,
                  refit=False, random_state=0)
    plain = AttentionProbeClassifierCV(**params).fit(X, y)
    est = AttentionProbeClassifierCV(**params, held_out_stopping=5).fit(X, y)
    assert est.held_out_stopped_.all()
    assert est.n_iter_.sum() < 0.5 * plain.n_iter_.sum()
    curve = est.held_out_loss_curve_
    for s in range(3):
        for j in range(2):
            losses = curve[: est.n_iter_[s, j], s, j]
            assert np.isfinite(losses).all() and np.isnan(curve[est.n_iter_[s, j]:, s, j]).all()
            best, misses, stops = np.inf, 0, []
            for t, v in enumerate(losses):
                misses = 0 if v < best - 1e-4 else misses + 1
                best = min(best, v)
                stops.append(misses > 5)
            assert stops[-1] and not any(stops[:-1])
    # the curve and the stops survive a save and load (NaNs included)
    est.save(tmp_path / "cv.safetensors")
    loaded = AttentionProbeClassifierCV.load(tmp_path / "cv.safetensors")
    np.testing.assert_array_equal(loaded.held_out_loss_curve_, curve)
    np.testing.assert_array_equal(loaded.held_out_stopped_, est.held_out_stopped_)
    # without held-out stopping the attribute is gone (refitting the same object)
    est.set_params(held_out_stopping=None, max_iter=3).fit(X, y)
    assert not hasattr(est, "held_out_stopped_") and not hasattr(est, "held_out_loss_curve_")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_heads", [2, [1, 2]])
def test_refit_steps_cv_refits_for_the_searched_steps(n_heads):
    """``refit_steps="cv"``: the refit trains for the mean steps of the best
    candidate's fold models, with no stopping rule: the stand-alone probe with
    those settings, step for step. By default the refit is the plain one."""
    rng = np.random.default_rng(1)
    X = [rng.standard_normal((int(rng.integers(3, 12)), 64)) for _ in range(60)]
    y = rng.integers(0, 2, 60)
    params = dict(n_heads=n_heads, weight_decays=[0.0, 1e-3], cv=3, max_iter=300,
                  random_state=0)
    est = AttentionProbeClassifierCV(**params, held_out_stopping=5,
                                     refit_steps="cv").fit(X, y)
    steps = est.n_iter_[:, est.best_index_]
    refit = est.best_estimator_
    assert refit.max_iter == int(np.rint(steps.mean())) < 300
    assert refit.n_iter_no_change is None and refit.n_iter_ == refit.max_iter
    alone = AttentionProbeClassifier(
        n_heads=est.best_params_.get("n_heads", n_heads),
        weight_decay=est.best_params_["weight_decay"], max_iter=refit.max_iter,
        n_iter_no_change=None, random_state=0).fit(X, y)
    np.testing.assert_allclose(est.predict_proba(X), alone.predict_proba(X), atol=1e-6)
    plain = clone(est).set_params(refit_steps="rule").fit(X, y)
    assert plain.best_estimator_.max_iter == 300
    assert plain.best_estimator_.n_iter_no_change == 10


def test_refit_steps_cv_lets_the_training_rule_wait_for_its_best(monkeypatch, data):
    """Only the batched pass of ``refit_steps="cv"`` uses the settling
    training rule; the held-out rule, the other passes and stand-alone fits
    keep scikit-learn's."""
    from sklearn_attnprobe import _loops

    made = []
    init = _loops.StoppingRule.__init__

    def record(self, n_models, tol, n_iter_no_change, settle=False):
        made.append((n_iter_no_change, settle))
        init(self, n_models, tol, n_iter_no_change, settle)

    monkeypatch.setattr(_loops.StoppingRule, "__init__", record)
    X, y = data
    params = dict(cv=3, max_iter=4, refit=False, random_state=0)
    AttentionProbeClassifierCV(**params, held_out_stopping=3, refit_steps="cv").fit(X, y)
    AttentionProbeClassifierCV(**params, held_out_stopping=3).fit(X, y)
    AttentionProbeClassifierCV(**params).fit(X, y)
    AttentionProbeClassifier(max_iter=4).fit(X, y)
    assert made == [(10, True), (3, False), (10, False), (3, False), (10, False),
                    (10, False)]


@pytest.mark.parametrize("params, match", [
    (dict(solver="lbfgs"), "solver='adamw'"),
    (dict(callbacks="timer"), "no callbacks"),
    (dict(held_out_stopping=0), "held_out_stopping"),
    (dict(held_out_stopping=None, refit_steps="cv"), "refit_steps='cv' needs held_out"),
    (dict(refit_steps="last"), "refit_steps"),
])
def test_held_out_stopping_bad_settings(data, params, match):
    from skorch.callbacks import EpochTimer

    X, y = data
    if params.get("callbacks") == "timer":
        params = dict(callbacks=[EpochTimer()])
    with pytest.raises(ValueError, match=match):
        AttentionProbeClassifierCV(**{"held_out_stopping": 3, "cv": 3, "max_iter": 5,
                                      **params}).fit(X, y)


def test_held_out_stopping_needs_texts_in_memory(tmp_path, data):
    from sklearn_attnprobe import RaggedArray

    X, y = data
    RaggedArray.from_list(list(X)).save(tmp_path / "x.npz")
    mapped = RaggedArray.load(tmp_path / "x.npz", mmap_mode="r")
    with pytest.raises(ValueError, match="in memory"):
        AttentionProbeClassifierCV(held_out_stopping=3, cv=3, max_iter=5,
                                   batch_size=32).fit(mapped, y)
