"""The probes inside scikit-learn's and joblib's machinery.

Model selection (GridSearchCV, cross_val_score / cross_val_predict,
train_test_split), Pipeline with ActivationScaler, joblib workers (determinism,
thread count, memory-mapped RaggedArray), pickle / clone, warm_start,
class_weight, string labels and AdamW minibatches.

Everything is tiny (<= 90 texts, d_model 8, <= 12 tokens per text) because
the CI machine has two cores. Starting loky workers (each imports torch) is
the most expensive thing here, so every parallel call in this module, the
ones inside GridSearchCV included, runs under one ``parallel_config`` with a
small ``max_nbytes``: joblib restarts its executor whenever ``max_nbytes``
changes, and this way the workers start once for the whole file. As a side
effect, the token buffers arrive memory-mapped in every worker.
"""

import os
import pickle
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joblib import Parallel, cpu_count, delayed, parallel_config
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback
from skorch.exceptions import DeviceWarning

from sklearn_attnprobe import (
    ActivationScaler,
    AttentionProbeClassifier,
    LastTokenProbeClassifier,
    MeanProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe.datasets import make_planted_task

HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


# Arrays above this many bytes reach joblib workers memory-mapped.
MAX_NBYTES = 1024


@pytest.fixture(scope="module", autouse=True)
def _one_loky_executor():
    with parallel_config(max_nbytes=MAX_NBYTES, mmap_mode="r"):
        yield


# -- data ------------------------------------------------------------------------
def _task(task="needle", n_texts=80, n_classes=2, seed=0, dtype=np.float32,
          d_model=8, signal=None):
    if signal is None and task == "shift":
        signal = 0.8  # the default (0.35) is meant for texts of 8-48 tokens
    X, y = make_planted_task(task, n_texts=n_texts, d_model=d_model,
                             n_classes=n_classes, min_length=3, max_length=12,
                             signal=signal, dtype=dtype, random_state=seed)
    return X, y


@pytest.fixture(scope="module")
def needle():
    """80 binary texts as a list of arrays, and the same texts as a RaggedArray."""
    X, y = _task("needle")
    return X, RaggedArray.from_list(X), y


@pytest.fixture(scope="module")
def shift3():
    """90 three-class texts (list and RaggedArray) where mean pooling works."""
    X, y = _task("shift", n_texts=90, n_classes=3, seed=1)
    return X, RaggedArray.from_list(X), y


def _attn(**kw):
    params = dict(n_heads=2, max_iter=30, learning_rate=5e-2, random_state=0)
    params.update(kw)
    return AttentionProbeClassifier(**params)


ESTIMATORS = {
    "attention": _attn,
    "mean": lambda **kw: MeanProbeClassifier(**kw),
    "last": lambda **kw: LastTokenProbeClassifier(**kw),
}


# -- 1. GridSearchCV on a list and on a RaggedArray ---------------------------------
def test_grid_search_list_and_ragged_agree(needle):
    X_list, X_ragged, y = needle
    grid = {"weight_decay": [0, 1e-3, 1e-2, 1e-1]}
    est = AttentionProbeClassifier(n_heads=8, max_iter=30, learning_rate=5e-2,
                                   random_state=0)
    searches = [
        GridSearchCV(est, grid, cv=5, n_jobs=2, error_score="raise").fit(X, y)
        for X in (X_list, X_ragged)
    ]
    s_list, s_ragged = searches
    for s in searches:
        scores = s.cv_results_["mean_test_score"]
        assert scores.shape == (4,)
        assert np.all(np.isfinite(scores))
        assert np.all((scores >= 0) & (scores <= 1))
        assert s.best_params_["weight_decay"] in grid["weight_decay"]
        check_is_fitted(s.best_estimator_)
        assert s.best_estimator_.module_.n_heads == 8
    assert_array_equal(s_list.cv_results_["mean_test_score"],
                       s_ragged.cv_results_["mean_test_score"])
    assert_array_equal(s_list.cv_results_["split3_test_score"],
                       s_ragged.cv_results_["split3_test_score"])
    assert s_list.best_params_ == s_ragged.best_params_
    # the refitted best estimators are the same model
    assert_array_equal(s_list.predict_proba(X_list), s_ragged.predict_proba(X_ragged))
    # the needle is findable: better than chance
    assert s_ragged.best_score_ > 0.7


# -- 2. cross_val_score / cross_val_predict ---------------------------------------
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_cross_val_score_list_equals_ragged(name, shift3):
    X_list, X_ragged, y = shift3
    est = ESTIMATORS[name]()
    s_list = cross_val_score(est, X_list, y, cv=3, error_score="raise")
    s_ragged = cross_val_score(est, X_ragged, y, cv=3, error_score="raise")
    assert s_list.shape == (3,)
    assert_array_equal(s_list, s_ragged)
    assert np.all((s_ragged >= 0) & (s_ragged <= 1))


def test_cross_val_score_mean_probe_learns(shift3):
    _, X_ragged, y = shift3
    scores = cross_val_score(MeanProbeClassifier(), X_ragged, y, cv=3)
    assert scores.mean() > 0.7  # chance is 1/3


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_cross_val_predict_proba(name, shift3):
    X_list, X_ragged, y = shift3
    est = ESTIMATORS[name]()
    cv = StratifiedKFold(3)
    P = cross_val_predict(est, X_ragged, y, cv=cv, method="predict_proba")
    assert P.shape == (len(y), 3)
    assert P.dtype == np.float64
    assert np.all(np.isfinite(P))
    assert np.all((P >= 0) & (P <= 1))
    assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # same answer from a list of arrays
    assert_array_equal(
        P, cross_val_predict(est, X_list, y, cv=cv, method="predict_proba")
    )
    # and the same as a hand-written loop over the folds (rows not shuffled)
    manual = np.full_like(P, np.nan)
    for train, test in cv.split(np.zeros(len(y)), y):
        fitted = clone(est).fit(X_ragged[train], y[train])
        manual[test] = fitted.predict_proba(X_ragged[test])
    assert_array_equal(P, manual)
    # predict agrees with the argmax of predict_proba
    labels = cross_val_predict(est, X_ragged, y, cv=cv)
    assert_array_equal(labels, np.argmax(P, axis=1))


# -- 3. Pipeline with ActivationScaler ----------------------------------------------
def test_pipeline_scaler_probe_on_ragged(needle):
    _, X_ragged, y = needle
    # an unscaled copy: big offsets and scales per dimension
    rng = np.random.RandomState(0)
    data = X_ragged.data * rng.uniform(0.1, 50, X_ragged.d_model).astype(np.float32)
    data += rng.uniform(-100, 100, X_ragged.d_model).astype(np.float32)
    X = RaggedArray(data, starts=X_ragged.starts, lengths=X_ragged.lengths)
    train, test = np.arange(60), np.arange(60, 80)
    Xtr, Xte = X[train], X[test]  # non-packed selections of one buffer

    pipe = Pipeline([("scale", ActivationScaler()), ("probe", _attn())]).fit(Xtr, y[train])
    # by hand: scale, then fit and predict
    scaler = ActivationScaler().fit(Xtr)
    Ztr, Zte = scaler.transform(Xtr), scaler.transform(Xte)
    assert isinstance(Ztr, RaggedArray) and isinstance(Zte, RaggedArray)
    assert_allclose(Ztr.data.mean(axis=0), 0, atol=1e-4)
    assert_allclose(Ztr.data.std(axis=0), 1, atol=1e-4)
    probe = _attn().fit(Ztr, y[train])
    assert_array_equal(pipe.predict_proba(Xte), probe.predict_proba(Zte))
    assert_array_equal(pipe.predict(Xte), probe.predict(Zte))
    # the pipeline's own steps, applied one after the other
    assert_array_equal(pipe.predict(Xte), pipe[-1].predict(pipe[0].transform(Xte)))
    assert_array_equal(pipe[0].mean_, scaler.mean_)


def test_pipeline_in_grid_search(needle):
    X_list, X_ragged, y = needle
    pipe = Pipeline([("scale", ActivationScaler()), ("probe", _attn(max_iter=20))])
    grid = {"probe__weight_decay": [0.0, 1e-2, 1.0]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=2, error_score="raise")
    search.fit(X_ragged, y)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert search.best_params_["probe__weight_decay"] in grid["probe__weight_decay"]
    best = search.best_estimator_
    assert best.named_steps["probe"].weight_decay == search.best_params_["probe__weight_decay"]
    # the refit pipeline predicts like its steps applied by hand
    assert_array_equal(
        search.predict(X_ragged),
        best[-1].predict(best[0].transform(X_ragged)),
    )
    # list input gives the same search
    search_list = GridSearchCV(pipe, grid, cv=3, n_jobs=2, error_score="raise")
    search_list.fit(X_list, y)
    assert_allclose(search_list.cv_results_["mean_test_score"], scores)


# -- 4. train_test_split keeps one buffer ------------------------------------------
def test_train_test_split_shares_buffer(needle):
    _, X, y = needle
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y,
                                          random_state=0)
    for part, labels in ((Xtr, ytr), (Xte, yte)):
        assert isinstance(part, RaggedArray)
        assert part.data is X.data
        assert np.shares_memory(part.data, X.data)
        assert len(part) == len(labels)
    assert len(Xtr) + len(Xte) == len(X)
    assert not np.shares_memory(Xtr.starts, X.starts)  # index arrays are new
    # both classes in both parts (stratify worked through RaggedArray)
    assert set(ytr) == set(yte) == {0, 1}


