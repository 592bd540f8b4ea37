"""The attention probe estimator."""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Hidden, Interval, StrOptions
from sklearn.base import _fit_context
from sklearn.utils.validation import check_is_fitted

from ._base import BaseProbe
from ._fused import reads_half_directly
from ._modules import AttentionProbeModule
from ._numerics import resolve_device
from ._packing import PackedBatch, pack
from ._streaming import iter_blocks
from ._training import auto_learning_rate
from ._validation import validate_ragged


def module_position(est):
    """Anchor handed to the torch module: ``"last"`` with a position bias,
    None without; maps the deprecated ``position`` parameter (with a
    FutureWarning) onto ``position_bias``."""
    if est.position == "deprecated":
        return "last" if est.position_bias else None
    warnings.warn(
        "'position' is deprecated since 0.2 and will be removed in 0.4: the anchor "
        "does not change the fitted probe (a per-text constant cancels in the "
        "softmax). Use position_bias=True (for 'last' or 'first') or "
        "position_bias=False (for None).", FutureWarning, stacklevel=3)
    return None if est.position is None else "last"


class AttentionProbeClassifier(BaseProbe):
    """Attention probe: learned per-head attention pooling, then a linear readout.

    For each head ``h`` and token ``t`` of a text, the attention logit is
    ``x_t @ q_h + w_h * p_t`` where ``p_t = t - (T - 1)`` is minus the
    distance of token ``t`` to the text's last real token and ``w_h`` a
    learned slope (``position_bias=False`` drops the term). A softmax over the
    text's real tokens gives weights ``a_th``; the class logits are
    ``sum_h (sum_t a_th x_t) @ V_h + b``. This is the probe of Shabalin &
    Belrose, "Attention Probes" (EleutherAI, 2025), computed pooling-first: the
    per-token values (tokens x heads x classes) are never materialised.

    Parameters
    ----------
    n_heads : int, default=1
        Number of attention heads.
    position_bias : bool, default=True
        Learn one position slope per head (the ALiBi-style bias), so that a
        head can lean towards the end (positive slope) or the start
        (negative slope) of every text. Where the distances are counted from
        does not matter: counting from the first token instead adds
        ``w_h * (T - 1)`` to every logit of a text, a per-text constant that
        the softmax removes, so both anchors fit the same model.
    position : {"last", "first"} or None, default="deprecated"
        Deprecated since 0.2, removed in 0.4: use ``position_bias``. ``None``
        means ``position_bias=False``; ``"last"`` and ``"first"`` both mean
        ``position_bias=True`` (they fit the same probe; see above).
    weight_decay : float, default=0.0
        L2 penalty: the objective is the sample-weighted mean log-loss plus
        ``weight_decay / 2 * (||Q||^2 + ||V||^2)``. Unlike the seed code, which
        passes ``weight_decay`` to :class:`torch.optim.AdamW` (a decoupled
        shrinkage of ``lr * weight_decay`` per step, about 5% in all over 500
        steps at ``lr=1e-3, weight_decay=0.1``), this is a real penalty on the
        objective and means the same as in :class:`MeanProbeClassifier`
        (``C = 1 / (weight_decay * n_samples)`` in
        :class:`~sklearn.linear_model.LogisticRegression` terms).
    query_weight_decay : float or None, default=None
        The query's own L2 penalty: with a value, the penalty term is
        ``weight_decay / 2 * ||V||^2 + query_weight_decay / 2 * ||Q||^2``;
        None penalises the query with ``weight_decay`` too. ``0.0`` leaves
        the query free, so a sharp attention pattern costs nothing by itself:
        measured on the study's needle tasks it put more of the attention on
        the evidence (best head 0.93 against 0.85) at the same accuracy, but
        it cost up to 0.1 of accuracy on planted tasks where every token
        carries the label (:ref:`when-attention-wins`).
    solver : {"adamw", "lbfgs"}, default="adamw"
        AdamW (minibatches possible), or full-batch L-BFGS with a strong Wolfe
        line search (as the pooled probes and the reference implementation
        train).
    learning_rate : float or "auto", default=1e-2
        AdamW step size (unused by L-BFGS), one for every parameter.
        ``"auto"`` gives the query and the values
        ``min(1e-2, 1 / mean_t ||x_t||_1)``, with the mean L1 norm of a token
        taken over up to 256 training texts, and keeps ``1e-2`` for the
        position slopes and the intercepts (which act on the logits
        directly): one step then moves an average token's attention logit by
        about one unit whatever ``d_model`` and the activations' scale, and a
        fit on ``c * X`` follows the fit on ``X``. It equals ``1e-2`` up to
        about 125 standardised features. On wider states a fixed ``1e-2``
        can overshoot in the first steps and stop on an early oscillation;
        measured on the study's real activations, ``"auto"`` settled those
        fits (lower test log-loss, the same accuracy) at up to 2.1 times the
        fit time, but found a slow planted needle less often. See
        :ref:`training` ("When the objective oscillates") before choosing.
    max_iter : int, default=500
        Most AdamW steps, or L-BFGS iterations.
    tol : float, default=1e-4
        AdamW: an epoch whose objective is not below the best so far minus
        ``tol`` (with ``early_stopping``: whose held-out accuracy is not
        above the best so far plus ``tol``) counts as no improvement.
        L-BFGS: stop when the largest gradient entry is below ``tol``.
    n_iter_no_change : int or None, default=10
        AdamW stops after more than this many epochs in a row without
        improvement (scikit-learn's ``MLPClassifier`` rule). None runs all
        ``max_iter`` steps: ``n_iter_no_change=None`` with the other
        defaults is the seed's 500 AdamW steps.
    early_stopping : bool, default=False
        AdamW: hold out ``validation_fraction`` of the training texts
        (stratified), stop on their accuracy instead of the training
        objective, and keep the parameters of the best validation epoch (as
        :class:`~sklearn.neural_network.MLPClassifier` does).
    validation_fraction : float, default=0.1
        Share of the training texts held out when ``early_stopping``.
    batch_size : int or None, default=None
        Texts per step; None trains on all texts at every step.
    class_weight : dict, "balanced" or None, default=None
        Multiplies each sample's weight by its class's weight.
    device : str or torch.device, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``..., or ``"auto"`` (CUDA if present).
    compute_dtype : {"auto", "float32", "float64", "bfloat16", "float16"}, default="auto"
        Dtype of the working copy and of the big matrix products. ``"auto"``
        is float64 for float64 input, float16 for float16 input where the fused
        kernel reads it directly (CPU with numba, CUDA with Triton: float32
        accumulation, so the result is that of a float32 copy at half the
        memory), and float32 otherwise (float16 input upcast block by block). ``"bfloat16"`` and
        ``"float16"`` keep the working copy in half precision (half the memory,
        no float32 copy of the data) while parameters, gradients and the
        optimizer state stay float32; softmax normalisation runs in float32.
    warm_start : bool, default=False
        Start from the previous fit's parameters when classes and shapes match.
    random_state : int, RandomState instance or None, default=None
        Seeds the value initialisation and minibatch order. An int gives
        bit-identical fits on the same device and thread count.
    callbacks : list of skorch callbacks or None, default=None
        Passed to the owned :class:`skorch.NeuralNet` (progress bars, early
        stopping on ``train_loss``, LR schedules, checkpoints). One skorch
        epoch is one pass over the training texts.
    verbose : int, default=0
        0 silent; 1 a progress bar for fits longer than two seconds and one
        closing line; 2 also the objective about ten times per fit (with
        ``callbacks``, skorch's per-epoch log).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_features_in_ : int
        ``d_model``.
    feature_names_in_ : ndarray of str
        Only when fitted on a 2-D DataFrame.
    module_ : AttentionProbeModule
        Fitted torch module (``query``, ``slope``, ``value``, ``bias``).
    learning_rate_ : float
        The AdamW step size of the query and the values (``learning_rate``,
        with ``"auto"`` resolved).
    n_iter_ : int
        Optimizer steps (AdamW) or iterations (L-BFGS) taken.
    loss_curve_ : list of float
        The objective after each AdamW epoch (one step when full batch), or
        at each L-BFGS evaluation.
    validation_scores_ : list of float
        With ``early_stopping``: accuracy on the held-out texts after each
        epoch.
    best_validation_score_ : float
        With ``early_stopping``: held-out accuracy of the kept parameters.
    net_ : skorch.NeuralNet
        Only when ``callbacks`` were given: the skorch net that ran them
        (``net_.history`` holds the losses).

    See Also
    --------
    MeanProbeClassifier : Mean pooling then logistic regression.
    LastTokenProbeClassifier : Last token then logistic regression.
    AttentionProbeClassifierCV : Weight decay chosen by batched cross-validation.

    Notes
    -----
    Memory: a fit holds one packed working copy of the texts in the compute
    dtype, padded within length buckets, i.e. at most
    ``1.25 * n_tokens * d_model * itemsize`` bytes (``itemsize`` 4 for
    float32), plus per-step temporaries of ``O(n_tokens * n_heads)`` and one
    bucket in the input dtype while packing. Prediction works block by block.

    Examples
    --------
    >>> from sklearn_attnprobe import AttentionProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("needle", n_texts=200, random_state=0)
    >>> probe = AttentionProbeClassifier(n_heads=2, random_state=0).fit(X, y)
    >>> probe.score(X, y) > 0.9
    True
    >>> [w.shape for w in probe.attention_weights(X[:2])]
    [(16, 2), (21, 2)]
    """

    _parameter_constraints = {
        **BaseProbe._parameter_constraints,
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [*BaseProbe._parameter_constraints["learning_rate"],
                          StrOptions({"auto"})],
        "position_bias": ["boolean"],
        "position": [StrOptions({"last", "first"}), Hidden(StrOptions({"deprecated"})), None],
        "query_weight_decay": [Interval(Real, 0, None, closed="left"), None],
        "solver": [StrOptions({"adamw", "lbfgs"})],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    }

    def __init__(self, n_heads=1, *, position_bias=True, position="deprecated",
                 weight_decay=0.0, query_weight_decay=None,
                 solver="adamw", learning_rate=1e-2, max_iter=500, tol=1e-4,
                 n_iter_no_change=10, early_stopping=False, validation_fraction=0.1,
                 batch_size=None, class_weight=None, device="cpu",
                 compute_dtype="auto", warm_start=False, random_state=None,
                 callbacks=None, verbose=0):
        self.n_heads = n_heads
        self.position_bias = position_bias
        self.position = position
        self.weight_decay = weight_decay
        self.query_weight_decay = query_weight_decay
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
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
        """Fit the probe.

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
        self : AttentionProbeClassifier
        """
        return self._fit(X, y, sample_weight)

    def _compute_dtype(self, source):
        # float16 activations stay float16 where the fused kernel reads them
        # directly: the float32 conversion is exact, so nothing changes but the
        # working copy's size (half) and one pass over the data (saved)
        if (self.compute_dtype == "auto" and source.dtype == np.float16
                and reads_half_directly(resolve_device(self.device))):
            return torch.float16
        return super()._compute_dtype(source)

    def _make_module(self, d_model, n_outputs, dtype, generator):
        return AttentionProbeModule(d_model, self.n_heads, n_outputs,
                                    position=module_position(self), generator=generator,
                                    dtype=dtype)

    def _configure_module(self, module):
        module.query_weight_decay = self.query_weight_decay

    def _learning_rate(self, source):
        if self.learning_rate != "auto":
            self.learning_rate_ = float(self.learning_rate)
            return self.learning_rate_
        rates = auto_learning_rate(source)
        self.learning_rate_ = rates["query"]
        return rates

    def _stopping(self):
        fraction = self.validation_fraction if self.early_stopping else None
        return self.n_iter_no_change, fraction

    def _module_compatible(self, module):
        return (module.n_heads == self.n_heads
                and (module.position is None) == (module_position(self) is None))

    def _training_batch(self, source, dtype, device):
        return pack(source, dtype, device)

    def _predict_batches(self, source, dtype, device):
        for block in iter_blocks(source, dtype, device):
            yield PackedBatch([block])

    # -- inspection ---------------------------------------------------------------
    def attention_weights(self, X):
        """Attention weights of each text.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts in any form accepted by :meth:`fit`.

        Returns
        -------
        weights : list of ndarray of shape (T_i, n_heads)
            Per text, the weight of each real token for each head; every
            column sums to 1.
        """
        check_is_fitted(self)
        source = validate_ragged(self, X, reset=False)
        dtype, device = self._module_placement()
        out = [None] * len(source)
        self.module_.eval()
        with torch.no_grad():
            for block in iter_blocks(source, dtype, device):
                _, w = self.module_.pool_block(block)
                w = w.double().cpu().numpy()
                for j, i in enumerate(block.index):
                    out[i] = w[j, :, : source.lengths[i]].T
        return out

    def attention_entropy(self, X):
        """Entropy of each text's attention per head, and its ratio to uniform.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, d_model), RaggedArray or array
            Texts in any form accepted by :meth:`fit`.

        Returns
        -------
        result : :class:`~sklearn.utils.Bunch` with
            ``entropy`` (n_texts, n_heads) in nats; ``uniform_entropy``
            (n_texts,) equal to ``log T_i``; ``ratio`` (n_texts, n_heads),
            entropy divided by ``log T_i`` (1 = uniform attention, 0 = one
            token). For one-token texts the ratio is defined as 1.
        """
        weights = self.attention_weights(X)
        entropy = np.stack([
            -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=0)
            for w in weights
        ])
        lengths = np.array([w.shape[0] for w in weights])
        uniform = np.log(lengths)
        safe = np.where(lengths > 1, uniform, 1.0)
        ratio = np.where(lengths[:, None] > 1, entropy / safe[:, None], 1.0)
        return Bunch(entropy=entropy, uniform_entropy=uniform, ratio=ratio)
