"""Training loops of the probes.

The objective is the same for every probe and optimizer::

    sum_i w_i * loss_i / sum_i w_i  +  weight_decay / 2 * ||W||^2

with ``w`` the sample weights (times class weights), ``loss`` the log-loss and
``W`` the probe's weights (intercepts and position slopes are not penalised).
The optimizer's own decoupled weight decay stays at zero: the penalty is part of
the objective, so ``weight_decay`` means the same for AdamW and L-BFGS.

Two drivers run it. Without user callbacks, a plain torch loop
(:mod:`._loops`): a step costs its arithmetic and nothing else, and training
stops when the objective stops improving. With callbacks, a skorch
``NeuralNet`` drives the same objective so that skorch's callbacks (progress
bars, schedules, checkpoints, early stopping) work as documented.
"""

import copy
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from skorch import NeuralNet
from skorch.callbacks import Callback
from torch import nn

from ._numerics import flush_denormal
from ._packing import PackedBatch


def per_sample_log_loss(logits, y):
    """Log-loss of each sample (and model): logits ``(n, [M,] C)`` -> ``(n, [M])``.

    One logit means binary (sigmoid), as in logistic regression.
    """
    extra = (1,) * (logits.ndim - 2)  # the optional model axis
    if logits.shape[-1] == 1:
        target = y.to(logits.dtype).view(-1, *extra).expand(logits.shape[:-1])
        return F.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")
    logp = torch.log_softmax(logits, dim=-1)
    index = y.view(-1, *extra, 1).expand(*logits.shape[:-1], 1)
    return -logp.gather(-1, index)[..., 0]


def total_weight(w):
    """``w.sum(dim=0)``, at least the smallest positive float: a minibatch may
    hold none of a model's training texts (loss 0, not 0/0)."""
    return w.sum(dim=0).clamp_min(torch.finfo(w.dtype).tiny)


def weighted_log_loss(logits, y, w, total=None):
    """Sample-weighted mean log-loss, one value per model: ``()`` or ``(M,)``.

    ``w`` is ``(n,)`` for one model or ``(n, M)`` for ``M`` stacked models,
    each with its own weights (a cross-validation fold's training mask).
    ``total`` (default :func:`total_weight` of ``w``) is the weight the sum is
    divided by: a part of a larger batch passes the whole batch's, so the
    parts add up to the whole batch's mean.
    """
    losses = per_sample_log_loss(logits, y)
    return (losses * w).sum(dim=0) / (total_weight(w) if total is None else total)


class WeightedLogLoss(nn.Module):
    """skorch criterion: :func:`weighted_log_loss` summed over models."""

    def forward(self, logits, y, w):
        return weighted_log_loss(logits, y, w).sum()


def has_penalty(module, weight_decay):
    """Whether any penalty term can be non-zero (skips the work where none can)."""
    return (torch.is_tensor(weight_decay) or bool(weight_decay)
            or bool(getattr(module, "query_weight_decay", None)))


def objectives(module, batch, y, w, weight_decay):
    """Penalised objective of each model on one batch: ``()`` or ``(M,)``."""
    loss = weighted_log_loss(module(batch), y, w)
    if has_penalty(module, weight_decay):
        loss = loss + module.penalty(weight_decay)
    return loss