@HYPOTHESIS
@given(
    lengths=st.lists(st.integers(1, 6), min_size=4, max_size=30),
    test_size=st.floats(0.2, 0.8),
    seed=st.integers(0, 2**16),
    shuffle=st.booleans(),
)
def test_train_test_split_selects_the_right_texts(lengths, test_size, seed, shuffle):
    rng = np.random.RandomState(seed)
    texts = [rng.standard_normal((n, 3)) for n in lengths]
    X = RaggedArray.from_list(texts)
    ids = np.arange(len(texts))  # the labels are the texts' positions
    Xtr, Xte, itr, ite = train_test_split(X, ids, test_size=test_size,
                                          random_state=seed, shuffle=shuffle)
    assert sorted(np.concatenate([itr, ite]).tolist()) == ids.tolist()
    for part, idx in ((Xtr, itr), (Xte, ite)):
        assert isinstance(part, RaggedArray)
        assert np.shares_memory(part.data, X.data)
        assert_array_equal(part.lengths, X.lengths[idx])
        for j, i in enumerate(idx):
            assert_array_equal(part[j], texts[i])
            assert np.shares_memory(part[j], X.data)


# -- joblib workers -----------------------------------------------------------------
class RecordThreads(Callback):
    """Log torch's thread count during training into the net's history."""

    def on_epoch_end(self, net, **kwargs):
        net.history.record("torch_threads", torch.get_num_threads())


