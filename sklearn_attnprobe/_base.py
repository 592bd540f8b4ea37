"""What the three probe estimators share: validation, targets, prediction."""

from numbers import Integral, Real

import numpy as np
import torch
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._numerics import (
    COMPUTE_DTYPES,
    flush_denormal,
    parameter_dtype,
    resolve_device,
)
from ._packing import inverse_order
from ._persistence import ProbePersistenceMixin
from ._streaming import make_training_set, should_stream
from ._training import fit_module
from ._validation import validate_ragged, validate_targets

def encode_labels(y):
    """``(classes, y_encoded)``; a classifier needs at least two classes."""
    encoder = LabelEncoder().fit(y)
    classes = encoder.classes_
    if len(classes) < 2:
        raise ValueError(
            f"y contains only 1 class ({str(classes[0])!r}); a classifier needs "
            "samples of at least 2 classes"
        )
    return classes, encoder.transform(y)


def decision_from_logits(logits):
    """``decision_function`` of ``(n, n_outputs)`` logits (one column if binary)."""
    return logits[:, 0] if logits.shape[1] == 1 else logits


def proba_from_logits(logits):
    """Class probabilities of ``(n, n_outputs)`` logits."""
    if logits.shape[1] == 1:
        p = expit(logits[:, 0])
        return np.column_stack([1.0 - p, p])
    return softmax(logits, axis=1)


def log_proba_from_logits(logits):
    """Log class probabilities, computed stably from the logits."""
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return np.column_stack([log_expit(-z), log_expit(z)])
    return log_softmax(logits, axis=1)


def labels_from_logits(logits, classes):
    """Predicted labels (elements of ``classes``) of the logits."""
    if logits.shape[1] == 1:
        return classes[(logits[:, 0] > 0).astype(int)]
    return classes[np.argmax(logits, axis=1)]


def module_logits(module, batches):
    """Float64 logits of ``module`` over ``batches``, rows back in source order.

    Returns the logits and, for error messages, the source position of each
    row before reordering.
    """
    outs, order = [], []
    module.eval()
    with torch.no_grad(), flush_denormal():
        for batch in batches:
            outs.append(module(batch).double().cpu().numpy())
            order.append(batch.order)
    logits, order = np.concatenate(outs), np.concatenate(order)
    return logits, order


def _validation_split(train_set, y_enc, fraction, seed):
    """Stratified hold-out of ``fraction`` of the training texts (packed rows)."""
    from sklearn.model_selection import train_test_split

    y_packed = train_set.y.cpu().numpy()
    rows = np.arange(len(y_packed))
    fit_rows, val_rows = train_test_split(rows, test_size=fraction, random_state=seed,
                                          stratify=y_packed)
    val_set = train_set.split(val_rows)
    if hasattr(val_set, "materialize"):
        val_set = val_set.materialize()  # streamed fit: the held-out part in memory
    return train_set.split(fit_rows), val_set


