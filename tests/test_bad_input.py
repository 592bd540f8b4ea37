"""Bad inputs must fail early with a ValueError / TypeError naming the problem.

Never a crash deep in torch, a silent pad, or a NaN prediction. The data are
tiny and the attention probe runs a handful of steps, so every fit is cheap.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sklearn_attnprobe import (
    ActivationScaler,
    AttentionProbeClassifier,
    LastTokenProbeClassifier,
    MeanProbeClassifier,
    RaggedArray,
)

N, D, T = 6, 3, 3
Y = np.array([0, 1, 0, 1, 0, 1])
FORMS = ["list", "ragged", "3d", "2d"]
CLASSIFIERS = {
    "attention": lambda **kw: AttentionProbeClassifier(
        **{"max_iter": 5, "random_state": 0, **kw}),
    "mean": lambda **kw: MeanProbeClassifier(**{"max_iter": 5, **kw}),
    "last": lambda **kw: LastTokenProbeClassifier(**{"max_iter": 5, **kw}),
}
ALL = {**CLASSIFIERS, "scaler": lambda **kw: ActivationScaler(**kw)}
BAD = (ValueError, TypeError)
NAN_MSG = r"NaN|infinity"


@pytest.fixture(params=list(CLASSIFIERS), name="make")
def _make(request):
    return CLASSIFIERS[request.param]


@pytest.fixture(params=list(ALL), name="make_any")
def _make_any(request):
    return ALL[request.param]


def fit_any(est, X, y=Y, **kw):
    """fit with y for classifiers, without for the scaler."""
    if isinstance(est, ActivationScaler):
        return est.fit(X)
    return est.fit(X, y, **kw)


def use_any(est, X):
    """predict for classifiers, transform for the scaler."""
    if isinstance(est, ActivationScaler):
        return est.transform(X)
    return est.predict(X)


def make_X(form, n=N, d=D, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if form == "list":
        return [rng.normal(size=(1 + i % T, d)).astype(dtype) for i in range(n)]
    if form == "ragged":
        return RaggedArray.from_list(make_X("list", n, d, dtype, seed))
    if form == "3d":
        return rng.normal(size=(n, T, d)).astype(dtype)
    if form == "2d":
        return rng.normal(size=(n, d)).astype(dtype)
    raise AssertionError(form)


def poison(X, form, value):
    """Copy of X with ``value`` written into text 1's first token."""
    if form == "list":
        X = [a.copy() for a in X]
        X[1][0, 0] = value
        return X
    if form == "ragged":
        data = X.data.copy()
        data[X.starts[1], 0] = value
        return RaggedArray(data, starts=X.starts, lengths=X.lengths)
    X = X.copy()
    X[(1, 0, 0) if form == "3d" else (1, 0)] = value
    return X


def as_dtype(X, form, dtype):
    if form == "list":
        return [a.astype(dtype) for a in X]
    if form == "ragged":
        return RaggedArray(X.data.astype(dtype), starts=X.starts, lengths=X.lengths)
    return X.astype(dtype)


_FITTED = {}


def fitted(name):
    """One fitted estimator per kind (on float32 ragged texts, d_model=3)."""
    if name not in _FITTED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITTED[name] = fit_any(ALL[name](), make_X("list"))
    return _FITTED[name]


@pytest.fixture(params=list(CLASSIFIERS), name="clf")
def _clf(request):
    return fitted(request.param)


@pytest.fixture(params=list(ALL), name="est")
def _est(request):
    return fitted(request.param)


# -- empty inputs ------------------------------------------------------------------
EMPTY_X = {
    "list": [],
    "tuple": (),
    "object-array": np.array([], dtype=object),
    "ragged": RaggedArray(np.zeros((0, D), np.float32), [0]),
    "ragged-selection": RaggedArray.from_list(make_X("list"))[[]],
    "3d": np.zeros((0, T, D), np.float32),
    "2d": np.zeros((0, D), np.float32),
}
# each form's own message: ours for the ragged forms, scikit-learn's
# check_array for the array forms
_OURS_EMPTY = r"X is empty: it holds 0 texts; at least one is required"
_SKLEARN_EMPTY = r"Found array with 0 sample\(s\) \(shape=\(0, .*\)\) while a minimum of 1 is required"
EMPTY_MSG = {"list": _OURS_EMPTY, "tuple": _OURS_EMPTY, "object-array": _OURS_EMPTY,
             "ragged": _OURS_EMPTY, "ragged-selection": _OURS_EMPTY,
             "3d": _SKLEARN_EMPTY, "2d": _SKLEARN_EMPTY}


