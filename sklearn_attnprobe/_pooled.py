"""Pooled probes: pool each text to one vector, then logistic regression."""

from numbers import Real

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import BaseProbe
from ._numerics import parameter_dtype
from ._modules import POOLERS, LinearProbeModule
from ._packing import PackedBatch, inverse_order
from ._streaming import iter_blocks

_SHARED_DOC = """
    Parameters
    ----------
    solver : {"lbfgs", "adamw"}, default="lbfgs"
        Full-batch L-BFGS (strong Wolfe line search), as in the seed, or AdamW.
    weight_decay : float, default=0.0
        L2 penalty: the objective is the sample-weighted mean log-loss plus
        ``weight_decay / 2 * ||W||^2`` (intercept not penalised). With
        ``weight_decay > 0`` the solution equals
        :class:`~sklearn.linear_model.LogisticRegression` on the pooled
        features with ``C = 1 / (weight_decay * sum(sample_weight))``
        (``1 / (weight_decay * n_texts)`` unweighted); for a binary problem the
        probe has one logit, as logistic regression does.
    max_iter : int, default=2000
        L-BFGS iterations, or AdamW steps.
    tol : float, default=1e-6
        L-BFGS stops when the largest gradient entry is below ``tol``.
    learning_rate : float, default=1e-2
        AdamW step size (unused by L-BFGS).
    batch_size : int or None, default=None
        AdamW texts per step (L-BFGS is always full batch).
    class_weight : dict, "balanced" or None, default=None
        Multiplies each sample's weight by its class's weight, as in
        :class:`~sklearn.linear_model.LogisticRegression`.
    device : str or torch.device, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``..., or ``"auto"`` (CUDA if present).
    compute_dtype : {"auto", "float32", "float64", "bfloat16", "float16"}, default="auto"
        Dtype in which texts are read and pooled. ``"auto"`` is float64 for
        float64 input, float32 otherwise. Half precision pools in float32
        accumulators and fits the regression in float32.
    warm_start : bool, default=False
        Start from the previous fit's weights when classes and d_model match.
    random_state : int, RandomState instance or None, default=None
        Seeds the AdamW minibatch order (L-BFGS from zero is deterministic).
    callbacks : list of skorch callbacks or None, default=None
        Passed to the owned :class:`skorch.NeuralNet` (progress bars, LR
        schedules, checkpoints).
    verbose : int, default=0
        skorch's per-epoch log when positive.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_features_in_ : int
        ``d_model``.
    feature_names_in_ : ndarray of str
        Only when fitted on a 2-D DataFrame.
    coef_ : ndarray of shape (1, d_model) or (n_classes, d_model)
        Weights on the pooled features; one row for a binary problem (the
        log-odds of ``classes_[1]``), as in logistic regression.
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts (not penalised).
    module_ : LinearProbeModule
        Fitted torch module (``weight``, ``bias``).
    n_iter_ : int
        L-BFGS iterations or AdamW steps taken.
    loss_curve_ : list of float
        The objective at each L-BFGS evaluation, or after each AdamW epoch.
    net_ : skorch.NeuralNet
        Only when ``callbacks`` were given: the skorch net that ran them
        (``net_.history`` holds the losses).
"""

_SHARED_NOTES = """
    Notes
    -----
    The texts are pooled once, block by block; a fit holds the
    ``(n_texts, d_model)`` pooled features, never a padded copy of the tokens.
    L-BFGS is SciPy's L-BFGS-B on the full batch (its line search meets the
    strong Wolfe conditions), as in scikit-learn's ``LogisticRegression``;
    fits with skorch ``callbacks`` run :class:`torch.optim.LBFGS` instead.
    AdamW runs ``max_iter`` steps.
"""


