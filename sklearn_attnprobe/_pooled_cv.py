"""Cross-validated pooled probes: pool once, then a warm-started L2 path."""

from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ._numerics import parameter_dtype, resolve_device
from ._cv_base import _BaseProbeCV
from ._modules import LinearProbeModule
from ._packing import PackedBatch
from ._pooled import LastTokenProbeClassifier, MeanProbeClassifier, pool_features
from ._training import TrainingSet, fit_module


class _PooledProbeCV(_BaseProbeCV):
    _parameter_constraints = {
        **{k: v for k, v in _BaseProbeCV._parameter_constraints.items()
           if k not in ("learning_rate", "batch_size", "random_state")},
        "tol": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, weight_decays=(0.0, 1e-3, 1e-2, 1e-1), cv=5, scoring=None,
                 refit=True, max_iter=2000, tol=1e-6, class_weight=None, device="cpu",
                 compute_dtype="auto", callbacks=None, verbose=0):
        self.weight_decays = weight_decays
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.device = device
        self.compute_dtype = compute_dtype
        self.callbacks = callbacks
        self.verbose = verbose

    def _candidate_logits(self, source, y_enc, W, wds, n_outputs, held_out=None):
        device = resolve_device(self.device)
        helper = self._estimator_class(**self._estimator_params())
        dtype = helper._compute_dtype(source)
        pdtype = parameter_dtype(dtype)
        feats = pool_features(source, self._estimator_class._pooling, dtype, device)
        batch = PackedBatch([], features=feats, order=np.arange(len(y_enc)))
        n, n_splits = W.shape
        logits = np.zeros((n, n_splits, len(wds), n_outputs))
        self.n_iter_ = np.zeros((n_splits, len(wds)), dtype=np.int64)
        for s in range(n_splits):
            train_set = TrainingSet(batch, y_enc, W[:, s], device=device, dtype=pdtype)
            module = LinearProbeModule(source.d_model, n_outputs, dtype=pdtype).to(device)
            # strongest penalty first: each solution warm-starts the next
            for j in np.argsort(-wds, kind="stable"):
                result = fit_module(module, train_set, solver="lbfgs", learning_rate=1.0,
                                    max_iter=self.max_iter, batch_size=None,
                                    weight_decay=float(wds[j]), tol=self.tol,
                                    callbacks=self.callbacks, verbose=self.verbose,
                                    desc=f"{type(self).__name__} fold {s}")
                self.n_iter_[s, j] = result.n_iter[0]
                with torch.no_grad():
                    logits[:, s, j] = module(batch).double().cpu().numpy()
        return logits


_POOLED_CV_PARAMS = """
    Parameters
    ----------
    weight_decays : array-like of float, default=(0.0, 1e-3, 1e-2, 1e-1)
        Candidate L2 penalties, see :class:`{probe}`.
    cv : int, cross-validation generator or iterable, default=5
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    scoring : str, callable or None, default=None
        Any scikit-learn scorer (a name such as ``"neg_log_loss"`` or
        ``"roc_auc"``, or ``scorer(estimator, X, y)``), computed on each test
        fold's texts as ``GridSearchCV`` would; None is accuracy.
    refit : bool, default=True
        Refit the best weight decay on all texts as ``best_estimator_``.
    max_iter : int, default=2000
        L-BFGS iterations per fit of the path.
    tol : float, default=1e-6
        L-BFGS gradient tolerance.
    class_weight : dict, "balanced" or None, default=None
        Computed on each fold's training texts.
    device : str or torch.device, default="cpu"
        Where pooling and fitting run.
    compute_dtype : {"auto", "float32", "float64", "bfloat16", "float16"}, default="auto"
        As in the probe.
    callbacks : list of skorch callbacks or None, default=None
        Passed to every fit.
    verbose : int, default=0
        skorch's log when positive.

    Attributes
    ----------
    cv_results_ : dict
        GridSearchCV's keys where they apply.
    best_index_ : int
        Index of the best weight decay in ``cv_results_``.
    best_params_ : dict
        ``{"weight_decay": best}``.
    best_score_ : float
        Mean CV score of the best weight decay.
    best_estimator_ : estimator
        Refitted on all texts (when ``refit=True``).
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_features_in_ : int
        ``d_model``.
    n_splits_ : int
        Number of folds.
    n_iter_ : ndarray of shape (n_splits, n_weight_decays)
        L-BFGS iterations of each fit of the paths.
    fit_time_ : float
        Seconds spent pooling and fitting the paths.

"""


class MeanProbeClassifierCV(_PooledProbeCV):
    __doc__ = (
        """Mean probe with the weight decay chosen by cross-validation.

    The texts are mean-pooled once; each fold then runs a warm-started L-BFGS
    path over ``weight_decays`` (strongest first) on the pooled features. The
    best weight decay is refitted on all texts as a :class:`MeanProbeClassifier`.
    There is no learning rate, batch size or random state: L-BFGS from zero is
    deterministic.
"""
        + _POOLED_CV_PARAMS.replace("{probe}", "MeanProbeClassifier")
        + """    See Also
    --------
    MeanProbeClassifier : The probe itself.
    AttentionProbeClassifierCV : The same for the attention probe.

    Examples
    --------
    >>> from sklearn_attnprobe import MeanProbeClassifierCV
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("shift", n_texts=150, random_state=0)
    >>> MeanProbeClassifierCV(cv=3).fit(X, y).best_score_ > 0.8
    True
"""
    )

    _estimator_class = MeanProbeClassifier


class LastTokenProbeClassifierCV(_PooledProbeCV):
    __doc__ = (
        """Last-token probe with the weight decay chosen by cross-validation.

    As :class:`MeanProbeClassifierCV`, pooling each text's last real token.
"""
        + _POOLED_CV_PARAMS.replace("{probe}", "LastTokenProbeClassifier")
        + """    See Also
    --------
    LastTokenProbeClassifier : The probe itself.
    MeanProbeClassifierCV : The same with mean pooling.

    Examples
    --------
    >>> from sklearn_attnprobe import LastTokenProbeClassifierCV
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("last", n_texts=150, random_state=0)
    >>> LastTokenProbeClassifierCV(cv=3).fit(X, y).best_score_ > 0.8
    True
"""
    )

    _estimator_class = LastTokenProbeClassifier
