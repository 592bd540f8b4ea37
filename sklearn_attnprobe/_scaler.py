"""Per-dimension standardisation of ragged activations."""

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._ragged import RaggedArray
from ._validation import TextList, validate_ragged

# Tokens per chunk when streaming statistics over a large buffer.
_CHUNK_TOKENS = 1 << 16


def _chunks(source):
    """Yield float64 ``(m, d)`` chunks covering every referenced token once."""
    if isinstance(source, TextList):
        for a in source.arrays:
            yield a.astype(np.float64, copy=False)
        return
    if source.is_packed:
        for s in range(0, source.data.shape[0], _CHUNK_TOKENS):
            yield source.data[s : s + _CHUNK_TOKENS].astype(np.float64)
        return
    rows = source.token_index()
    for s in range(0, len(rows), _CHUNK_TOKENS):
        yield np.take(source.data, rows[s : s + _CHUNK_TOKENS], axis=0).astype(np.float64)


class ActivationScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise each activation dimension over all tokens of the training texts.

    Ragged in, ragged out: a list of arrays gives a list, a
    :class:`RaggedArray` a packed :class:`RaggedArray`, a 3-D or 2-D array an
    array of the same shape. The dtype of the input is kept (float16 inputs
    are scaled in float32 chunk by chunk).

    Real activations have a few outlier dimensions with huge variance and
    attention-sink tokens (often the first) whose norm is ~100x the rest;
    without scaling, those dominate a probe's logits and its optimisation.

    Parameters
    ----------
    with_mean : bool, default=True
        Subtract the per-dimension mean over tokens.
    with_std : bool, default=True
        Divide by the per-dimension standard deviation over tokens.
    clip : float or None, default=None
        If set, clip scaled values to ``[-clip, clip]``, which tames
        attention-sink tokens without dropping them.

    Attributes
    ----------
    mean_ : ndarray of shape (d_model,)
    scale_ : ndarray of shape (d_model,)
        Standard deviation (1 where it is 0, or when ``with_std=False``).
    n_tokens_seen_ : int
        Number of tokens the statistics were computed over.
    n_features_in_ : int
        ``d_model``.

    See Also
    --------
    RaggedArray : The flat-buffer container this scaler accepts and returns.
    sklearn.preprocessing.StandardScaler : The same scaling for one vector per sample.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_attnprobe import ActivationScaler
    >>> X = [np.array([[0.0, 10.0], [2.0, 30.0]]), np.array([[4.0, 20.0]])]
    >>> Xt = ActivationScaler().fit_transform(X)
    >>> type(Xt).__name__, [x.shape for x in Xt]
    ('list', [(2, 2), (1, 2)])
    >>> np.round(np.concatenate(Xt).std(axis=0), 6)
    array([1., 1.])
    """

    _parameter_constraints = {
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
        "clip": [Interval(Real, 0, None, closed="neither"), None],
    }

    def __init__(self, *, with_mean=True, with_std=True, clip=None):
        self.with_mean = with_mean
        self.with_std = with_std
        self.clip = clip

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute per-dimension mean and standard deviation over all tokens.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray, ndarray of shape (n_texts, T, d_model) or (n_texts, d_model)
            Per-token activations; every token of every text counts once.
        y : None
            Ignored; present for pipeline compatibility.

        Returns
        -------
        self : ActivationScaler
            The fitted scaler.
        """
        source = validate_ragged(self, X, reset=True)
        d = source.d_model
        count, mean, m2 = 0, np.zeros(d), np.zeros(d)
        # non-finite input is reported below, once, instead of as numpy warnings
        with np.errstate(invalid="ignore", over="ignore"):
            for chunk in _chunks(source):
                # Chan et al.'s pairwise merge of (count, mean, M2): stable, one pass
                m = chunk.shape[0]
                c_mean = chunk.mean(axis=0)
                c_m2 = ((chunk - c_mean) ** 2).sum(axis=0)
                delta = c_mean - mean
                total = count + m
                mean = mean + delta * (m / total)
                m2 = m2 + c_m2 + delta**2 * (count * m / total)
                count = total
        if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(m2)):
            raise ValueError("X contains NaN or infinity")
        std = np.sqrt(m2 / count)
        self.mean_ = mean if self.with_mean else np.zeros(d)
        tiny = std <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
        self.scale_ = np.where(tiny, 1.0, std) if self.with_std else np.ones(d)
        self.n_tokens_seen_ = int(count)
        return self

    def _scale(self, a, out_dtype):
        work = np.float32 if out_dtype == np.float16 else out_dtype
        z = (a.astype(work, copy=False) - self.mean_.astype(work)) / self.scale_.astype(work)
        if not np.isfinite(z).all():
            raise ValueError("X contains NaN or infinity (or values too large to scale)")
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(out_dtype, copy=False)

    def transform(self, X):
        """Scale every token; the output has the input's container type.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray, ndarray of shape (n_texts, T, d_model) or (n_texts, d_model)
            Per-token activations with the ``d_model`` seen in :meth:`fit`.

        Returns
        -------
        X_scaled : list of ndarray, RaggedArray or ndarray
            ``(x - mean_) / scale_`` for every token (clipped when ``clip`` is
            set), in the input's dtype: a list (or tuple) for a list (or tuple),
            a packed RaggedArray for a RaggedArray, an array of the same shape
            for an array.
        """
        check_is_fitted(self)
        source = validate_ragged(self, X, reset=False)
        dtype = source.dtype
        if isinstance(source, TextList):
            out = [self._scale(a, dtype) for a in source.arrays]
            return tuple(out) if isinstance(X, tuple) else out
        if isinstance(X, RaggedArray):
            packed = source if source.is_packed else source.pack()
            return RaggedArray(self._scale(packed.data, dtype), packed.offsets)
        if isinstance(X, np.ndarray) and X.ndim == 3:
            return self._scale(source.data, dtype).reshape(X.shape)
        return self._scale(source.data, dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags
