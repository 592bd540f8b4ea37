"""Cross-validated probes: every (fold, weight decay) model in one pass.

``GridSearchCV`` over ``weight_decay`` with ``cv=5`` fits 20 probes, each
reading (and packing) its training texts on its own. The CV classes here pack
the texts once and train the 20 models together:

* attention probes: one :class:`StackedAttentionProbeModule` holding all
  models, trained on all texts with each model's loss masked to its fold's
  training texts, so each step reads the activations once for all models and
  the per-block GEMM is ``n_models * n_heads`` columns wide;
* pooled probes: the texts are pooled once, then each fold runs an L-BFGS
  path over the weight decays from the strongest penalty down, each fit
  warm-started from the previous solution.

With an int ``random_state`` each stacked model starts from exactly the
parameters a stand-alone estimator with that ``random_state`` would, so the
batched sweep reproduces ``GridSearchCV``'s models up to float rounding.
"""

import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.model_selection import check_cv
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import _check_sample_weight, check_is_fitted
from scipy.stats import rankdata

from ._attention import AttentionProbeClassifier
from ._base import (
    BaseProbe,
    encode_labels,
    module_logits,
    parameter_dtype,
    resolve_device,
)
from ._modules import StackedAttentionProbeModule
from ._packing import inverse_order, pack
from ._training import TrainingSet, fit_module, per_sample_log_loss
from ._validation import validate_ragged, validate_targets

_SHARED = {
    k: v for k, v in BaseProbe._parameter_constraints.items()
    if k not in ("weight_decay", "warm_start", "tol")
}