@pytest.mark.parametrize("form", EMPTY_X)
def test_empty_X_at_fit(make_any, form):
    with pytest.raises(ValueError, match=EMPTY_MSG[form]):
        fit_any(make_any(), EMPTY_X[form], y=np.array([]))


@pytest.mark.parametrize("form", EMPTY_X)
def test_empty_X_at_predict(est, form):
    with pytest.raises(ValueError, match=EMPTY_MSG[form]):
        use_any(est, EMPTY_X[form])


# -- texts with zero tokens ----------------------------------------------------------
def _zero_token_forms():
    texts = make_X("list")
    with_empty = texts[:2] + [np.zeros((0, D), np.float32)] + texts[3:]
    return {
        "list": with_empty,
        "ragged": RaggedArray.from_list(with_empty),
        "3d": np.zeros((N, 0, D), np.float32),
    }


ZERO_TOKEN_MSG = {
    "list": r"text 2 has no tokens \(1 empty text\(s\) in total\)",
    "ragged": r"text 2 has no tokens \(1 empty text\(s\) in total\)",
    "3d": r"X has 0 tokens per text; every text needs a token",
}


@pytest.mark.parametrize("form", ["list", "ragged", "3d"])
def test_zero_token_text_at_fit(make_any, form):
    X = _zero_token_forms()[form]
    with pytest.raises(ValueError, match=ZERO_TOKEN_MSG[form]):
        fit_any(make_any(), X)


@pytest.mark.parametrize("form", ["list", "ragged", "3d"])
def test_zero_token_text_at_predict(est, form):
    X = _zero_token_forms()[form]
    with pytest.raises(ValueError, match=ZERO_TOKEN_MSG[form]):
        use_any(est, X)


def test_zero_token_message_names_the_text(make):
    X = _zero_token_forms()["list"]
    with pytest.raises(ValueError, match=r"text 2 has no tokens"):
        make().fit(X, Y)


# -- d_model = 0 -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "X",
    [RaggedArray(np.zeros((N, 0)), offsets=np.arange(N + 1)), np.zeros((N, 2, 0)),
     np.zeros((N, 0))],
    ids=["ragged", "3d", "2d"],
)
def test_zero_features(make_any, X):
    msg = (r"0 feature\(s\) \(shape=\(\d+, 0\)\) while a minimum of 1 is required"
           if isinstance(X, np.ndarray) and X.ndim == 2
           else r"X has d_model=0; at least one feature is required")
    with pytest.raises(ValueError, match=msg):
        fit_any(make_any(), X)


def test_zero_features_list(make_any):
    X = [np.zeros((2, 0), np.float32) for _ in range(N)]
    with pytest.raises(ValueError, match=r"X has d_model=0; at least one feature is required"):
        fit_any(make_any(), X)


# -- d_model mismatches ---------------------------------------------------------------
def test_d_model_differs_between_texts(make_any):
    X = make_X("list")
    X[4] = np.zeros((2, D + 1), np.float32)
    with pytest.raises(ValueError, match=r"X\[4\] has d_model=4 but X\[0\] has d_model=3"):
        fit_any(make_any(), X)


def test_d_model_differs_between_texts_at_predict(est):
    X = make_X("list")
    X[2] = np.zeros((2, D + 1), np.float32)
    with pytest.raises(ValueError, match=r"X\[2\] has d_model=4"):
        use_any(est, X)


@pytest.mark.parametrize("form", FORMS)
def test_d_model_differs_between_fit_and_predict(est, form):
    X = make_X(form, d=D + 1)
    with pytest.raises(ValueError, match=r"X has 4 features, but \w+ is expecting 3"):
        use_any(est, X)


@pytest.mark.parametrize("fit_form", ["2d", "3d", "ragged"])
@pytest.mark.parametrize("predict_form", ["list", "2d"])
def test_d_model_differs_across_forms(make_any, fit_form, predict_form):
    est = fit_any(make_any(), make_X(fit_form))
    with pytest.raises(ValueError, match=r"X has 5 features, but \w+ is expecting 3"):
        use_any(est, make_X(predict_form, d=5))