def _rendezvous(folder, rank, n, timeout=60.0):
    """Block until ``n`` tasks have started: forces them onto distinct workers."""
    open(os.path.join(folder, f"started-{rank}"), "w").close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(folder, f"started-{r}")) for r in range(n)):
            return True
        time.sleep(0.01)
    return False


def _fit_in_worker(est, X, y, folder=None, rank=0, n=1):
    met = _rendezvous(folder, rank, n) if folder is not None else True
    threads_before = torch.get_num_threads()
    est = clone(est).fit(X, y)
    return dict(
        proba=est.predict_proba(X),
        pid=os.getpid(),
        met=met,
        threads=torch.get_num_threads(),
        threads_before=threads_before,
        threads_in_fit=est.net_.history[:, "torch_threads"],
        memmap=isinstance(X.data, np.memmap) if isinstance(X, RaggedArray) else None,
    )


def test_joblib_workers_fit_bit_identical(needle, tmp_path):
    _, X, y = needle
    est = _attn(n_heads=4, callbacks=[RecordThreads()], random_state=7)
    results = Parallel(n_jobs=2)(
        delayed(_fit_in_worker)(est, X, y, str(tmp_path), rank, 2) for rank in range(2)
    )
    assert all(r["met"] for r in results)
    assert results[0]["pid"] != results[1]["pid"] != os.getpid()
    assert_array_equal(results[0]["proba"], results[1]["proba"])
    local = clone(est).fit(X, y).predict_proba(X)
    assert_array_equal(results[0]["proba"], local)
    # a different seed gives a different model: the comparison has teeth
    other = clone(est).set_params(random_state=8).fit(X, y).predict_proba(X)
    assert not np.array_equal(other, local)