def pool_features(source, pooling, dtype, device):
    """``(n_texts, d_model)`` mean- or last-token-pooled features, in source order.

    Texts are read block by block (bounded memory); half-precision blocks are
    pooled into float32 features.
    """
    pooler = POOLERS[pooling]
    feat_dtype = parameter_dtype(dtype)
    feats, order = [], []
    for block in iter_blocks(source, dtype, device):
        feats.append(pooler(block.x, block.lengths).to(feat_dtype))
        order.append(block.index)
    feats = torch.cat(feats)
    if not bool(torch.isfinite(feats).all()):
        raise ValueError(
            f"{pooling}-pooled features overflow {dtype}: the activations are too "
            "large. Scale them (e.g. ActivationScaler) or use compute_dtype='float64'."
        )
    inv = inverse_order(np.concatenate(order))
    return feats[torch.as_tensor(inv, device=feats.device)]


class _PooledProbe(BaseProbe):
    _pooling = None

    _parameter_constraints = {
        **BaseProbe._parameter_constraints,
        "solver": [StrOptions({"lbfgs", "adamw"})],
        "tol": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, solver="lbfgs", weight_decay=0.0, max_iter=2000, tol=1e-6,
                 learning_rate=1e-2, batch_size=None, class_weight=None,
                 device="cpu", compute_dtype="auto", warm_start=False,
                 random_state=None, callbacks=None, verbose=0):
        self.solver = solver
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.device = device
        self.compute_dtype = compute_dtype
        self.warm_start = warm_start
        self.random_state = random_state
        self.callbacks = callbacks
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Pool each text, then fit the logistic regression.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray, ndarray of shape (n_texts, T, d_model) or (n_texts, d_model)
            Per-token activations of each text.
        y : array-like of shape (n_texts,)
            Class labels (any type scikit-learn accepts).
        sample_weight : array-like of shape (n_texts,), default=None
            Non-negative weights.

        Returns
        -------
        self : object
            The fitted probe.
        """
        return self._fit(X, y, sample_weight)

    def _make_module(self, d_model, n_outputs, dtype, generator):
        return LinearProbeModule(d_model, n_outputs, dtype=dtype)

    def _streams(self, source):
        # pooling is already one bounded pass over the texts; the fit then
        # runs on the (n_texts, d_model) features in memory
        return False

    def _training_batch(self, source, dtype, device):
        return PackedBatch([], features=pool_features(source, self._pooling, dtype, device),
                           order=np.arange(len(source)))

    def _predict_batches(self, source, dtype, device):
        yield self._training_batch(source, dtype, device)

    @property
    def coef_(self):
        return self.module_.weight.detach().double().cpu().numpy().T

    @property
    def intercept_(self):
        return self.module_.bias.detach().double().cpu().numpy()


class MeanProbeClassifier(_PooledProbe):
    __doc__ = (
        """Mean probe: average each text's tokens, then logistic regression.
"""
        + _SHARED_DOC
        + """
    See Also
    --------
    LastTokenProbeClassifier : Last token then logistic regression.
    AttentionProbeClassifier : Learned attention pooling then a linear readout.
    MeanProbeClassifierCV : Weight decay chosen by cross-validation.
"""
        + _SHARED_NOTES
        + """
    Examples
    --------
    >>> from sklearn_attnprobe import MeanProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("shift", n_texts=200, random_state=0)
    >>> MeanProbeClassifier().fit(X, y).score(X, y) > 0.9
    True
"""
    )
    _pooling = "mean"


class LastTokenProbeClassifier(_PooledProbe):
    __doc__ = (
        """Last-token probe: take each text's last real token, then logistic regression.
"""
        + _SHARED_DOC
        + """
    See Also
    --------
    MeanProbeClassifier : Mean pooling then logistic regression.
    AttentionProbeClassifier : Learned attention pooling then a linear readout.
    LastTokenProbeClassifierCV : Weight decay chosen by cross-validation.
"""
        + _SHARED_NOTES
        + """
    Examples
    --------
    >>> from sklearn_attnprobe import LastTokenProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("last", n_texts=200, random_state=0)
    >>> LastTokenProbeClassifier().fit(X, y).score(X, y) > 0.9
    True
"""
    )
    _pooling = "last"