def test_attention_inspection_checks_d_model():
    est = fitted("attention")
    for method in (est.attention_weights, est.attention_entropy):
        with pytest.raises(ValueError, match=r"4 features.*expecting 3"):
            method(make_X("list", d=D + 1))


# -- NaN and inf -----------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("form", FORMS)
def test_non_finite_at_fit(make_any, form, value):
    X = poison(make_X(form), form, value)
    with pytest.raises(ValueError, match=NAN_MSG):
        fit_any(make_any(), X)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("form", FORMS)
def test_non_finite_at_predict(clf, form, value):
    X = poison(make_X(form), form, value)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(ValueError, match=NAN_MSG):
            method(X)


@pytest.mark.parametrize("form", ["list", "ragged"])
def test_non_finite_message_names_the_text(make, form):
    X = poison(make_X(form), form, np.nan)
    with pytest.raises(ValueError, match=r"NaN or infinity \(first in text 1\)"):
        make().fit(X, Y)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_non_finite_other_dtypes(make_any, dtype):
    X = poison(make_X("list", dtype=dtype), "list", np.nan)
    with pytest.raises(ValueError, match=NAN_MSG):
        fit_any(make_any(), X)


def test_non_finite_in_attention_inspection():
    est = fitted("attention")
    X = poison(make_X("list"), "list", np.nan)
    for method in (est.attention_weights, est.attention_entropy):
        with pytest.raises(ValueError, match=NAN_MSG):
            method(X)


