"""What the cross-validated probes share: folds, fold weights, scoring, refit.

A CV class trains every (fold, candidate) model in one batched pass and
returns their logits on all texts; this base turns those logits into
``GridSearchCV``'s scores and results, then refits the best candidate. A
candidate is a weight decay, or, for the attention probe with ``n_heads``
searched, a (head count, weight decay) pair.
Any scikit-learn scorer works: each candidate's held-out logits are served to
it through a fitted stand-in classifier (:class:`_HeldOutLogits`).
"""

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import _check_sample_weight, check_is_fitted
from scipy.stats import rankdata

from ._base import (
    BaseProbe,
    decision_from_logits,
    encode_labels,
    labels_from_logits,
    log_proba_from_logits,
    proba_from_logits,
)
from ._persistence import ProbePersistenceMixin
from ._validation import validate_ragged, validate_targets


class _HeldOutLogits(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose outputs are one candidate's held-out logits.

    Scorers call ``predict``/``predict_proba``/``decision_function`` on the
    test fold; the answers are the batched pass's logits for those texts, in
    order, whatever X is (it is only a row placeholder).
    """

    def __init__(self, logits=None, classes=None):
        self.logits = logits
        self.classes = classes

    @property
    def classes_(self):
        return self.classes

    def decision_function(self, X):
        return decision_from_logits(self.logits)

    def predict_proba(self, X):
        return proba_from_logits(self.logits)

    def predict_log_proba(self, X):
        return log_proba_from_logits(self.logits)

    def predict(self, X):
        return labels_from_logits(self.logits, self.classes)


_SHARED = {
    k: v for k, v in BaseProbe._parameter_constraints.items()
    if k not in ("weight_decay", "warm_start", "tol")
}


class _BaseProbeCV(ProbePersistenceMixin, ClassifierMixin, BaseEstimator):
    """Shared fit logic: folds, per-fold weights, scoring, cv_results_, refit."""

    _estimator_class = None
    _parameter_constraints = {
        **_SHARED,
        "weight_decays": ["array-like"],
        "cv": ["cv_object"],
        "scoring": [str, callable, None],
        "refit": ["boolean"],
    }

    def _candidate_logits(self, source, y_enc, W, wds, n_outputs, held_out=None):
        """``(n_texts, n_splits, n_candidates, n_outputs)`` logits of every
        model, candidates in the order of :meth:`_search_grid`. ``held_out``
        ``(n_texts, n_splits)``: each split's test texts' sample weights (0
        elsewhere), for classes that watch the held-out loss while training."""
        raise NotImplementedError

    def _search_grid(self, wds):
        """The candidates' parameters, in ``cv_results_`` order: here one per
        weight decay (``ParameterGrid``'s order where a subclass searches more)."""
        return [{"weight_decay": float(w)} for w in wds]

    def _estimator_params(self):
        names = self._estimator_class._get_param_names()
        return {k: v for k, v in self.get_params(deep=False).items() if k in names}

    def _refit_params(self, index):
        """The stand-alone estimator's parameters that refit candidate
        ``index`` (of ``cv_results_``) on all texts."""
        return {**self._estimator_params(), **self.cv_results_["params"][index]}

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

    def _score(self, scorer, logits, y, sample_weight):
        """One candidate's score on one test fold, as GridSearchCV computes it."""
        held_out = _HeldOutLogits(logits, self.classes_)
        placeholder = np.zeros((len(y), 1))
        if sample_weight is None:
            return float(scorer(held_out, placeholder, y))
        return float(scorer(held_out, placeholder, y, sample_weight=sample_weight))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, groups=None):
        """Cross-validate every candidate in one batched pass, then refit.

        Parameters
        ----------
        X : texts in any form accepted by the probes (list of (T_i, d_model)
            arrays, RaggedArray, 3-D or 2-D array)
        y : array-like of shape (n_texts,)
        sample_weight : array-like of shape (n_texts,), default=None
        groups : array-like of shape (n_texts,), default=None
            Group labels for group-aware splitters (``GroupKFold``...).

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
        splits = list(cv.split(np.zeros((len(y), 1)), y, groups))
        scorer = check_scoring(self._estimator_class(), scoring=self.scoring)
        W = self._fold_weights(y, y_enc, sample_weight, splits)
        n_outputs = 1 if len(self.classes_) == 2 else len(self.classes_)

        grid = self._search_grid(wds)
        start = time.perf_counter()
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        held_out = np.zeros_like(W)
        for s, (_, test) in enumerate(splits):
            held_out[test, s] = 1.0 if sw is None else sw[test]
        logits = self._candidate_logits(source, y_enc, W, wds, n_outputs, held_out)
        fit_time = time.perf_counter() - start
        scores = np.array([
            [self._score(scorer, logits[test, s, j], y[test],
                         None if sw is None else sw[test])
             for j in range(len(grid))]
            for s, (_, test) in enumerate(splits)
        ])  # (n_splits, n_candidates)
        self._set_cv_results(grid, scores, fit_time)
        if self.refit:
            est = self._estimator_class(**self._refit_params(self.best_index_))
            start = time.perf_counter()
            self.best_estimator_ = est.fit(X, y, sample_weight=sample_weight)
            self.refit_time_ = time.perf_counter() - start
        return self

    def _set_cv_results(self, grid, scores, fit_time):
        n_splits, n_candidates = scores.shape
        mean, std = scores.mean(axis=0), scores.std(axis=0)
        rank = rankdata(-np.round(mean, 12), method="min").astype(np.int32)
        results = {
            "mean_fit_time": np.full(n_candidates, fit_time / (n_splits * n_candidates)),
            "std_fit_time": np.zeros(n_candidates),
        }
        for name in grid[0]:
            results[f"param_{name}"] = np.ma.MaskedArray(
                [p[name] for p in grid], mask=False, dtype=object)
        results["params"] = grid
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