class _BaseProbeCV(ClassifierMixin, BaseEstimator):
    """Shared fit logic: folds, per-fold weights, scoring, cv_results_, refit."""

    _estimator_class = None
    _parameter_constraints = {
        **_SHARED,
        "weight_decays": ["array-like"],
        "cv": ["cv_object"],
        "scoring": [StrOptions({"accuracy", "neg_log_loss"}), None],
        "refit": ["boolean"],
    }

    def _candidate_logits(self, source, y_enc, W, wds, n_outputs):
        """``(n_texts, n_splits, n_wds, n_outputs)`` logits of every model."""
        raise NotImplementedError

    def _estimator_params(self):
        names = self._estimator_class._get_param_names()
        return {k: v for k, v in self.get_params(deep=False).items() if k in names}

    def _fold_weights(self, y, y_enc, sample_weight, splits):
        """``(n_texts, n_splits)``: sample x class weights on each training fold, 0 elsewhere."""
        n = len(y)
        sw = _check_sample_weight(sample_weight, np.empty(n), dtype=np.float64,
                                  ensure_non_negative=True)
        W = np.zeros((n, len(splits)))
        for s, (train, _) in enumerate(splits):
            w = sw[train]
            if self.class_weight is not None:
                present = np.unique(y_enc[train])
                cw = np.ones(len(self.classes_))
                cw[present] = compute_class_weight(
                    self.class_weight, classes=self.classes_[present], y=y[train])
                w = w * cw[y_enc[train]]
            if np.count_nonzero(np.bincount(y_enc[train], weights=w) > 0) < 2:
                raise ValueError(
                    f"cross-validation fold {s} trains on fewer than 2 classes "
                    "with positive weight; use fewer folds or a stratified cv"
                )
            W[train, s] = w
        return W

    def _score(self, logits, y_enc, sample_weight):
        """Validation score; weighted by sample_weight, as GridSearchCV does."""
        if self.scoring == "neg_log_loss":
            y_t = torch.as_tensor(y_enc)
            per_text = -per_sample_log_loss(torch.as_tensor(logits), y_t).numpy()
        else:
            if logits.shape[-1] == 1:
                pred = (logits[:, 0] > 0).astype(int)
            else:
                pred = logits.argmax(axis=-1)
            per_text = (pred == y_enc).astype(np.float64)
        return float(np.average(per_text, weights=sample_weight))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Cross-validate every weight decay in one batched pass, then refit.

        Parameters
        ----------
        X : texts in any form accepted by the probes (list of (T_i, d_model)
            arrays, RaggedArray, 3-D or 2-D array)
        y : array-like of shape (n_texts,)
        sample_weight : array-like of shape (n_texts,), default=None

        Returns
        -------
        self
        """
        source = validate_ragged(self, X, reset=True)
        y = validate_targets(y, len(source))
        self.classes_, y_enc = encode_labels(y)
        wds = np.asarray(self.weight_decays, dtype=np.float64).reshape(-1)
        if wds.size == 0 or not np.all(np.isfinite(wds)) or wds.min() < 0:
            raise ValueError("weight_decays must be a non-empty list of finite values >= 0")
        cv = check_cv(self.cv, y, classifier=True)
        splits = list(cv.split(np.zeros((len(y), 1)), y))
        W = self._fold_weights(y, y_enc, sample_weight, splits)
        n_outputs = 1 if len(self.classes_) == 2 else len(self.classes_)

        start = time.perf_counter()
        logits = self._candidate_logits(source, y_enc, W, wds, n_outputs)
        fit_time = time.perf_counter() - start
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        scores = np.array([
            [self._score(logits[test, s, j], y_enc[test], None if sw is None else sw[test])
             for j in range(len(wds))]
            for s, (_, test) in enumerate(splits)
        ])  # (n_splits, n_wds)
        self._set_cv_results(wds, scores, fit_time)
        if self.refit:
            est = self._estimator_class(**self._estimator_params(),
                                        weight_decay=self.best_params_["weight_decay"])
            start = time.perf_counter()
            self.best_estimator_ = est.fit(X, y, sample_weight=sample_weight)
            self.refit_time_ = time.perf_counter() - start
        return self

    def _set_cv_results(self, wds, scores, fit_time):
        n_splits, n_wds = scores.shape
        mean, std = scores.mean(axis=0), scores.std(axis=0)
        rank = rankdata(-np.round(mean, 12), method="min").astype(np.int32)
        results = {
            "mean_fit_time": np.full(n_wds, fit_time / (n_splits * n_wds)),
            "std_fit_time": np.zeros(n_wds),
            "param_weight_decay": np.ma.MaskedArray(wds, mask=False, dtype=object),
            "params": [{"weight_decay": float(w)} for w in wds],
        }
        for s in range(n_splits):
            results[f"split{s}_test_score"] = scores[s]
        results.update(mean_test_score=mean, std_test_score=std, rank_test_score=rank)
        self.cv_results_ = results
        self.best_index_ = int(np.flatnonzero(rank == 1)[0])
        self.best_params_ = results["params"][self.best_index_]
        self.best_score_ = float(mean[self.best_index_])
        self.n_splits_ = n_splits
        self.refit_time_ = None
        self.fit_time_ = fit_time

    # -- prediction through the refitted best model ---------------------------
    def _best(self):
        check_is_fitted(self)
        if not self.refit:
            raise AttributeError(f"{type(self).__name__} was fitted with refit=False; "
                                 "it has cv_results_ but no model to predict with")
        return self.best_estimator_

    def predict(self, X):
        """Labels from the model refitted with the best weight decay.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_texts,)
        """
        return self._best().predict(X)

    def predict_proba(self, X):
        """Class probabilities from the refitted best model.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_texts, n_classes)
        """
        return self._best().predict_proba(X)

    def predict_log_proba(self, X):
        """Log class probabilities from the refitted best model.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        log_proba : ndarray of shape (n_texts, n_classes)
        """
        return self._best().predict_log_proba(X)

    def decision_function(self, X):
        """Decision values from the refitted best model.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        scores : ndarray of shape (n_texts,) or (n_texts, n_classes)
        """
        return self._best().decision_function(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags


class AttentionProbeClassifierCV(_BaseProbeCV):
    """Attention probe with the weight decay chosen by batched cross-validation.

    All ``n_splits x len(weight_decays)`` models train together in one pass
    over the shared activations: one stacked module, one GEMM per block and
    step over all models' query columns, each model's loss masked to its
    fold's training texts. The best weight decay (mean CV score) is then
    refitted on all texts as an :class:`AttentionProbeClassifier`.

    Parameters
    ----------
    n_heads : int, default=1
        Attention heads of every model.
    weight_decays : array-like of float, default=(0.0, 1e-3, 1e-2, 1e-1)
        Candidate L2 penalties (see :class:`AttentionProbeClassifier`).
    cv : int, cross-validation generator or iterable, default=5
        As in :class:`~sklearn.model_selection.GridSearchCV` (an int means
        stratified k-fold).
    scoring : {"accuracy", "neg_log_loss"} or None, default=None
        None is accuracy, the probes' ``score``.
    refit : bool, default=True
        Refit the best weight decay on all texts as ``best_estimator_``.
    position : {"last", "first"} or None, default="last"
        As in :class:`AttentionProbeClassifier`.
    solver : {"adamw", "lbfgs"}, default="adamw"
        As in :class:`AttentionProbeClassifier`. With AdamW each model stops
        on its own and leaves the stacked step; L-BFGS minimises the sum of
        the models' objectives and stops when all have converged.
    learning_rate : float, default=1e-2
        AdamW step size, shared by all models.
    max_iter : int, default=500
        Most AdamW steps (L-BFGS iterations) of the batched pass and of the
        refit.
    tol : float, default=1e-4
        As in :class:`AttentionProbeClassifier`.
    n_iter_no_change : int or None, default=10
        As in :class:`AttentionProbeClassifier`, per model.
    batch_size : int or None, default=None
        Texts per step; one minibatch serves all models.
    class_weight : dict, "balanced" or None, default=None
        Computed on each fold's training texts, as GridSearchCV would.
    device : str or torch.device, default="cpu"
        As in :class:`AttentionProbeClassifier`.
    compute_dtype : {"auto", "float32", "float64", "bfloat16", "float16"}, default="auto"
        As in :class:`AttentionProbeClassifier`.
    random_state : int, RandomState instance or None, default=None
        With an int, every model starts as a stand-alone
        ``AttentionProbeClassifier(random_state=...)`` would.
    callbacks : list of skorch callbacks or None, default=None
        Applied to the batched pass and to the refit.
    verbose : int, default=0
        As in :class:`AttentionProbeClassifier`.

    Attributes
    ----------
    cv_results_ : dict
        ``GridSearchCV``'s keys where they apply: ``params``,
        ``param_weight_decay``, ``split{k}_test_score``, ``mean_test_score``,
        ``std_test_score``, ``rank_test_score``, ``mean_fit_time`` (the
        batched pass's time divided by the number of models).
    best_index_, best_params_, best_score_ : as in GridSearchCV
    best_estimator_ : AttentionProbeClassifier
        Refitted on all texts (when ``refit=True``).
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_splits_ : int
    fit_time_ : float
        Seconds spent in the batched cross-validation pass.
    refit_time_ : float
        Seconds spent refitting the best weight decay (None without refit).
    n_iter_ : ndarray of shape (n_splits, n_weight_decays)
        AdamW steps (L-BFGS iterations) each model took before it stopped.
    net_ : skorch.NeuralNet
        Only when ``callbacks`` were given: the net that trained the stacked
        models.

    See Also
    --------
    AttentionProbeClassifier : The probe itself.
    sklearn.model_selection.GridSearchCV : The same search, one fit at a time.

    Notes
    -----
    Memory: the packed working copy once (as one fit), plus the pooled states
    of all models, ``n_texts * n_models * n_heads * d_model`` values.

    Examples
    --------
    >>> from sklearn_attnprobe import AttentionProbeClassifierCV
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("needle", n_texts=150, d_model=16, random_state=0)
    >>> cv = AttentionProbeClassifierCV(n_heads=2, cv=3, max_iter=100,
    ...                                 random_state=0).fit(X, y)
    >>> sorted(cv.best_params_), len(cv.cv_results_["mean_test_score"])
    (['weight_decay'], 4)
    """

    _estimator_class = AttentionProbeClassifier
    _parameter_constraints = {
        **_BaseProbeCV._parameter_constraints,
        **{k: AttentionProbeClassifier._parameter_constraints[k]
           for k in ("n_heads", "position", "solver", "tol", "n_iter_no_change")},
    }

    def __init__(self, n_heads=1, *, weight_decays=(0.0, 1e-3, 1e-2, 1e-1), cv=5,
                 scoring=None, refit=True, position="last", solver="adamw",
                 learning_rate=1e-2, max_iter=500, tol=1e-4, n_iter_no_change=10,
                 batch_size=None, class_weight=None, device="cpu",
                 compute_dtype="auto", random_state=None, callbacks=None, verbose=0):
        self.n_heads = n_heads
        self.weight_decays = weight_decays
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.position = position
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.device = device
        self.compute_dtype = compute_dtype
        self.random_state = random_state
        self.callbacks = callbacks
        self.verbose = verbose

    def _candidate_logits(self, source, y_enc, W, wds, n_outputs):
        n_splits, n_wds = W.shape[1], len(wds)
        M = n_splits * n_wds  # model m = fold m // n_wds, weight decay m % n_wds
        device = resolve_device(self.device)
        helper = self._estimator_class(**self._estimator_params())
        dtype = helper._compute_dtype(source)
        pdtype = parameter_dtype(dtype)
        # the stand-alone estimator's seed, so each model starts as it would
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        generators = [torch.Generator().manual_seed(int(seed)) for _ in range(M)]
        module = StackedAttentionProbeModule(
            M, source.d_model, self.n_heads, n_outputs, position=self.position,
            generators=generators, dtype=pdtype).to(device)
        batch = pack(source, dtype, device)
        weights = np.repeat(W, n_wds, axis=1)  # (n, M)
        train_set = TrainingSet(batch, y_enc, weights, device=device, dtype=pdtype,
                                seed=seed)
        decays = torch.as_tensor(np.tile(wds, n_splits), dtype=pdtype, device=device)
        result = fit_module(
            module, train_set, solver=self.solver, learning_rate=self.learning_rate,
            max_iter=self.max_iter, batch_size=self.batch_size, weight_decay=decays,
            tol=self.tol, n_iter_no_change=self.n_iter_no_change,
            callbacks=self.callbacks, verbose=self.verbose,
            desc=f"{type(self).__name__} ({M} models)")
        self.n_iter_ = result.n_iter.reshape(n_splits, n_wds)
        if result.net is not None:
            self.net_ = result.net
        elif hasattr(self, "net_"):
            del self.net_
        del batch, train_set
        # the stand-alone probe's prediction batches, through the stacked module
        logits, order = module_logits(module, helper._predict_batches(source, dtype, device))
        logits = logits[inverse_order(order)]
        return logits.reshape(len(y_enc), n_splits, n_wds, n_outputs)

    def attention_weights(self, X):
        """Attention weights of the refitted best model.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        weights : list of ndarray of shape (T_i, n_heads)
            See :meth:`AttentionProbeClassifier.attention_weights`.
        """
        return self._best().attention_weights(X)

    def attention_entropy(self, X):
        """Attention entropy of the refitted best model.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        result : :class:`~sklearn.utils.Bunch`
            See :meth:`AttentionProbeClassifier.attention_entropy`.
        """
        return self._best().attention_entropy(X)