@pytest.mark.parametrize("form", ["3d", "2d"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_scaler_non_finite_at_transform_array_forms(form, value):
    X = poison(make_X(form), form, value)
    with pytest.raises(ValueError, match=NAN_MSG):
        fitted("scaler").transform(X)


@pytest.mark.parametrize("form", ["list", "ragged"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_scaler_non_finite_at_transform_ragged_forms(form, value):
    X = poison(make_X(form), form, value)
    with pytest.raises(ValueError, match=NAN_MSG):
        fitted("scaler").transform(X)


def test_nan_outside_the_referenced_tokens_is_ignored(make_any):
    """A selection never reads the unused part of the buffer."""
    X = RaggedArray.from_list(make_X("list") + [np.full((2, D), np.nan, np.float32)])
    sel = X[:N]
    est = fit_any(make_any(), sel)
    out = use_any(est, sel)
    if isinstance(est, ActivationScaler):
        assert np.isfinite(out.data).all()
    else:
        assert np.isfinite(est.predict_proba(sel)).all()


# -- values too large for float32 ------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_float64_too_large_for_float32_compute_at_fit(make, form):
    X = poison(make_X(form, dtype=np.float64), form, 1e300)
    with pytest.raises(ValueError, match=r"too large for torch\.float32"):
        make(compute_dtype="float32").fit(X, Y)


@pytest.mark.parametrize("form", FORMS)
def test_float64_too_large_for_float32_model_at_predict(clf, form):
    # the fitted probes compute in float32 (fit on float32 texts)
    X = poison(make_X(form, dtype=np.float64), form, 1e300)
    with pytest.raises(ValueError, match=r"too large for torch\.float32"):
        clf.predict_proba(X)


def test_mean_pool_overflow_is_not_a_nan_prediction():
    X = np.full((2, 4, D), 3e38, np.float32)
    est = fitted("mean")
    try:
        proba = est.predict_proba(X)
    except ValueError:
        return
    assert np.isfinite(proba).all()


@pytest.mark.parametrize(
    "name, dtype, scale",
    [("attention", np.float32, 1e38), ("mean", np.float32, 1e38),
     ("attention", np.float64, 1e300)],
)
def test_huge_finite_activations_do_not_give_nan_predictions(name, dtype, scale):
    rng = np.random.default_rng(0)
    X = (np.clip(rng.normal(size=(N, 4, D)), -2, 2) * scale).astype(dtype)
    assert np.isfinite(X).all()
    try:
        est = CLASSIFIERS[name]().fit(X, Y)
        proba = est.predict_proba(X)
    except ValueError:
        return
    assert np.isfinite(proba).all()


# -- wrong shapes and kinds of entries ---------------------------------------------------
def test_1d_entry_in_list_of_texts(make_any):
    X = make_X("list")
    X[1] = np.zeros(D, np.float32)
    with pytest.raises(ValueError, match=r"X\[1\] has 1 dimension.*2-D array"):
        fit_any(make_any(), X)


def test_scalar_entry_in_list_of_texts(make_any):
    X = make_X("list")
    X[3] = 1.0
    with pytest.raises(ValueError, match=r"X\[3\] has 0 dimension"):
        fit_any(make_any(), X)


def test_1d_entry_at_predict(est):
    X = make_X("list")
    X[2] = np.zeros(D, np.float32)
    with pytest.raises(ValueError, match=r"X\[2\] has 1 dimension"):
        use_any(est, X)


def test_3d_entry_in_list(make_any):
    X = make_X("list")
    X[2] = np.zeros((1, 2, D), np.float32)
    with pytest.raises(ValueError, match=r"X\[2\] has 3 dimension.*2-D array"):
        fit_any(make_any(), X)


def test_4d_array(make_any):
    X = np.zeros((N, 2, 2, D), np.float32)
    with pytest.raises(ValueError, match=r"X has 4 dimensions"):
        fit_any(make_any(), X)


def test_4d_array_at_predict(est):
    with pytest.raises(ValueError, match=r"X has 4 dimensions"):
        use_any(est, np.zeros((2, 2, 2, D), np.float32))


def test_1d_array(make_any):
    with pytest.raises(ValueError, match=r"2D array"):
        fit_any(make_any(), np.zeros(N, np.float32))


def test_ragged_list_of_vectors(make_any):
    X = [np.zeros(D), np.zeros(D + 1)] * 3
    with pytest.raises(ValueError, match=r"inhomogeneous"):
        fit_any(make_any(), X)


@pytest.mark.parametrize("form", FORMS)
def test_complex_data(make_any, form):
    X = as_dtype(make_X(form), form, np.complex128)
    with pytest.raises(BAD, match=r"[Cc]omplex"):
        fit_any(make_any(), X)


@pytest.mark.parametrize("form", FORMS)
def test_complex_data_at_predict(est, form):
    X = as_dtype(make_X(form), form, np.complex64)
    with pytest.raises(BAD, match=r"[Cc]omplex"):
        use_any(est, X)


STRING_MSG = r"real numbers|string|dtype"


@pytest.mark.parametrize("dtype", ["U3", object])
@pytest.mark.parametrize("form", FORMS)
def test_string_or_object_data(make_any, form, dtype):
    X = as_dtype(make_X(form), form, np.float32)
    if form == "list":
        X = [np.full(a.shape, "abc").astype(dtype) for a in X]
    elif form == "ragged":
        X = RaggedArray(np.full(X.data.shape, "abc").astype(dtype),
                        starts=X.starts, lengths=X.lengths)
    else:
        X = np.full(X.shape, "abc").astype(dtype)
    with pytest.raises(BAD, match=STRING_MSG):
        fit_any(make_any(), X)


def test_string_text_mixed_into_float_texts(make_any):
    X = make_X("list")
    X[1] = np.full((2, D), "abc")
    with pytest.raises(TypeError, match=STRING_MSG):
        fit_any(make_any(), X)


def test_string_data_at_predict(est):
    X = [np.full((2, D), "abc")]
    with pytest.raises(TypeError, match=r"real numbers"):
        use_any(est, X)


def test_numeric_object_texts_are_rejected_with_a_clear_message(make):
    X = [a.astype(object) for a in make_X("list")]
    with pytest.raises(TypeError, match=r"dtype object.*real numbers"):
        make().fit(X, Y)


# -- targets -------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_y_with_one_class(make, form):
    with pytest.raises(ValueError, match=r"only 1 class.*at least 2 classes"):
        make().fit(make_X(form), np.zeros(N, int))


def test_y_with_one_class_string_labels(make):
    with pytest.raises(ValueError, match=r"only 1 class \(.*'a'.*\)"):
        make().fit(make_X("list"), np.array(["a"] * N))


@pytest.mark.parametrize("n_y", [N - 1, N + 1])
@pytest.mark.parametrize("form", FORMS)
def test_len_X_differs_from_len_y(make, form, n_y):
    y = np.arange(n_y) % 2
    with pytest.raises(ValueError, match=rf"{N} texts but y has {n_y} labels|inconsistent"):
        make().fit(make_X(form), y)


def test_y_none(make):
    with pytest.raises(ValueError, match=r"requires y"):
        make().fit(make_X("list"), None)


def test_y_continuous(make):
    with pytest.raises(ValueError, match=r"Unknown label type"):
        make().fit(make_X("list"), np.linspace(0, 1, N))


def test_y_nan(make):
    y = Y.astype(float)
    y[2] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN"):
        make().fit(make_X("list"), y)


def test_y_2d(make):
    with pytest.raises(ValueError, match=r"1d array"):
        make().fit(make_X("list"), np.zeros((N, 2)))


# -- parameters --------------------------------------------------------------------------
def test_attention_unknown_position():
    with pytest.raises(ValueError, match=r"'position' parameter"):
        AttentionProbeClassifier(position="middle").fit(make_X("list"), Y)


@pytest.mark.parametrize("n_heads", [0, -1, 1.5])
def test_attention_bad_n_heads(n_heads):
    with pytest.raises(ValueError, match=r"'n_heads' parameter"):
        AttentionProbeClassifier(n_heads=n_heads).fit(make_X("list"), Y)


@pytest.mark.parametrize(
    "param, value",
    [("weight_decay", -0.1), ("learning_rate", 0.0), ("max_iter", 0),
     ("batch_size", 0), ("compute_dtype", "int8"), ("class_weight", "even"),
     ("device", 3)],
)
def test_bad_common_parameter(make, param, value):
    with pytest.raises(ValueError, match=rf"'{param}' parameter"):
        make(**{param: value}).fit(make_X("list"), Y)


@pytest.mark.parametrize("param, value", [("solver", "sgd"), ("tol", 0.0)])
@pytest.mark.parametrize("name", ["mean", "last"])
def test_bad_pooled_parameter(name, param, value):
    with pytest.raises(ValueError, match=rf"'{param}' parameter"):
        CLASSIFIERS[name](**{param: value}).fit(make_X("list"), Y)


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_scaler_bad_clip(clip):
    with pytest.raises(ValueError, match=r"'clip' parameter"):
        ActivationScaler(clip=clip).fit(make_X("list"))


@pytest.mark.parametrize("device", ["foo", "cpu:x", "gpu"])
def test_invalid_device_string(make, device):
    with pytest.raises(ValueError, match=r"invalid device"):
        make(device=device).fit(make_X("list"), Y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_unavailable(make, device):
    with pytest.raises(ValueError, match=r"CUDA is not available"):
        make(device=device).fit(make_X("list"), Y)


# -- sample weights --------------------------------------------------------------------------
def test_negative_sample_weight(make):
    w = np.ones(N)
    w[2] = -1.0
    with pytest.raises(ValueError, match=r"[Nn]egative values.*sample_weight"):
        make().fit(make_X("list"), Y, sample_weight=w)


@pytest.mark.parametrize("n_w", [N - 1, N + 2])
def test_sample_weight_wrong_length(make, n_w):
    with pytest.raises(ValueError, match=rf"sample_weight.shape == \({n_w},\), expected \({N},\)"):
        make().fit(make_X("list"), Y, sample_weight=np.ones(n_w))


def test_sample_weight_nan(make):
    w = np.ones(N)
    w[0] = np.nan
    with pytest.raises(ValueError, match=r"sample_weight contains NaN"):
        make().fit(make_X("list"), Y, sample_weight=w)


def test_sample_weight_all_zero(make):
    with pytest.raises(ValueError, match=r"non-zero"):
        make().fit(make_X("list"), Y, sample_weight=np.zeros(N))


def test_sample_weight_leaves_one_class(make):
    w = (Y == 1).astype(float)
    with pytest.raises(ValueError, match=r"only one class has non-zero sample weight"):
        make().fit(make_X("list"), Y, sample_weight=w)


# -- not fitted -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["predict", "predict_proba", "predict_log_proba", "decision_function"]
)
def test_not_fitted(make, method):
    with pytest.raises(NotFittedError, match=r"not fitted"):
        getattr(make(), method)(make_X("list"))


@pytest.mark.parametrize("method", ["attention_weights", "attention_entropy"])
def test_attention_inspection_not_fitted(method):
    with pytest.raises(NotFittedError, match=r"not fitted"):
        getattr(CLASSIFIERS["attention"](), method)(make_X("list"))


def test_scaler_not_fitted():
    with pytest.raises(NotFittedError, match=r"not fitted"):
        ActivationScaler().transform(make_X("list"))


def test_not_fitted_error_is_a_value_error():
    assert issubclass(NotFittedError, ValueError)


# -- accepted forms that look odd but are valid ---------------------------------------------
@pytest.mark.parametrize("as_python", [False, True], ids=["arrays", "python-lists"])
def test_list_of_vectors_is_one_token_texts(make, as_python):
    rng = np.random.default_rng(1)
    M = rng.normal(size=(N, D))
    vectors = [row.tolist() if as_python else row for row in M]
    est = make().fit(vectors, Y)
    assert est.n_features_in_ == D
    proba = est.predict_proba(vectors)
    assert proba.shape == (N, 2) and np.isfinite(proba).all()
    # the same data as a 2-D array, a list of (1, d) texts and a RaggedArray
    np.testing.assert_allclose(est.predict_proba(M), proba)
    np.testing.assert_allclose(est.predict_proba([row[None, :] for row in M]), proba)
    np.testing.assert_allclose(
        est.predict_proba(RaggedArray(M, offsets=np.arange(N + 1))), proba
    )


def test_list_of_vectors_at_predict_after_ragged_fit(clf):
    vectors = [np.ones(D, np.float32), np.zeros(D, np.float32)]
    proba = clf.predict_proba(vectors)
    assert proba.shape == (2, 2) and np.isfinite(proba).all()
    np.testing.assert_allclose(
        proba, clf.predict_proba([v[None, :] for v in vectors]), rtol=1e-6
    )


def test_scaler_list_of_vectors():
    M = np.random.default_rng(2).normal(size=(N, D))
    out = ActivationScaler().fit([row for row in M]).transform([row for row in M])
    np.testing.assert_allclose(np.asarray(out).mean(axis=0), 0.0, atol=1e-12)


# -- pandas: a Series / DataFrame column of per-text arrays ----------------------------
def test_pandas_series_of_texts_just_works(make_any):
    pd = pytest.importorskip("pandas")
    texts = make_X("list")
    expected = use_any(fit_any(make_any(), texts), texts)
    series = pd.Series(texts, index=np.arange(N) * 10 + 3)  # the index is ignored
    est = fit_any(make_any(), series, y=pd.Series(Y))
    assert est.n_features_in_ == D
    got = use_any(est, series)
    if isinstance(est, ActivationScaler):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e)
    else:
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(est.predict_proba(series), est.predict_proba(texts))


def test_dataframe_column_of_texts(make):
    pd = pytest.importorskip("pandas")
    texts = make_X("list")
    df = pd.DataFrame({"acts": texts, "label": Y})
    est = make().fit(df["acts"], df["label"])
    expected = make().fit(texts, Y).predict_proba(texts)
    np.testing.assert_allclose(est.predict_proba(df["acts"]), expected)
    np.testing.assert_allclose(est.predict_proba(df[["acts"]]), expected)  # one column
    assert not hasattr(est, "feature_names_in_")


def test_pandas_series_of_vectors_is_one_token_texts(make):
    pd = pytest.importorskip("pandas")
    M = np.random.default_rng(3).normal(size=(N, D))
    est = make().fit(pd.Series(list(M)), Y)
    np.testing.assert_allclose(est.predict_proba(pd.Series(list(M))), est.predict_proba(M))


def test_pandas_series_of_texts_with_a_bad_text(make):
    pd = pytest.importorskip("pandas")
    texts = make_X("list")
    texts[4] = np.zeros((2, D + 1), np.float32)
    with pytest.raises(ValueError, match=r"X\[4\] has d_model=4 but X\[0\] has d_model=3"):
        make().fit(pd.Series(texts), Y)


def test_numeric_series_is_still_a_1d_array(make):
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match=r"Expected a 2-dimensional container but got"):
        make().fit(pd.Series(np.zeros(N)), Y)
