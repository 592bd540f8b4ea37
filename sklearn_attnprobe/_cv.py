"""Cross-validated probes: every (fold, weight decay) model in one pass.

``GridSearchCV`` over ``weight_decay`` with ``cv=5`` fits 20 probes, each
reading (and packing) its training texts on its own. The CV classes here pack
the texts once and train the 20 models together:

* attention probes: one :class:`StackedAttentionProbeModule` holding all
  models, trained on all texts with each model's loss masked to its fold's
  training texts, so each step reads the activations once for all models and
  the per-block GEMM holds every model's heads (with ``n_heads`` searched
  too, models of different head counts share the stack);
* pooled probes: the texts are pooled once, then each fold runs an L-BFGS
  path over the weight decays from the strongest penalty down, each fit
  warm-started from the previous solution.

With an int ``random_state`` each stacked model starts from exactly the
parameters a stand-alone estimator with that ``random_state`` would, so the
batched sweep reproduces ``GridSearchCV``'s models up to float rounding.
"""

import numbers

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._attention import AttentionProbeClassifier, module_position
from ._base import module_logits
from ._numerics import parameter_dtype, resolve_device
from ._cv_base import _BaseProbeCV
from ._modules import StackedAttentionProbeModule
from ._packing import inverse_order, pack_by_idle_splits
from ._streaming import make_training_set, should_stream
from ._loops import HeldOutLoss
from ._training import fit_module