class TrainingSet(torch.utils.data.Dataset):
    """Packed training texts, targets and weights, served as whole batches.

    Rows follow ``batch.order`` (the packing order); ``y`` and ``w`` are given
    in source order and permuted here once.
    """

    def __init__(self, batch, y, w, *, device, dtype, seed=0):
        self.batch = batch
        self.y = torch.as_tensor(y[batch.order], device=device)
        self.w = torch.as_tensor(w[batch.order], device=device, dtype=dtype)
        sizes = [len(b) for b in batch.blocks]
        self.block_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps_left = None  # skorch path: AdamW step budget; None = unlimited
        # optional callable(n, batch_size, generator) -> minibatches of row ranks
        # (rank r = the r-th text in source order), as in ._streaming
        self.row_order = None

    def __len__(self):
        return len(self.batch)

    def __getitem__(self, i):
        raise TypeError("TrainingSet is served in whole batches by BatchIterator")

    def select_rows(self, rows):
        """Batch of the given rows (a sorted int64 array of packed positions)."""
        rows_t = torch.as_tensor(rows, device=self.y.device)
        order = self.batch.order[rows]
        if self.batch.features is not None:
            return PackedBatch([], features=self.batch.features[rows_t], order=order)
        blocks = []
        cuts = np.searchsorted(rows, self.block_starts)
        for b, block in enumerate(self.batch.blocks):
            sel = rows[cuts[b] : cuts[b + 1]] - self.block_starts[b]
            if len(sel):
                blocks.append(block.select(torch.as_tensor(sel, device=self.y.device)))
        return PackedBatch(blocks, order=order)

    def subset(self, rows):
        """Batch and ``(y, w)`` of the given packed rows."""
        rows_t = torch.as_tensor(rows, device=self.y.device)
        return self.select_rows(rows), (self.y[rows_t], self.w[rows_t])

    def split(self, rows):
        """A new TrainingSet of some rows (packed positions), sharing the data."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        part = copy.copy(self)
        part.batch, (part.y, part.w) = self.subset(rows)
        sizes = [len(b) for b in part.batch.blocks]
        part.block_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return part

    def epoch(self, batch_size):
        """One pass: ``(batch, (y, w))`` minibatches in a seeded random order."""
        n = len(self)
        if self.row_order is not None:
            packed = np.argsort(self.batch.order, kind="stable")  # rank -> packed row
            for ranks in self.row_order(n, min(batch_size, n), self.generator):
                yield self.subset(np.sort(packed[ranks]))
            return
        if batch_size >= n:
            yield self.batch, (self.y, self.w)
            return
        perm = torch.randperm(n, generator=self.generator).numpy()
        for i in range(0, n, batch_size):
            yield self.subset(np.sort(perm[i : i + batch_size]))

    def full_pass(self, batch_size=None):
        """All texts for one evaluation of the full-batch objective (L-BFGS):
        here the packed batch, at once."""
        yield self.batch, (self.y, self.w)

    def batches(self, batch_size):
        """:meth:`epoch`, cut to ``steps_left`` (the skorch path's step budget)."""
        for item in self.epoch(batch_size):
            if self.steps_left is not None:
                if self.steps_left <= 0:
                    return
                self.steps_left -= 1
            yield item


class BatchIterator:
    """skorch ``iterator_train``: whole packed batches, no per-item collation."""

    def __init__(self, dataset, batch_size):
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self):
        return self.dataset.batches(self.batch_size)

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)


