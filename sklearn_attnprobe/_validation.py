"""Input validation: every accepted form of X becomes a ragged *text source*.

Accepted forms of ``X`` (one entry per text):

* a list / tuple / 1-D object array of 2-D ``(T_i, d_model)`` arrays;
* a :class:`~sklearn_attnprobe.RaggedArray`;
* a 3-D array ``(n_texts, T, d_model)`` (all texts of length ``T``);
* a pandas Series (or a one-column DataFrame, e.g. ``df[["acts"]]``) whose
  cells are the per-text arrays; its values are taken in row order, the index
  is ignored;
* a 2-D array-like ``(n_texts, d_model)`` (texts of one token). This form goes
  through :func:`sklearn.utils.validation.validate_data`, so DataFrames,
  feature names and scikit-learn's error messages work as for any estimator.

The result is either a :class:`RaggedArray` (zero-copy views for the array
forms) or a :class:`TextList` (the caller's arrays, unconcatenated), so a fit
never holds a concatenated copy *and* its packed working copy.
"""

import numbers

import numpy as np
from sklearn.utils.validation import check_array, validate_data

from ._ragged import RaggedArray

FLOAT_DTYPES = (np.float64, np.float32, np.float16)


class TextList:
    """The caller's list of ``(T_i, d_model)`` arrays, validated, not copied."""

    def __init__(self, arrays, dtype):
        self.arrays = arrays
        self.lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.d_model = arrays[0].shape[1]
        self.dtype = np.dtype(dtype)

    def __len__(self):
        return len(self.arrays)

    @property
    def n_tokens(self):
        return int(self.lengths.sum())

    def __getitem__(self, key):
        if isinstance(key, numbers.Integral):
            return self.arrays[key]
        idx = np.arange(len(self))[key]
        return TextList([self.arrays[i] for i in idx], self.dtype)

    def __iter__(self):
        return iter(self.arrays)


def _float_dtype(dtype, where):
    """Floating dtypes are kept; other real numbers become float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if dtype.itemsize > 8:
            raise ValueError(f"{where} has dtype {dtype}; use float16/32/64")
        return dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {where} has dtype {dtype}")
    raise TypeError(
        f"{where} has dtype {dtype}; activations must be real numbers "
        "(float16, float32 or float64)"
    )


def _check_nonempty_texts(lengths):
    if len(lengths) == 0:
        raise ValueError("X is empty: it holds 0 texts; at least one is required")
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(
            f"text {int(empty[0])} has no tokens ({empty.size} empty text(s) in "
            "total); every text needs at least one token"
        )


def _text_list(X):
    arrays = []
    d_model = None
    for i, a in enumerate(X):
        if hasattr(a, "detach"):  # torch tensor
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(
                f"X[{i}] has {a.ndim} dimension(s) (shape {a.shape}); each text "
                "must be a 2-D array of shape (n_tokens, d_model). Pass one "
                "vector per text as a 2-D array of shape (n_texts, d_model)."
            )
        if d_model is None:
            d_model = a.shape[1]
        elif a.shape[1] != d_model:
            raise ValueError(
                f"X[{i}] has d_model={a.shape[1]} but X[0] has d_model={d_model}; "
                "all texts must share d_model"
            )
        arrays.append(a)
    if not arrays:
        raise ValueError("X is empty: it holds 0 texts; at least one is required")
    if d_model == 0:
        raise ValueError("X has d_model=0; at least one feature is required")
    dtype = np.result_type(*[a.dtype for a in arrays])
    dtype = _float_dtype(dtype, "X")
    texts = TextList(arrays, dtype)
    _check_nonempty_texts(texts.lengths)
    return texts


def _is_array_cell(value):
    return hasattr(value, "shape") and hasattr(value, "dtype") or isinstance(
        value, (list, tuple))


def unwrap_pandas(X):
    """A Series, or a one-column DataFrame, of per-text arrays -> a list of them.

    Anything else (a numeric DataFrame is the 2-D form, with feature names) is
    returned as is.
    """
    if not hasattr(X, "iloc") or not hasattr(X, "dtypes"):
        return X
    if getattr(X, "ndim", None) == 2:
        if X.shape[1] != 1 or X.shape[0] == 0 or X.dtypes.iloc[0] != object:
            return X
        X = X.iloc[:, 0]
    if getattr(X, "ndim", None) != 1 or X.dtype != object:
        return X
    values = list(X.to_numpy())
    if values and all(_is_array_cell(v) for v in values):
        return values
    return X


def as_text_source(X):
    """Convert any accepted form of X to a ``RaggedArray`` or ``TextList``.

    Returns ``(source, is_2d)``; ``is_2d`` marks the ``(n_texts, d_model)``
    form, which callers validate through scikit-learn instead.
    """
    X = unwrap_pandas(X)
    if isinstance(X, RaggedArray):
        _float_dtype(X.dtype, "X")
        if X.d_model == 0:
            raise ValueError("X has d_model=0; at least one feature is required")
        _check_nonempty_texts(X.lengths)
        return X, False
    if isinstance(X, (list, tuple)) or (
        isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1
    ):
        if len(X) and all(np.ndim(a) == 1 for a in X):
            # a nested list of vectors is scikit-learn's 2-D array-like:
            # one single-token text per row
            return None, True
        return _text_list(X), False
    if isinstance(X, np.ndarray) and X.ndim == 3:
        X = check_array(
            X, allow_nd=True, dtype=FLOAT_DTYPES, ensure_all_finite=True,
            input_name="X",
        )
        n, T, d = X.shape
        if d == 0:
            raise ValueError("X has d_model=0; at least one feature is required")
        if T == 0:
            raise ValueError("X has 0 tokens per text; every text needs a token")
        data = X.reshape(n * T, d)
        starts = np.arange(n, dtype=np.int64) * T
        return RaggedArray(data, starts=starts, lengths=np.full(n, T)), False
    if isinstance(X, np.ndarray) and X.ndim > 3:
        raise ValueError(
            f"X has {X.ndim} dimensions (shape {X.shape}); expected a list of "
            "2-D texts, a RaggedArray, or a 2-D / 3-D array"
        )
    return None, True


def validate_ragged(estimator, X, *, reset):
    """Validate X for ``estimator`` and return a text source.

    Sets (``reset=True``) or checks ``n_features_in_`` (= d_model) and
    ``feature_names_in_`` the way :func:`validate_data` does.
    """
    X = unwrap_pandas(X)
    source, is_2d = as_text_source(X)
    if is_2d:
        X2 = validate_data(
            estimator, X, reset=reset, dtype=FLOAT_DTYPES, ensure_all_finite=True,
        )
        n = X2.shape[0]
        return RaggedArray(
            X2, starts=np.arange(n, dtype=np.int64), lengths=np.ones(n, np.int64)
        )
    d_model = source.d_model
    if reset:
        estimator.n_features_in_ = d_model
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    elif d_model != estimator.n_features_in_:
        raise ValueError(
            f"X has {d_model} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input (d_model "
            "differs between fit and this call)"
        )
    return source


def validate_targets(y, n_texts):
    """Check y's length against X; return it as a 1-D array."""
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise ValueError(
            "requires y to be passed, but the target y is None"
        )
    y = column_or_1d(np.asarray(y) if not hasattr(y, "iloc") else y, warn=True)
    check_classification_targets(y)
    if y.shape[0] != n_texts:
        raise ValueError(
            f"X has {n_texts} texts but y has {y.shape[0]} labels; "
            "Found input variables with inconsistent numbers of samples"
        )
    return y