def _joblib_inner_threads(n_jobs):
    """The torch threads of a loky worker: joblib sets OMP_NUM_THREADS (read by
    torch at start-up) to ``cpu_count() // n_jobs``, at least 1, unless the
    parent already has it set."""
    return int(os.environ.get("OMP_NUM_THREADS", max(cpu_count() // n_jobs, 1)))


def test_joblib_workers_do_not_oversubscribe(needle, tmp_path):
    """What holds on any host: each of the ``n_jobs`` workers runs joblib's
    share of the cores (1 on a 2-core machine, 8 on a 16-core one), and a fit
    neither raises nor resets that count."""
    _, X, y = needle
    est = _attn(max_iter=5, callbacks=[RecordThreads()])
    results = Parallel(n_jobs=2)(
        delayed(_fit_in_worker)(est, X, y, str(tmp_path), rank, 2) for rank in range(2)
    )
    assert all(r["met"] for r in results)
    assert len({r["pid"] for r in results}) == 2
    expected = _joblib_inner_threads(2)
    for r in results:
        assert r["threads_before"] == expected
        assert r["threads"] == expected
        assert r["threads_in_fit"] == [expected] * 5
    if "OMP_NUM_THREADS" not in os.environ:
        assert sum(r["threads"] for r in results) <= max(cpu_count(), 2)


@pytest.mark.parametrize("inner", [1, 2])
def test_joblib_workers_inner_max_num_threads(needle, tmp_path, inner):
    """One torch thread per worker on any core count: ask joblib for it."""
    _, X, y = needle
    est = _attn(max_iter=5, callbacks=[RecordThreads()])
    (tmp_path / str(inner)).mkdir()
    with parallel_config(backend="loky", inner_max_num_threads=inner):
        results = Parallel(n_jobs=2)(
            delayed(_fit_in_worker)(est, X, y, str(tmp_path / str(inner)), rank, 2)
            for rank in range(2)
        )
    assert all(r["met"] for r in results)
    for r in results:
        assert r["threads_before"] == r["threads"] == inner
        assert r["threads_in_fit"] == [inner] * 5


# -- 8. pickle and clone --------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::skorch.exceptions.DeviceWarning")  # see below
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_pickle_round_trip(name, shift3):
    _, X, y = shift3
    est = ESTIMATORS[name]()
    unfitted = pickle.loads(pickle.dumps(est))
    assert unfitted.get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        unfitted.predict(X)

    est.fit(X, y)
    restored = pickle.loads(pickle.dumps(est))
    assert_array_equal(restored.predict_proba(X), est.predict_proba(X))
    assert_array_equal(restored.decision_function(X), est.decision_function(X))
    assert_array_equal(restored.classes_, est.classes_)
    assert restored.n_iter_ == est.n_iter_
    assert restored.n_features_in_ == est.n_features_in_
    # a restored estimator can be refitted and gives the same model again
    assert_array_equal(restored.fit(X, y).predict_proba(X), est.predict_proba(X))


@pytest.mark.parametrize("name", ["attention", "mean"])
def test_unpickling_fitted_probe_is_silent(name, shift3):
    _, X, y = shift3
    blob = pickle.dumps(ESTIMATORS[name]().fit(X, y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pickle.loads(blob)
    assert not [w for w in caught if issubclass(w.category, DeviceWarning)]
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_clone(name, shift3):
    _, X, y = shift3
    est = ESTIMATORS[name](weight_decay=1e-3, class_weight="balanced",
                           callbacks=[RecordThreads()])
    for source in (est, clone(est).fit(X, y)):
        c = clone(source)
        assert c is not source
        assert type(c) is type(source)
        with pytest.raises(NotFittedError):
            check_is_fitted(c)
        assert not hasattr(c, "module_") and not hasattr(c, "classes_")
        params, c_params = source.get_params(), c.get_params()
        assert params.keys() == c_params.keys()
        for key in params:
            if key == "callbacks":
                assert len(c_params[key]) == 1
                assert isinstance(c_params[key][0], RecordThreads)
            else:
                assert c_params[key] == params[key], key
    # a clone refits to the same model
    a = clone(est).fit(X, y).predict_proba(X)
    assert_array_equal(a, clone(clone(est).fit(X, y)).fit(X, y).predict_proba(X))


def test_ragged_array_pickle_round_trip(needle):
    _, X, _ = needle
    sub = X[[5, 1, 3]]
    back = pickle.loads(pickle.dumps(sub))
    assert_array_equal(back.lengths, sub.lengths)
    for a, b in zip(back, sub):
        assert_array_equal(a, b)


# -- 9. warm_start ---------------------------------------------------------------------
def test_warm_start_continues_from_previous_fit(needle):
    _, X, y = needle
    est = _attn(max_iter=10, warm_start=True)
    est.fit(X, y)
    module = est.module_
    first_losses = est.loss_curve_
    end_of_first = est.predict_proba(X)
    est.fit(X, y)
    second_losses = est.loss_curve_
    assert est.module_ is module
    assert len(second_losses) == 10 and est.n_iter_ == 10
    # the second fit's first step is evaluated at the first fit's final parameters
    assert_allclose(second_losses[0], log_loss(y, end_of_first), rtol=1e-5)
    assert second_losses[0] < first_losses[-1]
    # a cold fit starts over
    cold = _attn(max_iter=10).fit(X, y)
    cold_losses = cold.loss_curve_
    assert_allclose(cold_losses, first_losses)
    assert second_losses[0] < cold_losses[0]
    assert second_losses[-1] < cold_losses[-1]


def test_warm_start_mean_probe_converged(shift3):
    _, X, y = shift3
    est = MeanProbeClassifier(weight_decay=1e-2, warm_start=True).fit(X, y)
    coef, n_first = est.coef_.copy(), est.n_iter_
    est.fit(X, y)
    assert n_first > 3
    assert est.n_iter_ <= 2  # already at the optimum
    assert_allclose(est.coef_, coef, atol=1e-5)


@pytest.mark.parametrize("new_labels", ["three_classes", "renamed"])
def test_warm_start_new_classes_reinitialises(needle, new_labels):
    _, X, y = needle
    if new_labels == "three_classes":
        y2 = np.arange(len(y)) % 3
    else:
        y2 = np.where(y == 1, "b", "a")  # same number of classes, new labels
    est = _attn(max_iter=10, warm_start=True).fit(X, y)
    old = est.module_
    est.fit(X, y2)
    assert est.module_ is not old
    assert_array_equal(est.classes_, np.unique(y2))
    cold = _attn(max_iter=10).fit(X, y2)
    assert_array_equal(est.predict_proba(X), cold.predict_proba(X))
    assert_allclose(est.loss_curve_, cold.loss_curve_)


@pytest.mark.parametrize("name", ["attention", "mean"])
def test_warm_start_new_d_model_reinitialises(name):
    X8, y = _task("needle", n_texts=40, d_model=8)
    X16, _ = _task("needle", n_texts=40, d_model=16)
    est = ESTIMATORS[name](warm_start=True).fit(X8, y)
    est.fit(X16, y)
    assert est.n_features_in_ == 16
    cold = ESTIMATORS[name]().fit(X16, y)
    assert_allclose(est.predict_proba(X16), cold.predict_proba(X16))


# -- 10. class_weight ------------------------------------------------------------------
def _imbalanced(dtype):
    X, y = _task("shift", n_texts=90, n_classes=3, seed=2, dtype=dtype)
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:12],
                 np.flatnonzero(y == 2)[:5]]
    return RaggedArray.from_list(X)[keep], y[keep]


@pytest.mark.parametrize("name", ["mean", "last"])
def test_class_weight_balanced_equals_sample_weight_pooled(name):
    X, y = _imbalanced(np.float64)
    sw = compute_sample_weight("balanced", y)
    assert len(np.unique(sw)) == 3
    a = ESTIMATORS[name](class_weight="balanced", weight_decay=1e-3).fit(X, y)
    b = ESTIMATORS[name](weight_decay=1e-3).fit(X, y, sample_weight=sw)
    plain = ESTIMATORS[name](weight_decay=1e-3).fit(X, y)
    assert_allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-10)
    assert_allclose(a.intercept_, b.intercept_, rtol=1e-10, atol=1e-10)
    assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-10, atol=1e-12)
    # the weighting changes the model
    assert np.abs(plain.coef_ - a.coef_).max() > 1e-3


def test_class_weight_balanced_equals_sample_weight_attention():
    X, y = _imbalanced(np.float64)
    assert X.dtype == np.float64
    sw = compute_sample_weight("balanced", y)
    a = _attn(class_weight="balanced").fit(X, y)
    b = _attn().fit(X, y, sample_weight=sw)
    plain = _attn().fit(X, y)
    assert a.module_.bias.dtype == torch.float64
    assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-9, atol=1e-10)
    assert_allclose(a.loss_curve_, b.loss_curve_,
                    rtol=1e-9)
    assert np.abs(plain.predict_proba(X) - a.predict_proba(X)).max() > 1e-3