class ProbeNet(NeuralNet):
    """skorch net computing the penalised objective on packed batches."""

    def __init__(self, *args, weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_decay = weight_decay

    def infer(self, x, **fit_params):
        return self.module_(x)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y, w = y_true
        loss = self.criterion_(y_pred, y, w)
        if has_penalty(self.module_, self.weight_decay):
            loss = loss + self.module_.penalty(self.weight_decay).sum()
        return loss


# "auto" step size: at most the step chosen on unit-scale planted tasks, and
# smaller where tokens are large in L1 norm (wide models, unscaled states)
AUTO_LEARNING_RATE_CAP = 1e-2
ACTIVATION_WEIGHTS = ("query", "value")  # the parameters that multiply activations
_AUTO_SAMPLE_TEXTS = 256


def auto_learning_rate(source):
    """AdamW step sizes of an attention probe on ``source``, by parameter name.

    Adam's first steps move every parameter by about the step size, so one
    step shifts a token's attention logit (``x_t @ q``) by up to
    ``lr * ||x_t||_1``, and a class logit by as much through the values. The
    query and the values therefore get ``min(1e-2, 1 / mean_t ||x_t||_1)``:
    about one unit per step for an average token, whatever ``d_model`` and
    the activations' scale. At a fixed ``1e-2`` the shift grows with both (4.5
    units on standardised 576-wide states), and the objective can overshoot
    and oscillate in the first steps. The position slopes and the intercepts
    act on the logits directly, not through the activations: they keep
    ``1e-2``. The mean is taken over the tokens of up to 256 texts spread
    evenly over ``source`` (no random draw, so a fit stays reproducible).
    """
    n = len(source)
    rows = np.unique(np.linspace(0, n - 1, min(n, _AUTO_SAMPLE_TEXTS)).round().astype(np.int64))
    total = tokens = 0
    for i in rows.tolist():
        text = np.asarray(source[i])
        total += float(np.abs(text).sum(dtype=np.float64))
        tokens += text.shape[0]
    mean_l1 = total / tokens
    weights = (min(AUTO_LEARNING_RATE_CAP, 1.0 / mean_l1) if mean_l1 > 0
               else AUTO_LEARNING_RATE_CAP)  # all-zero activations: no scale
    return {name: weights if name in ACTIVATION_WEIGHTS else AUTO_LEARNING_RATE_CAP
            for name in ("query", "slope", "value", "bias")}


def parameter_learning_rates(module, learning_rate):
    """AdamW step sizes in the order of ``module.parameters()``: one float
    for all, or a dict by parameter name (``auto_learning_rate``)."""
    if isinstance(learning_rate, dict):
        return [learning_rate[name] for name, _ in module.named_parameters()]
    return float(learning_rate)


@dataclass
class FitResult:
    """What a training run leaves behind (the estimators copy it to attributes)."""

    n_iter: np.ndarray  # optimizer steps (or L-BFGS iterations) per model
    loss_curve: list  # objective per epoch: floats, or (n_models,) arrays
    converged: np.ndarray  # per model
    net: NeuralNet = None  # the skorch net, on the callbacks path only
    validation_scores: list = field(default_factory=list)
    best_validation_score: float = None
    # stacked models stopped by their held-out loss, and that loss per epoch
    held_out_stops: np.ndarray = None
    held_out_curve: list = field(default_factory=list)


def fit_module(module, train_set, *, solver, learning_rate, max_iter, batch_size,
               weight_decay, tol=1e-4, n_iter_no_change=10, validation_set=None,
               callbacks=None, verbose=0, desc="fit", held_out=None):
    """Train ``module`` in place on ``train_set``; return a :class:`FitResult`.

    ``max_iter`` counts optimizer steps for AdamW and iterations for L-BFGS.
    AdamW stops once a model's epoch objective (or, with ``validation_set``,
    its held-out accuracy) has not improved by ``tol`` for more than
    ``n_iter_no_change`` epochs in a row; ``n_iter_no_change=None`` runs
    ``max_iter`` steps. L-BFGS stops when the largest gradient entry is below ``tol``.
    ``held_out`` (AdamW without callbacks only): see :func:`._loops.adamw_loop`.
    """
    from ._loops import adamw_loop, lbfgs_loop

    n = len(train_set)
    bs = n if batch_size is None else min(int(batch_size), n)
    if solver not in ("adamw", "lbfgs"):
        raise ValueError(f"unknown solver {solver!r}")
    if callbacks and solver == "lbfgs" and getattr(train_set, "source", None) is not None:
        raise ValueError(
            "skorch callbacks with solver='lbfgs' need the texts in memory; for a "
            "memory-mapped X use solver='adamw', or drop the callbacks")
    with flush_denormal():
        if callbacks:
            result = _fit_with_skorch(module, train_set, solver, learning_rate, max_iter,
                                      bs, weight_decay, tol, n_iter_no_change,
                                      callbacks, verbose)
        elif solver == "lbfgs":
            result = lbfgs_loop(module, train_set, max_iter=max_iter, tol=tol,
                                batch_size=bs,
                                weight_decay=weight_decay, verbose=verbose, desc=desc)
        else:
            result = adamw_loop(module, train_set, learning_rate=learning_rate,
                                max_iter=max_iter, batch_size=bs,
                                weight_decay=weight_decay, tol=tol,
                                n_iter_no_change=n_iter_no_change,
                                validation_set=validation_set, verbose=verbose,
                                desc=desc, held_out=held_out)
    if not result.converged.all():
        warnings.warn(
            f"{desc}: stopped at max_iter={max_iter} before the objective converged "
            f"({int((~result.converged).sum())} of {result.converged.size} models); "
            "raise max_iter or tol",
            ConvergenceWarning, stacklevel=3,
        )
    return result


def _fit_with_skorch(module, train_set, solver, learning_rate, max_iter, bs,
                     weight_decay, tol, n_iter_no_change, callbacks, verbose):
    """The user registered skorch callbacks: let a skorch net drive training."""
    n = len(train_set)
    callbacks = copy.deepcopy(callbacks)
    if solver == "adamw" and n_iter_no_change is not None:
        callbacks.append(("convergence", _Convergence(tol, n_iter_no_change)))
    common = dict(
        module=module, criterion=WeightedLogLoss, iterator_train=BatchIterator,
        batch_size=bs, train_split=None, callbacks=callbacks, verbose=verbose,
        device=str(train_set.y.device), weight_decay=weight_decay,
        callbacks__valid_loss=None,
    )
    if not verbose:
        common["callbacks__print_log"] = None
    if solver == "lbfgs":
        net = ProbeNet(optimizer=torch.optim.LBFGS, lr=1.0, max_epochs=1,
                       **_lbfgs_options(max_iter, tol, prefix="optimizer__"), **common)
        train_set.steps_left = None
    else:
        groups = {}
        if isinstance(learning_rate, dict):  # per parameter (auto_learning_rate)
            groups["optimizer__param_groups"] = [(name, {"lr": lr})
                                                 for name, lr in learning_rate.items()]
            learning_rate = max(learning_rate.values())
        net = ProbeNet(optimizer=torch.optim.AdamW, lr=learning_rate, **groups,
                       optimizer__weight_decay=0.0,
                       optimizer__fused=fused_adamw_supported(train_set.y.device),
                       max_epochs=math.ceil(max_iter / math.ceil(n / bs)), **common)
        train_set.steps_left = max_iter
    net.fit(train_set, None)
    opt = net.optimizer_
    if solver == "lbfgs":
        state = opt.state[opt.param_groups[0]["params"][0]]
        steps = int(state.get("n_iter", 0))
        converged = steps < max_iter
    else:
        steps = int(sum(len(h["batches"]) for h in net.history))
        converged = steps < max_iter or n_iter_no_change is None
    n_models = getattr(module, "n_models", 1)
    return FitResult(
        n_iter=np.full(n_models, steps),
        loss_curve=list(net.history[:, "train_loss"]),
        converged=np.full(n_models, converged),
        net=net,
    )


class _Convergence(Callback):
    """The plain loop's stopping rule (:class:`._loops.StoppingRule`) for skorch."""

    def __init__(self, tol, n_iter_no_change):
        self.tol, self.n_iter_no_change = tol, n_iter_no_change

    def on_train_begin(self, net, **kwargs):
        from ._loops import StoppingRule

        self.rule_ = StoppingRule(1, self.tol, self.n_iter_no_change)

    def on_epoch_end(self, net, **kwargs):
        loss = np.array([net.history[-1, "train_loss"]])
        if self.rule_.update(loss, np.arange(1))[1][0]:
            raise KeyboardInterrupt  # skorch ends fit() cleanly on this


def _lbfgs_options(max_iter, tol, prefix=""):
    options = dict(
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25) + 1,
        tolerance_grad=tol,
        tolerance_change=tol * 1e-3,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    return {prefix + k: v for k, v in options.items()}


def fused_adamw_supported(device):
    """Fused AdamW (one kernel for all parameters) is 2.5x faster per step on
    the small parameter tensors of a probe; CPU support came in torch 2.4."""
    if device.type == "cuda":
        return True
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)