class AttentionProbeClassifierCV(_BaseProbeCV):
    """Attention probe with the weight decay chosen by batched cross-validation.

    All ``n_splits x len(weight_decays)`` models train together in one pass
    over the shared activations: one stacked module, one GEMM per block and
    step over all models' query columns, each model's loss masked to its
    fold's training texts. The best weight decay (mean CV score) is then
    refitted on all texts as an :class:`AttentionProbeClassifier`.

    Parameters
    ----------
    n_heads : int or array-like of int, default=1
        Attention heads of every model. A list searches the head counts too:
        every (head count, weight decay) pair is a candidate, in
        ``ParameterGrid``'s order (head counts outer), and all of them train
        in the same stacked pass (models of different head counts share the
        per-block GEMM). ``best_params_`` then names ``n_heads`` as well.
    weight_decays : array-like of float, default=(0.0, 1e-3, 1e-2, 1e-1)
        Candidate L2 penalties of the values (see
        :class:`AttentionProbeClassifier`).
    cv : int, cross-validation generator or iterable, default=5
        As in :class:`~sklearn.model_selection.GridSearchCV` (an int means
        stratified k-fold).
    scoring : str, callable or None, default=None
        Any scikit-learn scorer (a name such as ``"neg_log_loss"`` or
        ``"roc_auc"``, or ``scorer(estimator, X, y)``), computed on each test
        fold's texts as ``GridSearchCV`` would; None is accuracy, the probes'
        ``score``.
    refit : bool, default=True
        Refit the best candidate (weight decay, and head count where
        searched) on all texts as ``best_estimator_``.
    position_bias : bool, default=True
        As in :class:`AttentionProbeClassifier`.
    position : {"last", "first"} or None, default="deprecated"
        Deprecated since 0.2, removed in 0.4: use ``position_bias`` (see
        :class:`AttentionProbeClassifier`).
    query_weight_decay : float or None, default=None
        The query's own L2 penalty, the same for every model (not searched);
        None penalises the query with each model's weight decay. See
        :class:`AttentionProbeClassifier`.
    solver : {"adamw", "lbfgs"}, default="adamw"
        As in :class:`AttentionProbeClassifier`. With AdamW each model stops
        on its own and leaves the stacked step; L-BFGS minimises the sum of
        the models' objectives and stops when all have converged.
    learning_rate : float or "auto", default=1e-2
        AdamW step size, shared by all models; ``"auto"`` as in
        :class:`AttentionProbeClassifier`, computed once on all of X (a
        ``GridSearchCV`` computes it on each fold's training texts: up to 1.1%
        apart on the study's tasks, so pass a float where the two must match
        exactly). The value used is ``learning_rate_``.
    max_iter : int, default=500
        Most AdamW steps (L-BFGS iterations) of the batched pass and of the
        refit.
    tol : float, default=1e-4
        As in :class:`AttentionProbeClassifier`.
    n_iter_no_change : int or None, default=10
        As in :class:`AttentionProbeClassifier`, per model.
    held_out_stopping : int or None, default=None
        None: off. An int: also stop each model of the batched pass once its
        log-loss on its own split's held-out texts (the texts it is scored
        on; no further split) has not fallen by ``tol`` for more than this
        many epochs in a row; the model is scored as it stands then. It
        saves the steps of models that go on fitting their training texts
        after they have started to overfit (see ``refit_steps`` for the
        refit). Caution: while an attention probe searches for a needle its
        held-out loss can first rise, then fall once the
        attention finds the evidence (measured on a planted needle at d 384:
        up from 0.70 to 1.24 by step 21, down to 0.33 by step 80); a short
        patience stops such models before they learn, and their CV scores
        fall towards chance. Costs one forward pass over each split's
        held-out texts per epoch. AdamW without callbacks, texts in memory
        (``batch_size=None`` for a memory-mapped X). The user guide's
        "Training" page shows what it saved and cost on the study's tasks.
    refit_steps : {"rule", "cv"}, default="rule"
        How long the refit trains. ``"rule"``: until its own stopping rule
        (``tol``, ``n_iter_no_change``) on all texts, as a stand-alone probe.
        ``"cv"`` (needs ``held_out_stopping``): the search chooses the length
        as well as the penalty; the refit runs, with no stopping rule, the
        mean steps of the best candidate's fold models
        (``best_estimator_.max_iter``), and in the batched pass the training
        rule stops a model only once its objective is back within ``tol`` of
        its best, so that those steps end where its held-out loss stopped
        falling (or its objective converged) rather than at a bump of its
        objective. Keeps the refit from fitting its training texts past the
        point where held-out texts stopped gaining: on the study's
        whole-text tasks it raised the 8-head probe's test accuracy, but on a
        needle whose held-out loss rises before it falls the refit inherits
        the folds' early stops and misses the needle (both measured in the
        user guide's "Training" page).
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
        ``param_weight_decay`` (and ``param_n_heads`` where ``n_heads`` is
        searched), ``split{k}_test_score``, ``mean_test_score``,
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
        Seconds spent refitting the best candidate (None without refit).
    learning_rate_ : float
        The AdamW step size of the batched pass (and of the refit, which
        resolves ``"auto"`` on the same texts).
    n_iter_ : ndarray of shape (n_splits, n_candidates)
        AdamW steps (L-BFGS iterations) each model took before it stopped;
        candidates as in ``cv_results_["params"]`` (one per weight decay
        unless ``n_heads`` is searched).
    held_out_stopped_ : ndarray of bool, shape (n_splits, n_candidates)
        Only with ``held_out_stopping`` set: the models stopped by their held-out
        loss (the others by the training rule or ``max_iter``).
    held_out_loss_curve_ : ndarray of shape (n_epochs, n_splits, n_candidates)
        Only with ``held_out_stopping`` set: each model's held-out log-loss after
        each epoch (NaN once it has stopped); the last value of a model is the
        ``neg_log_loss`` score of its split, negated.
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
    of all models, ``n_texts * total_heads * d_model`` values, where
    ``total_heads`` is the heads of all stacked models (``n_splits *
    n_weight_decays * n_heads``, or the sum over the searched head counts);
    on CPU also the attention weights kept for the backward pass,
    ``total_heads`` values per (padded) token, kept only for blocks whose padded
    length is at most ``d_model`` (then no larger than the pooled states).

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
        "n_heads": [*AttentionProbeClassifier._parameter_constraints["n_heads"], "array-like"],
        **{k: AttentionProbeClassifier._parameter_constraints[k]
           for k in ("position_bias", "position", "query_weight_decay", "solver",
                     "learning_rate", "tol", "n_iter_no_change")},
        "held_out_stopping": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "refit_steps": [StrOptions({"rule", "cv"})],
    }

    def __init__(self, n_heads=1, *, weight_decays=(0.0, 1e-3, 1e-2, 1e-1), cv=5,
                 scoring=None, refit=True, position_bias=True, position="deprecated",
                 query_weight_decay=None, solver="adamw",
                 learning_rate=1e-2, max_iter=500, tol=1e-4, n_iter_no_change=10,
                 held_out_stopping=None, refit_steps="rule", batch_size=None,
                 class_weight=None,
                 device="cpu", compute_dtype="auto", random_state=None, callbacks=None,
                 verbose=0):
        self.n_heads = n_heads
        self.weight_decays = weight_decays
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.position_bias = position_bias
        self.position = position
        self.query_weight_decay = query_weight_decay
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.held_out_stopping = held_out_stopping
        self.refit_steps = refit_steps
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.device = device
        self.compute_dtype = compute_dtype
        self.random_state = random_state
        self.callbacks = callbacks
        self.verbose = verbose

    def _estimator_params(self):
        # the deprecated ``position`` becomes ``position_bias`` (warning once,
        # here) for the stacked models and the refit alike
        params = super()._estimator_params()
        params["position_bias"] = module_position(self) is not None
        params["position"] = "deprecated"
        return params

    def _refit_params(self, index):
        # refit_steps="cv": the search chose how long to train as well; the
        # refit takes the mean steps of the candidate's fold models (where
        # their held-out loss had stopped falling), without a stopping rule
        params = super()._refit_params(index)
        if self.refit_steps == "cv":
            steps = int(np.rint(self.n_iter_[:, index].mean()))
            params.update(max_iter=max(1, steps), n_iter_no_change=None)
        return params

    def _head_grid(self):
        """The head counts searched, or None where ``n_heads`` is one int."""
        if isinstance(self.n_heads, numbers.Integral):
            return None
        heads = np.asarray(self.n_heads)
        if (heads.ndim != 1 or heads.size == 0 or not np.issubdtype(heads.dtype, np.number)
                or not np.all(np.mod(heads, 1) == 0) or heads.min() < 1):
            raise ValueError("n_heads must be an int >= 1 or a non-empty list of them, "
                             f"got {self.n_heads!r}")
        return [int(h) for h in heads]

    def _search_grid(self, wds):
        heads = self._head_grid()
        if heads is None:
            return super()._search_grid(wds)
        return [{"n_heads": h, "weight_decay": float(w)} for h in heads for w in wds]

    def _candidate_logits(self, source, y_enc, W, wds, n_outputs, held_out=None):
        if self.refit_steps == "cv" and self.held_out_stopping is None:
            raise ValueError("refit_steps='cv' needs held_out_stopping: without it the "
                             "fold models' steps only say where their training "
                             "objective stopped falling, which the refit's own rule finds")
        if self.held_out_stopping is not None:
            self._check_held_out_stopping(source)
        grid = self._search_grid(wds)
        n_splits, n_cand = W.shape[1], len(grid)
        M = n_splits * n_cand  # model m = fold m // n_cand, candidate m % n_cand
        device = resolve_device(self.device)
        params = self._estimator_params()
        heads = [c.get("n_heads", self.n_heads) for c in grid]
        helper = self._estimator_class(**{**params, "n_heads": heads[0]})
        dtype = helper._compute_dtype(source)
        pdtype = parameter_dtype(dtype)
        # the stand-alone estimator's seed, so each model starts as it would
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        generators = [torch.Generator().manual_seed(int(seed)) for _ in range(M)]
        module = StackedAttentionProbeModule(
            M, source.d_model, np.tile(heads, n_splits), n_outputs,
            position="last" if helper.position_bias else None,
            generators=generators, dtype=pdtype).to(device)
        helper._configure_module(module)  # the query's own penalty, as in the refit
        module.model_split = np.repeat(np.arange(n_splits), n_cand)
        weights = np.repeat(W, n_cand, axis=1)  # (n, M)
        # packed in memory (blocks by the splits that leave their texts out,
        # so a step skips those splits' models there), or streamed from a
        # mapped source (._streaming)
        train_set = make_training_set(
            source, y_enc, weights, batch_size=self.batch_size, device=device,
            dtype=dtype, param_dtype=pdtype, seed=seed,
            pack_source=lambda src, dt, dev: pack_by_idle_splits(src, W, dt, dev))
        decays = torch.as_tensor(np.tile([c["weight_decay"] for c in grid], n_splits),
                                 dtype=pdtype, device=device)
        watch = None
        if self.held_out_stopping is not None:
            watch = HeldOutLoss(train_set, np.repeat(held_out, n_cand, axis=1),
                                 self.held_out_stopping, settle=self.refit_steps == "cv")
        result = fit_module(
            module, train_set, solver=self.solver,
            learning_rate=helper._learning_rate(source),
            max_iter=self.max_iter, batch_size=self.batch_size, weight_decay=decays,
            tol=self.tol, n_iter_no_change=self.n_iter_no_change,
            callbacks=self.callbacks, verbose=self.verbose,
            desc=f"{type(self).__name__} ({M} models)", held_out=watch)
        self.learning_rate_ = helper.learning_rate_
        self.n_iter_ = result.n_iter.reshape(n_splits, n_cand)
        for name in ("held_out_stopped_", "held_out_loss_curve_"):
            if hasattr(self, name):
                delattr(self, name)
        if watch is not None:
            self.held_out_stopped_ = result.held_out_stops.reshape(n_splits, n_cand)
            self.held_out_loss_curve_ = np.array(result.held_out_curve).reshape(
                -1, n_splits, n_cand)
        if result.net is not None:
            self.net_ = result.net
        elif hasattr(self, "net_"):
            del self.net_
        del train_set
        # the stand-alone probe's prediction batches, through the stacked module
        logits, order = module_logits(module, helper._predict_batches(source, dtype, device))
        logits = logits[inverse_order(order)]
        return logits.reshape(len(y_enc), n_splits, n_cand, n_outputs)

    def _check_held_out_stopping(self, source):
        """Before any packing: the settings held-out stopping works with."""
        if self.solver != "adamw" or self.callbacks:
            raise ValueError("held_out_stopping needs solver='adamw' and no "
                             "callbacks (it is a rule of the plain AdamW loop)")
        if should_stream(source, self.batch_size):
            raise ValueError("held_out_stopping needs the texts in memory: with a "
                             "memory-mapped X leave batch_size=None")

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