def test_class_weight_dict_equals_sample_weight_for_0_to_k_labels():
    X, y = _imbalanced(np.float64)
    cw = {0: 1.0, 1: 3.0, 2: 7.0}
    a = MeanProbeClassifier(class_weight=cw, weight_decay=1e-3).fit(X, y)
    b = MeanProbeClassifier(weight_decay=1e-3).fit(
        X, y, sample_weight=np.array([cw[v] for v in y]))
    assert_allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-10)


def test_class_weight_dict_keyed_by_original_int_labels():
    X, y = _imbalanced(np.float64)
    keep = np.flatnonzero(y < 2)
    X, y = X[keep], y[keep] + 1  # labels 1 and 2
    cw = {0: 100.0, 1: 1.0, 2: 10.0}
    a = MeanProbeClassifier(class_weight=cw, weight_decay=1e-3).fit(X, y)
    b = MeanProbeClassifier(weight_decay=1e-3).fit(
        X, y, sample_weight=np.array([cw[v] for v in y]))
    assert_allclose(a.coef_, b.coef_, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["attention", "mean"])
def test_class_weight_dict_with_string_labels(name):
    X, y = _imbalanced(np.float64)
    names = np.array(["cat", "dog", "eel"])
    cw = {"cat": 1.0, "dog": 3.0, "eel": 7.0}
    a = ESTIMATORS[name](class_weight=cw).fit(X, names[y])
    b = ESTIMATORS[name]().fit(X, names[y], sample_weight=np.array([cw[v] for v in names[y]]))
    assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-8, atol=1e-10)