class BaseProbe(ProbePersistenceMixin, ClassifierMixin, BaseEstimator):
    """Base class of the probes; not for direct use."""

    _parameter_constraints = {
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "device": [str, torch.device],
        "compute_dtype": [StrOptions({"auto", *COMPUTE_DTYPES})],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "callbacks": [list, None],
        "verbose": ["verbose"],
    }

    # -- subclass hooks --------------------------------------------------------
    def _make_module(self, d_model, n_outputs, dtype, generator):
        raise NotImplementedError

    def _training_batch(self, source, dtype, device):
        raise NotImplementedError

    def _predict_batches(self, source, dtype, device):
        raise NotImplementedError

    def _solver(self):
        return self.solver

    def _stopping(self):
        """``(n_iter_no_change, validation_fraction)`` of this estimator."""
        return None, None

    def _configure_module(self, module):
        """Set the training options a module carries (a new or a reused one)."""

    def _module_compatible(self, module):
        return True

    def _learning_rate(self, source):
        """The AdamW step size for a fit on ``source``."""
        return self.learning_rate

    def _streams(self, source):
        """Train from ``source`` minibatch by minibatch (see ._streaming)?"""
        return should_stream(source, self.batch_size)

    # -- fitting ---------------------------------------------------------------
    def _compute_dtype(self, source):
        if self.compute_dtype == "auto":
            return torch.float64 if source.dtype == np.float64 else torch.float32
        return COMPUTE_DTYPES[self.compute_dtype]

    def _sample_weights(self, y, y_enc, sample_weight):
        n = len(y_enc)
        w = _check_sample_weight(sample_weight, np.empty(n), dtype=np.float64,
                                 ensure_non_negative=True)
        if self.class_weight is not None:
            # keyed by the user's labels, as in LogisticRegression
            cw = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
            w = w * cw[y_enc]
        per_class = np.bincount(y_enc, weights=w, minlength=len(self.classes_))
        if np.count_nonzero(per_class > 0) < 2:
            raise ValueError(
                "only one class has non-zero sample weight; a classifier needs "
                "at least 2 classes with positive weight"
            )
        return w

    def _fit(self, X, y, sample_weight=None):
        source = validate_ragged(self, X, reset=True)
        y = validate_targets(y, len(source))
        classes, y_enc = encode_labels(y)
        reuse = (
            self.warm_start
            and hasattr(self, "module_")
            and np.array_equal(getattr(self, "classes_", None), classes)
            and self.module_.d_model == source.d_model
            and self._module_compatible(self.module_)
        )
        self.classes_ = classes
        w = self._sample_weights(y, y_enc, sample_weight)
        device = resolve_device(self.device)
        dtype = self._compute_dtype(source)
        pdtype = parameter_dtype(dtype)
        n_outputs = 1 if len(classes) == 2 else len(classes)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        if reuse:
            module = self.module_.to(device=device, dtype=pdtype)
        else:
            generator = torch.Generator().manual_seed(int(seed))
            module = self._make_module(source.d_model, n_outputs, pdtype, generator)
            module = module.to(device)
        self._configure_module(module)
        # packed in memory, or read from a mapped file as it trains (._streaming)
        train_set = make_training_set(source, y_enc, w, batch_size=self.batch_size,
                                      device=device, dtype=dtype, param_dtype=pdtype,
                                      seed=seed, stream=self._streams(source),
                                      pack_source=self._training_batch)
        n_iter_no_change, validation_fraction = self._stopping()
        early_stopping = validation_fraction is not None and self._solver() == "adamw"
        validation_set = None
        if early_stopping:
            train_set, validation_set = _validation_split(
                train_set, y_enc, validation_fraction, seed)
        result = fit_module(
            module, train_set,
            solver=self._solver(),
            learning_rate=self._learning_rate(source),
            max_iter=self.max_iter,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            tol=self.tol,
            n_iter_no_change=n_iter_no_change,
            validation_set=validation_set,
            callbacks=self.callbacks,
            verbose=self.verbose,
            desc=type(self).__name__,
        )
        del train_set, validation_set
        self.module_ = module
        self.compute_dtype_ = dtype
        self.n_iter_ = int(result.n_iter[0])
        self.loss_curve_ = result.loss_curve
        if early_stopping:
            self.validation_scores_ = result.validation_scores
            self.best_validation_score_ = result.best_validation_score
        if result.net is not None:
            self.net_ = result.net
        elif hasattr(self, "net_"):
            del self.net_  # a previous fit's, now stale
        if not all(bool(torch.isfinite(p).all()) for p in self.module_.parameters()):
            raise ValueError(
                "training diverged: the probe's parameters became NaN or infinite. "
                "Scale the activations (e.g. ActivationScaler), lower "
                "learning_rate, or use compute_dtype='float64'."
            )
        return self

    # -- prediction -------------------------------------------------------------
    def _module_placement(self):
        """Compute dtype and device of the fitted probe."""
        return self.compute_dtype_, self.module_.bias.device

    def _logits(self, X):
        """``(n_texts, n_outputs)`` float64 logits in the order of X."""
        check_is_fitted(self)
        source = validate_ragged(self, X, reset=False)
        dtype, device = self._module_placement()
        logits, order = module_logits(self.module_,
                                      self._predict_batches(source, dtype, device))
        if not np.isfinite(logits).all():
            bad = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
            raise ValueError(
                f"decision values overflowed for text {int(order[bad])}: "
                f"its activations are too large for {dtype}. Scale them (e.g. "
                "ActivationScaler) or use compute_dtype='float64'."
            )
        return logits[inverse_order(order)]

    def decision_function(self, X):
        """Class scores: shape (n_texts,) for binary problems, else (n_texts, n_classes).

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        scores : ndarray
            Binary: log-odds of ``classes_[1]``. Multi-class: logits.
        """
        return decision_from_logits(self._logits(X))

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_texts, n_classes)
            Columns in the order of ``classes_``; rows sum to 1.
        """
        return proba_from_logits(self._logits(X))

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed stably from the logits.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        log_proba : ndarray of shape (n_texts, n_classes)
        """
        return log_proba_from_logits(self._logits(X))

    def predict(self, X):
        """Predicted class label of each text.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts' activations, in any form accepted by ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_texts,)
            Elements of ``classes_``.
        """
        return labels_from_logits(self._logits(X), self.classes_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        return tags
