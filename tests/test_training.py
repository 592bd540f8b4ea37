"""Training loops: stopping, solvers, early stopping, progress, subnormals."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from skorch.callbacks import Callback

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    MeanProbeClassifier,
)
from sklearn_attnprobe import _progress
from sklearn_attnprobe._numerics import _flush_state, flush_denormal
from sklearn_attnprobe.datasets import make_planted_task


@pytest.fixture(scope="module")
def needle():
    return make_planted_task("needle", n_texts=120, d_model=12, dtype=np.float64,
                             random_state=0, return_ragged=True)


def _fit_quiet(est, X, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    return [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_adamw_stops_when_the_objective_stops_improving(needle):
    X, y = needle
    est = AttentionProbeClassifier(n_heads=2, weight_decay=1e-2, max_iter=2000,
                                   random_state=0)
    assert not _fit_quiet(est, X, y)
    assert 11 < est.n_iter_ < 2000
    curve = np.asarray(est.loss_curve_)
    assert len(curve) == est.n_iter_  # full batch: one epoch per step
    # MLPClassifier's rule: each of the last n_iter_no_change + 1 epochs
    # improved on the best loss before it by less than tol; the one before
    # them did improve by tol
    p, tol = est.n_iter_no_change, est.tol
    n = len(curve)
    assert all(curve[i] > curve[:i].min() - tol for i in range(n - p - 1, n))
    assert curve[n - p - 2] <= curve[: n - p - 2].min() - tol


@pytest.mark.parametrize("settle", [False, True])
def test_stopping_rule_waits_for_a_risen_loss_only_when_settling(settle):
    """scikit-learn's rule stops a model whose loss rose after its best;
    the settling rule waits until the loss is back within tol of that best
    (or is not finite), and a new best resets both."""
    from sklearn_attnprobe._loops import StoppingRule

    def first_stop(losses):
        rule = StoppingRule(1, 1e-3, 2, settle=settle)
        for t, loss in enumerate(losses):
            if rule.update(np.array([loss]), np.arange(1))[1][0]:
                return t
        return None

    risen = [1.0, 0.5, 0.6, 0.7, 0.7, 0.6, 0.5004, 0.5002]
    assert first_stop(risen) == (6 if settle else 4)
    assert first_stop([1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.45, 0.45]) == (None if settle else 7)
    assert first_stop([1.0, 0.5, 0.5, 0.5, 0.5]) == 4
    assert first_stop([1.0, 0.5, 0.6, np.nan, np.nan]) == 4  # a diverged fit stops


def test_max_iter_first_warns_and_fixed_steps_do_not(needle):
    X, y = needle
    est = AttentionProbeClassifier(n_heads=2, max_iter=5, random_state=0)
    assert len(_fit_quiet(est, X, y)) == 1 and est.n_iter_ == 5
    fixed = AttentionProbeClassifier(n_heads=2, max_iter=40, n_iter_no_change=None,
                                     random_state=0)
    assert not _fit_quiet(fixed, X, y)
    assert fixed.n_iter_ == 40 and len(fixed.loss_curve_) == 40


def test_stopping_on_the_skorch_path_matches_the_plain_loop(needle):
    from skorch.callbacks import Callback

    X, y = needle
    params = dict(n_heads=2, weight_decay=1e-2, max_iter=2000, random_state=0)
    plain = AttentionProbeClassifier(**params).fit(X, y)
    driven = AttentionProbeClassifier(callbacks=[Callback()], **params).fit(X, y)
    assert hasattr(driven, "net_") and not hasattr(plain, "net_")
    assert driven.n_iter_ == plain.n_iter_
    np.testing.assert_allclose(driven.loss_curve_, plain.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(driven.predict_proba(X), plain.predict_proba(X),
                               atol=1e-10)


def test_cv_models_stop_on_their_own_as_stand_alone_fits_do(needle):
    X, y = needle
    wds = [0.0, 1e-2, 1e-1]
    params = dict(n_heads=2, max_iter=400, learning_rate=5e-2, random_state=0)
    cv = AttentionProbeClassifierCV(weight_decays=wds, cv=3, refit=False,
                                    **params).fit(X, y)
    splits = StratifiedKFold(3).split(np.zeros(len(y)), y)
    for s, (train, test) in enumerate(splits):
        for j, wd in enumerate(wds):
            single = AttentionProbeClassifier(weight_decay=wd, **params)
            single.fit(X[train], y[train])
            assert cv.n_iter_[s, j] == single.n_iter_
            score = single.score(X[test], y[test])
            assert cv.cv_results_[f"split{s}_test_score"][j] == pytest.approx(score)
    # the models did stop at different steps: the stacked step shrank
    assert len(np.unique(cv.n_iter_)) > 2
    assert cv.n_iter_.max() < 400


def test_lbfgs_reaches_a_lower_objective_than_short_adamw(needle):
    X, y = needle
    lbfgs = AttentionProbeClassifier(n_heads=2, weight_decay=1e-2, solver="lbfgs",
                                     max_iter=300, random_state=0)
    assert not _fit_quiet(lbfgs, X, y)
    adam = AttentionProbeClassifier(n_heads=2, weight_decay=1e-2, max_iter=50,
                                    n_iter_no_change=None, random_state=0).fit(X, y)
    assert lbfgs.loss_curve_[-1] < adam.loss_curve_[-1]
    assert lbfgs.n_iter_ < 300
    assert lbfgs.score(X, y) >= adam.score(X, y) - 0.02


def test_early_stopping_holds_out_texts_and_keeps_the_best_epoch(needle):
    X, y = needle
    est = AttentionProbeClassifier(n_heads=2, max_iter=3000, learning_rate=5e-2,
                                   early_stopping=True, validation_fraction=0.25,
                                   random_state=0)
    _fit_quiet(est, X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_)
    assert est.best_validation_score_ in scores
    # stopped on the held-out accuracy, long before the training loss flattens
    assert est.n_iter_ < 3000
    # the kept parameters are those of the last epoch that improved the
    # held-out accuracy: n_iter_no_change + 1 epochs before the end
    best_epoch = est.n_iter_ - est.n_iter_no_change - 1
    assert est.validation_scores_[best_epoch - 1] == est.best_validation_score_
    upto = AttentionProbeClassifier(n_heads=2, max_iter=best_epoch, learning_rate=5e-2,
                                    n_iter_no_change=None, early_stopping=True,
                                    validation_fraction=0.25, random_state=0)
    _fit_quiet(upto, X, y)
    np.testing.assert_array_equal(upto.predict_proba(X), est.predict_proba(X))


def test_verbose_levels(needle, capsys, monkeypatch):
    X, y = needle
    est = AttentionProbeClassifier(n_heads=2, max_iter=20, n_iter_no_change=None,
                                   random_state=0)
    est.fit(X, y)
    assert capsys.readouterr().err == ""
    est.set_params(verbose=1).fit(X, y)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "20 steps" in err
    est.set_params(verbose=2).fit(X, y)
    assert 5 <= capsys.readouterr().err.count("step ") <= 12
    pytest.importorskip("tqdm")
    monkeypatch.setattr(_progress, "BAR_DELAY", 0.0)
    est.set_params(verbose=1).fit(X, y)
    assert "/20 [" in capsys.readouterr().err  # the bar was drawn


class _NoOpCallback(Callback):
    """Any callback sends a fit down the skorch path (torch.optim.LBFGS)."""


@pytest.mark.parametrize("weight_decay", [1e-2, 1e-1])
def test_scipy_lbfgs_finds_torch_lbfgs_optimum(needle, weight_decay):
    # the plain loop runs SciPy's L-BFGS-B, the skorch path torch.optim.LBFGS;
    # the penalised objective is strictly convex, so both must reach its minimum
    X, y = needle
    plain = MeanProbeClassifier(weight_decay=weight_decay, tol=1e-8, max_iter=500)
    assert not _fit_quiet(plain, X, y)
    skorch_path = clone(plain).set_params(callbacks=[_NoOpCallback()]).fit(X, y)
    assert not hasattr(plain, "net_") and hasattr(skorch_path, "net_")
    assert 3 < plain.n_iter_ < 500
    np.testing.assert_allclose(plain.coef_, skorch_path.coef_, atol=1e-5)
    np.testing.assert_allclose(plain.intercept_, skorch_path.intercept_, atol=1e-5)
    assert plain.loss_curve_[-1] <= skorch_path.loss_curve_[-1] + 1e-10


def test_lbfgs_iteration_limit_warns(needle):
    X, y = needle
    est = MeanProbeClassifier(weight_decay=1e-3, max_iter=2)
    caught = _fit_quiet(est, X, y)
    assert caught and est.n_iter_ == 2


@pytest.mark.parametrize("state", [False, True])
def test_flush_denormal_restores_the_previous_state(state):
    if not torch.set_flush_denormal(state):
        pytest.skip("this CPU cannot flush subnormal numbers")
    try:
        assert _flush_state() is state
        with flush_denormal():
            assert _flush_state() is True
        assert _flush_state() is state
    finally:
        torch.set_flush_denormal(False)


# -- the query's own penalty ---------------------------------------------------------------
def test_penalty_terms_follow_query_weight_decay():
    from sklearn_attnprobe._modules import AttentionProbeModule, StackedAttentionProbeModule
    from sklearn_attnprobe._training import has_penalty

    g = torch.Generator().manual_seed(0)
    single = AttentionProbeModule(6, 3, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        single.query.normal_(generator=g)
    sq_q, sq_v = (single.query ** 2).sum(), (single.value ** 2).sum()
    assert single.query_weight_decay is None  # a bare module: both at weight_decay
    assert float(single.penalty(0.2)) == pytest.approx(0.1 * float(sq_q + sq_v))
    single.query_weight_decay = 0.0
    assert float(single.penalty(0.2)) == pytest.approx(0.1 * float(sq_v))
    single.query_weight_decay = 0.5
    assert has_penalty(single, 0.0)
    assert float(single.penalty(0.0)) == pytest.approx(0.25 * float(sq_q))
    single.query_weight_decay = 0.0
    assert not has_penalty(single, 0.0)

    stack = StackedAttentionProbeModule(
        4, 6, 3, 2, generators=[torch.Generator().manual_seed(i) for i in range(4)],
        dtype=torch.float64)
    with torch.no_grad():
        stack.query.normal_(generator=g)
    decays = torch.tensor([0.0, 1e-3, 1e-2, 1e-1], dtype=torch.float64)
    for qwd in (None, 0.0, 0.3):
        stack.query_weight_decay = qwd
        per_model = stack.penalty(decays)
        assert per_model.shape == (4,)
        for m in range(4):
            one = AttentionProbeModule(6, 3, 2, dtype=torch.float64)
            with torch.no_grad():
                one.query.copy_(stack.query[:, 3 * m:3 * (m + 1)])
                one.value.copy_(stack.value[3 * m:3 * (m + 1)])
            one.query_weight_decay = qwd
            assert float(per_model[m]) == pytest.approx(float(one.penalty(decays[m])))


def test_a_free_query_sharpens_the_attention_under_a_strong_penalty(needle):
    X, y = needle
    params = dict(n_heads=2, weight_decay=0.1, max_iter=300, random_state=0)
    free = AttentionProbeClassifier(query_weight_decay=0.0, **params).fit(X, y)
    tied = AttentionProbeClassifier(query_weight_decay=None, **params).fit(X, y)
    q_free = float((free.module_.query ** 2).sum())
    q_tied = float((tied.module_.query ** 2).sum())
    assert q_free > 2 * q_tied
    assert free.attention_entropy(X).ratio.mean() < tied.attention_entropy(X).ratio.mean()
    # the values are penalised alike: neither fit's values grow without bound
    assert float((free.module_.value ** 2).sum()) < 10 * float((tied.module_.value ** 2).sum())


def test_query_weight_decay_on_the_skorch_path_matches_the_plain_loop(needle):
    from skorch.callbacks import Callback

    X, y = needle
    params = dict(n_heads=2, weight_decay=0.0, query_weight_decay=0.05, max_iter=200,
                  random_state=0)
    plain = AttentionProbeClassifier(**params).fit(X, y)
    driven = AttentionProbeClassifier(callbacks=[Callback()], **params).fit(X, y)
    np.testing.assert_allclose(driven.loss_curve_, plain.loss_curve_, rtol=1e-9)
    # the penalty did act: without it the loss curve differs
    free = AttentionProbeClassifier(**{**params, "query_weight_decay": 0.0}).fit(X, y)
    assert (free.module_.query ** 2).sum() > (plain.module_.query ** 2).sum()


@pytest.mark.parametrize("trailing", [(), (4,)])
def test_head_sums_by_matmul_are_the_index_add_sums(trailing):
    # the GPU's path (a 0/1 matrix product, deterministic there) gives the CPU's
    # index_add sums and gradients; off the CPU it is the one taken
    from sklearn_attnprobe._head_layout import sum_heads

    counts = np.array([1, 3, 2, 8])
    per_head = torch.randn(5, counts.sum(), *trailing, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(5, len(counts), *trailing, dtype=torch.float64)
    sums, grads = [], []
    for by_matmul in (False, True):
        out = sum_heads(per_head, counts, by_matmul=by_matmul)
        (grad,) = torch.autograd.grad((out * weights).sum(), per_head)
        sums.append(out)
        grads.append(grad)
    torch.testing.assert_close(sums[1], sums[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    expect = torch.stack([per_head[:, a:b].sum(1) for a, b in
                          zip(np.r_[0, np.cumsum(counts)[:-1]], np.cumsum(counts))], 1)
    torch.testing.assert_close(sums[0], expect)
    from sklearn_attnprobe._head_layout import _owner_matrix

    calls = _owner_matrix.cache_info()
    on_meta = sum_heads(torch.empty(5, counts.sum(), *trailing, device="meta"), counts)
    assert on_meta.shape == (5, len(counts), *trailing)
    after = _owner_matrix.cache_info()
    assert after.hits + after.misses == calls.hits + calls.misses + 1  # the matrix path


@pytest.mark.parametrize("counts, n_outputs, fused", [
    ([1, 3, 2], 4, True),     # the fused kernels' per-head logits
    ([1, 3, 2], 4, False),    # the reference pooling, then per-head values
    ([8, 16, 9], 1, True),    # binary, 33 heads: the direct per-token values
])
def test_stack_of_mixed_head_counts_is_its_models(monkeypatch, counts, n_outputs, fused):
    # a stack whose models have different head counts: each model's logits,
    # gradients and penalty are those of a stand-alone probe with its parameters
    from sklearn_attnprobe import _fused
    from sklearn_attnprobe._modules import AttentionProbeModule, StackedAttentionProbeModule
    from sklearn_attnprobe._packing import pack
    from sklearn_attnprobe._ragged import RaggedArray

    if not fused:
        monkeypatch.setattr(_fused, "_loaded", {"numba": None, "triton": None})
    rng = np.random.default_rng(5)
    X = RaggedArray.from_list([rng.standard_normal((int(L), 6)) for L in
                               rng.integers(1, 20, size=17)])
    batch = pack(X, torch.float64, "cpu")
    stack = StackedAttentionProbeModule(
        len(counts), 6, counts, n_outputs, dtype=torch.float64,
        generators=[torch.Generator().manual_seed(i) for i in range(len(counts))])
    assert stack.n_heads is None and stack.query.shape == (6, sum(counts))
    with torch.no_grad():
        stack.query.normal_(0, 0.7, generator=torch.Generator().manual_seed(9))
        stack.slope.uniform_(-0.3, 0.3)
        stack.bias.normal_()
    probe = torch.linspace(-1, 1, len(X) * len(counts) * n_outputs, dtype=torch.float64)
    out = stack(batch)
    (out * probe.view_as(out)).sum().backward()
    start = 0
    for m, h in enumerate(counts):
        cols = slice(start, start + h)
        one = AttentionProbeModule(6, h, n_outputs, dtype=torch.float64)
        with torch.no_grad():
            one.query.copy_(stack.query[:, cols])
            one.slope.copy_(stack.slope[cols])
            one.value.copy_(stack.value[cols])
            one.bias.copy_(stack.bias[m])
        alone = one(batch)
        torch.testing.assert_close(out[:, m], alone, rtol=1e-10, atol=1e-12)
        (alone * probe.view_as(out)[:, m]).sum().backward()
        torch.testing.assert_close(stack.query.grad[:, cols], one.query.grad)
        torch.testing.assert_close(stack.slope.grad[cols], one.slope.grad)
        torch.testing.assert_close(stack.value.grad[cols], one.value.grad)
        decay = torch.tensor(0.1 * (m + 1), dtype=torch.float64)
        assert float(stack.penalty(torch.full((len(counts),), 0.1 * (m + 1),
                                              dtype=torch.float64))[m]) == \
            pytest.approx(float(one.penalty(decay)))
        start += h


# -- learning_rate="auto" ---------------------------------------------------------------
def test_auto_learning_rate_is_one_over_a_tokens_mean_l1_norm():
    from sklearn_attnprobe import RaggedArray
    from sklearn_attnprobe._training import auto_learning_rate

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=600)
    X = RaggedArray.from_list([rng.standard_normal((n, 300)) * 2 for n in lengths])
    rates = auto_learning_rate(X)
    # 256 texts spread evenly, every token of each counted once
    rows = np.unique(np.linspace(0, len(X) - 1, 256).round().astype(int))
    tokens = np.concatenate([X[i] for i in rows])
    assert rates["query"] == rates["value"] == pytest.approx(
        1 / np.abs(tokens).sum(axis=1).mean(), rel=1e-12)
    assert rates["query"] < 1e-2 and rates["slope"] == rates["bias"] == 1e-2
    # narrow unit-scale states keep the step the defaults were chosen with
    small = RaggedArray.from_list([rng.standard_normal((5, 16)) for _ in range(10)])
    assert auto_learning_rate(small) == dict.fromkeys(("query", "slope", "value", "bias"), 1e-2)
    zeros = RaggedArray.from_list([np.zeros((3, 400))])
    assert auto_learning_rate(zeros)["query"] == 1e-2


def test_auto_learning_rate_makes_a_fit_indifferent_to_the_activations_scale(monkeypatch):
    from sklearn_attnprobe import RaggedArray, _modules

    # values start at zero here so that the starting point is scale-free too
    # (random values give initial logits proportional to the scale)
    init = _modules.init_values
    monkeypatch.setattr(_modules, "init_values", lambda *args: init(*args) * 0)
    X, y = make_planted_task("needle", n_texts=120, d_model=256, dtype=np.float64,
                             random_state=0, return_ragged=True)
    X10 = RaggedArray(np.asarray(X.data) * 10, starts=X.starts, lengths=X.lengths)
    fits = {}
    for lr in ("auto", 1e-2):
        fits[lr] = [AttentionProbeClassifier(n_heads=2, learning_rate=lr, random_state=0)
                    .fit(data, y) for data in (X, X10)]
    one, ten = fits["auto"]
    assert one.learning_rate_ == pytest.approx(10 * ten.learning_rate_)
    assert one.learning_rate_ < 1e-2
    assert one.n_iter_ == ten.n_iter_ > 20
    np.testing.assert_allclose(one.predict_proba(X), ten.predict_proba(X10), atol=1e-4)
    # a fixed step size takes ten times larger steps on the scaled copy
    one, ten = fits[1e-2]
    assert one.n_iter_ != ten.n_iter_
    assert np.abs(one.predict_proba(X) - ten.predict_proba(X10)).max() > 1e-3


def test_auto_learning_rate_on_the_skorch_path_and_in_the_cv_class():
    X, y = make_planted_task("needle", n_texts=120, d_model=256, dtype=np.float64,
                             random_state=0, return_ragged=True)
    params = dict(n_heads=2, weight_decay=1e-2, learning_rate="auto", random_state=0)
    plain = AttentionProbeClassifier(**params).fit(X, y)
    driven = AttentionProbeClassifier(callbacks=[Callback()], **params).fit(X, y)
    groups = {len(g["params"][0].shape): g["lr"] for g in driven.net_.optimizer_.param_groups}
    assert plain.learning_rate_ < 1e-2
    assert groups[2] == plain.learning_rate_  # query (d, heads)
    assert groups[3] == plain.learning_rate_  # values (heads, d, outputs)
    assert groups[1] == 1e-2  # slopes and intercepts
    assert driven.n_iter_ == plain.n_iter_
    np.testing.assert_allclose(driven.predict_proba(X), plain.predict_proba(X), atol=1e-10)
    search = AttentionProbeClassifierCV(n_heads=2, weight_decays=[0.0, 1e-2], cv=3,
                                        learning_rate="auto", random_state=0).fit(X, y)
    assert search.learning_rate_ == search.best_estimator_.learning_rate_ == plain.learning_rate_