# -- 11. string labels --------------------------------------------------------------
@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_string_labels(name, n_classes, shift3):
    _, X, y_int = shift3
    if n_classes == 2:
        keep = np.flatnonzero(y_int < 2)
        X, y_int = X[keep], y_int[keep]
    # labels named out of sorted order: 0 -> "eel", 1 -> "cat", 2 -> "dog"
    names = np.array(["eel", "cat", "dog"])[:n_classes]
    y = names[y_int]
    est = ESTIMATORS[name]().fit(X, y)
    assert_array_equal(est.classes_, np.sort(names))
    pred = est.predict(X)
    assert pred.dtype.kind == "U"
    assert set(pred) <= set(names)
    P = est.predict_proba(X)
    assert P.shape == (len(y), n_classes)
    assert_array_equal(pred, est.classes_[np.argmax(P, axis=1)])
    assert est.score(X, y) > 1.0 / n_classes
    # the same model as with integer labels encoded in classes_ order
    y_sorted_codes = np.searchsorted(est.classes_, y)
    ref = ESTIMATORS[name]().fit(X, y_sorted_codes)
    assert_array_equal(P, ref.predict_proba(X))
    # and through cross-validation
    P_cv = cross_val_predict(ESTIMATORS[name](), X, y, cv=3, method="predict_proba")
    assert P_cv.shape == (len(y), n_classes)
    assert_allclose(P_cv.sum(axis=1), 1.0)


