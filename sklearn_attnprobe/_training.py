"""Training loops: a skorch ``NeuralNet`` that the estimators own.

The objective is the same for every probe and optimizer::

    sum_i w_i * loss_i / sum_i w_i  +  weight_decay / 2 * ||W||^2

with ``w`` the sample weights (times class weights), ``loss`` the log-loss and
``W`` the probe's weights (intercepts and position slopes are not penalised).
The optimizer's own decoupled weight decay stays at zero: the penalty is part of
the objective, so ``weight_decay`` means the same for AdamW and L-BFGS.

skorch drives both paths. L-BFGS runs as one skorch step whose closure torch's
:class:`torch.optim.LBFGS` re-evaluates up to ``max_iter`` times; AdamW runs one
skorch epoch per pass over the training texts, ``max_iter`` steps in all.
"""

import copy
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from skorch import NeuralNet
from torch import nn

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


class WeightedLogLoss(nn.Module):
    """Sample-weighted mean log-loss, summed over models when stacked.

    ``w`` is ``(n,)`` for one model or ``(n, M)`` for ``M`` stacked models,
    each with its own weights (a cross-validation fold's training mask).
    """

    def forward(self, logits, y, w):
        losses = per_sample_log_loss(logits, y)
        # a minibatch may hold none of a model's training texts: loss 0, not 0/0
        total = w.sum(dim=0).clamp_min(torch.finfo(w.dtype).tiny)
        return ((losses * w).sum(dim=0) / total).sum()


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
        self.steps_left = None  # set by fit_module for AdamW; None = unlimited

    def __len__(self):
        return len(self.batch)

    def __getitem__(self, i):
        raise TypeError("TrainingSet is served in whole batches by BatchIterator")

    def subset(self, rows):
        """Batch and targets of the given rows (a sorted int64 array)."""
        rows_t = torch.as_tensor(rows, device=self.y.device)
        order = self.batch.order[rows]
        if self.batch.features is not None:
            sub = PackedBatch([], features=self.batch.features[rows_t], order=order)
        else:
            blocks = []
            cuts = np.searchsorted(rows, self.block_starts)
            for b, block in enumerate(self.batch.blocks):
                sel = rows[cuts[b] : cuts[b + 1]] - self.block_starts[b]
                if len(sel):
                    blocks.append(block.select(torch.as_tensor(sel, device=self.y.device)))
            sub = PackedBatch(blocks, order=order)
        return sub, (self.y[rows_t], self.w[rows_t])

    def batches(self, batch_size):
        n = len(self)
        if batch_size >= n:
            parts = [None]
        else:
            perm = torch.randperm(n, generator=self.generator).numpy()
            parts = [np.sort(perm[i : i + batch_size]) for i in range(0, n, batch_size)]
        for rows in parts:
            if self.steps_left is not None:
                if self.steps_left <= 0:
                    return
                self.steps_left -= 1
            if rows is None:
                yield self.batch, (self.y, self.w)
            else:
                yield self.subset(rows)


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
        if torch.is_tensor(self.weight_decay) or self.weight_decay:
            loss = loss + self.module_.penalty(self.weight_decay)
        return loss


@contextmanager
def flush_denormal():
    """Run with subnormal floats flushed to zero (x86 CPUs), then switch back.

    Once a probe fits well, the loss gradient holds values like 1e-40
    (confident softmax outputs minus one-hot targets) and every matrix product
    downstream of it slows down 3-10x on x86 CPUs (measured: a step going from
    150 ms to 600 ms within 30 steps). Values that small change nothing.
    torch's flag is process-wide state without a getter: it is restored to
    torch's default (off) on exit.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def fit_module(module, train_set, *, solver, learning_rate, max_iter, batch_size,
               weight_decay, tol=None, callbacks=None, verbose=0):
    """Train ``module`` in place on ``train_set``; return the fitted net.

    ``max_iter`` counts optimizer steps for AdamW and L-BFGS iterations for
    L-BFGS (one full-batch skorch step).
    """
    n = len(train_set)
    bs = n if batch_size is None else min(int(batch_size), n)
    common = dict(
        module=module,
        criterion=WeightedLogLoss,
        iterator_train=BatchIterator,
        batch_size=bs,
        train_split=None,
        callbacks=copy.deepcopy(callbacks) if callbacks else None,
        verbose=verbose,
        device=str(train_set.y.device),
        weight_decay=weight_decay,
        # no validation split, so no valid-loss scorer; the per-epoch log
        # table costs ~1 ms per step, so it only exists when verbose
        callbacks__valid_loss=None,
    )
    if not verbose:
        common["callbacks__print_log"] = None
    if solver == "lbfgs":
        net = ProbeNet(
            optimizer=torch.optim.LBFGS,
            lr=1.0,
            max_epochs=1,
            optimizer__max_iter=max_iter,
            optimizer__max_eval=int(max_iter * 1.25) + 1,
            optimizer__tolerance_grad=tol,
            optimizer__tolerance_change=tol * 1e-3,
            optimizer__history_size=20,
            optimizer__line_search_fn="strong_wolfe",
            **common,
        )
        train_set.steps_left = None
    elif solver == "adamw":
        net = ProbeNet(
            optimizer=torch.optim.AdamW,
            lr=learning_rate,
            optimizer__weight_decay=0.0,
            optimizer__fused=_fused_adamw_supported(train_set.y.device),
            max_epochs=math.ceil(max_iter / math.ceil(n / bs)),
            **common,
        )
        train_set.steps_left = max_iter
    else:
        raise ValueError(f"unknown solver {solver!r}")
    with flush_denormal():
        net.fit(train_set, None)
    return net


def _fused_adamw_supported(device):
    """Fused AdamW (one kernel for all parameters) is 2.5x faster per step on
    the small parameter tensors of a probe; CPU support came in torch 2.4."""
    if device.type == "cuda":
        return True
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def n_iterations(net):
    """Optimizer steps taken (AdamW) or L-BFGS iterations."""
    opt = net.optimizer_
    if isinstance(opt, torch.optim.LBFGS):
        state = opt.state[opt.param_groups[0]["params"][0]]
        return int(state.get("n_iter", 0))
    return int(sum(len(h["batches"]) for h in net.history))