# -- 12. minibatches ----------------------------------------------------------------------
@HYPOTHESIS
@given(batch_size=st.integers(1, 30), max_iter=st.integers(1, 12))
def test_minibatch_n_iter_and_determinism(batch_size, max_iter):
    X, y = _task("needle", n_texts=24)
    make = lambda seed: _attn(max_iter=max_iter, batch_size=batch_size,  # noqa: E731
                              random_state=seed)
    a = make(3).fit(X, y)
    assert a.n_iter_ == max_iter
    # one loss per epoch (a pass over the texts, the last one cut short)
    assert len(a.loss_curve_) == -(-max_iter // -(-24 // batch_size))
    b = make(3).fit(X, y)
    assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    if batch_size >= len(y):
        full = _attn(max_iter=max_iter, batch_size=None, random_state=3).fit(X, y)
        assert_array_equal(a.predict_proba(X), full.predict_proba(X))


def test_minibatch_order_depends_on_random_state():
    X, y = _task("needle", n_texts=40)
    a = _attn(max_iter=12, batch_size=8, random_state=0).fit(X, y)
    assert a.n_iter_ == 12
    # same initial values, different minibatch order: change only the
    # TrainingSet seed by warm-starting from the same module state
    ref = _attn(max_iter=1, batch_size=8, random_state=0, warm_start=True).fit(X, y)
    state = {k: v.clone() for k, v in ref.module_.state_dict().items()}
    runs = []
    for seed in (1, 2, 1):
        ref.module_.load_state_dict(state)
        ref.set_params(max_iter=12, random_state=seed).fit(X, y)
        runs.append(ref.predict_proba(X))
    assert_array_equal(runs[0], runs[2])
    assert not np.array_equal(runs[0], runs[1])


# -- 7. memory-mapped RaggedArray in workers ----------------------------------------
def _fit_pipeline_in_worker(X, y):
    pipe = Pipeline([("scale", ActivationScaler()), ("probe", _attn(max_iter=10))])
    pipe.fit(X, y)
    return dict(
        memmap=isinstance(X.data, np.memmap),
        writeable=X.data.flags.writeable,
        proba=pipe.predict_proba(X),
        scaled_mean=pipe[0].mean_,
    )


def test_joblib_memmaps_ragged_buffer(needle):
    _, X, y = needle
    assert X.data.nbytes > 4 * MAX_NBYTES
    results = Parallel(n_jobs=2, max_nbytes=MAX_NBYTES, mmap_mode="r")(
        delayed(_fit_pipeline_in_worker)(X[idx], y[idx])
        for idx in (np.arange(0, 60), np.arange(20, 80))
    )
    for r, idx in zip(results, (np.arange(0, 60), np.arange(20, 80))):
        assert r["memmap"], "the token buffer was pickled, not memory-mapped"
        assert not r["writeable"]
        local = _fit_pipeline_in_worker(X[idx], y[idx])
        assert not local["memmap"]
        assert_array_equal(r["scaled_mean"], local["scaled_mean"])
        assert_array_equal(r["proba"], local["proba"])
