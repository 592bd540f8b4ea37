"""Plain torch training loops (the path without user callbacks).

A step is the forward pass, the backward pass and one AdamW update,
nothing else: no per-step callbacks, logging or host synchronisation (the loss
is read back once per epoch, for the stopping rule).

Stacked cross-validation modules stop model by model: once a model has
converged its parameters are set aside and it leaves the working module, so
the per-step matrix products shrink as models finish. A stack can also stop
a model on its loss over its own split's held-out texts (:class:`HeldOutLoss`).
"""

import contextlib
import copy
import time
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from . import _scratch
from ._adamw import AdamW
from ._manual_step import manual_objective
from ._head_layout import head_columns
from ._progress import ProgressReporter
from ._training import (
    FitResult,
    _lbfgs_options,
    has_penalty,
    objectives,
    parameter_learning_rates,
    per_sample_log_loss,
    total_weight,
    weighted_log_loss,
)

# Each parameter of a stacked module: the axis that indexes models, and
# whether that axis holds one entry per head (query columns, slopes, values)
# or one per model (bias).
_MODEL_LAYOUT = {"query": (1, True), "slope": (0, True), "value": (0, True),
                 "bias": (0, False)}


class _StackedModels:
    """Finished models' parameters, and the shrinking of the working module."""

    def __init__(self, module):
        self.module = module
        self.active = np.arange(module.n_models)  # original index of each working model
        self.final = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.model_split = module.model_split
        self.head_counts = module.head_counts

    def _index(self, name, models, device, head_counts=None):
        """``(axis, rows)`` of ``models`` in parameter ``name``: of the working
        module, or of the full stack with its ``head_counts``."""
        axis, per_head = _MODEL_LAYOUT[name]
        counts = self.module.head_counts if head_counts is None else head_counts
        rows = (head_columns(counts, models) if per_head
                else torch.as_tensor(models, dtype=torch.long))
        return axis, rows.to(device)

    def _store(self, local):
        """Copy working models ``local`` into the final parameters."""
        for name, p in self.module.named_parameters():
            axis, src = self._index(name, local, p.device)
            _, dst = self._index(name, self.active[local], p.device, self.head_counts)
            self.final[name].index_copy_(axis, dst, p.detach().index_select(axis, src))

    def shrink(self, keep, optimizer):
        """Keep working models ``keep`` (local indices); return the new optimizer."""
        done = np.setdiff1d(np.arange(len(self.active)), keep)
        self._store(done)
        old_state = {}
        for name, p in list(self.module.named_parameters()):
            axis, idx = self._index(name, keep, p.device)
            new = nn.Parameter(p.detach().index_select(axis, idx))
            state = optimizer.state.get(p, {})
            old_state[name] = {
                k: (v.index_select(axis, idx) if torch.is_tensor(v) and v.shape == p.shape
                    else (v.clone() if torch.is_tensor(v) else v))
                for k, v in state.items()
            }
            setattr(self.module, name, new)
        self.module.head_counts = self.module.head_counts[keep]  # n_models follows
        self.active = self.active[keep]
        if self.model_split is not None:
            self.module.model_split = self.model_split[self.active]
        # the same optimizer (its settings untouched) over the sliced parameters
        optimizer.param_groups[0]["params"] = list(self.module.parameters())
        optimizer.state = defaultdict(dict, {
            p: old_state[name] for name, p in self.module.named_parameters()
            if old_state[name]})
        return optimizer

    def finish(self):
        """Put every model back into the module, in the original order."""
        self._store(np.arange(len(self.active)))
        for name, value in self.final.items():
            setattr(self.module, name, nn.Parameter(value))
        self.module.head_counts = self.head_counts
        if self.model_split is not None:
            self.module.model_split = self.model_split


class StoppingRule:
    """scikit-learn's rule (as in MLPClassifier), one counter per model.

    An epoch whose loss is not below ``best - tol`` counts as no improvement;
    a model stops after more than ``n_iter_no_change`` of them in a row.
    With ``settle``, it stops then only if its loss is back within ``tol`` of
    its best (or not finite): a loss that rose after its best (AdamW
    overshooting, with the penalty growing faster than the data loss falls)
    has not converged, and may fall far below that best if it goes on.
    """

    def __init__(self, n_models, tol, n_iter_no_change, settle=False):
        self.tol, self.patience, self.settle = tol, n_iter_no_change, settle
        self.best = np.full(n_models, np.inf)
        self.misses = np.zeros(n_models, dtype=np.int64)

    def update(self, loss, rows):
        """Record ``loss`` of models ``rows``; return which of them improved
        and which have stopped."""
        improved = loss < self.best[rows] - self.tol
        self.misses[rows] = np.where(improved, 0, self.misses[rows] + 1)
        self.best[rows] = np.fmin(self.best[rows], loss)  # a NaN loss is no best
        stopped = (self.misses[rows] > self.patience) if self.patience is not None \
            else np.zeros(len(rows), dtype=bool)
        if self.settle:
            stopped &= (loss <= self.best[rows] + self.tol) | ~np.isfinite(loss)
        return improved, stopped


class HeldOutLoss:
    """Each working model's weighted log-loss on its split's held-out texts.

    Per block, only the models holding out some of its texts run (one forward
    pass over their columns): with the blocks packed by the splits that leave
    their texts out (:func:`._packing.pack_by_idle_splits`), a fifth of the
    models at 5 folds, so a quarter of a training forward.
    """

    def __init__(self, train_set, held_out, patience, settle=False):
        # settle: the training rule stops a model only at its best objective
        # (._loops.StoppingRule), so its steps end where the held-out loss
        # stopped falling unless its objective truly converged
        self.patience, self.settle = patience, settle
        self.blocks = train_set.batch.blocks
        self.starts = train_set.block_starts
        self.y = train_set.y
        held_out = held_out[train_set.batch.order]  # (n, all models), packed order
        self.w = torch.as_tensor(held_out, device=train_set.y.device, dtype=train_set.w.dtype)
        self.present = [held_out[lo:hi].any(axis=0)
                        for lo, hi in zip(self.starts[:-1], self.starts[1:])]

    def __call__(self, module, rows):
        total = torch.zeros(len(rows), dtype=self.w.dtype, device=self.w.device)
        weight = torch.zeros_like(total)
        for b, block in enumerate(self.blocks):
            local = np.flatnonzero(self.present[b][rows])
            if not len(local):
                continue
            idx = torch.as_tensor(local, device=self.w.device)
            logits = module.models_block_logits(block, local)
            logits = logits.to(module.bias.dtype) + module.bias[idx]
            lo, hi = self.starts[b], self.starts[b + 1]
            w = self.w[lo:hi][:, torch.as_tensor(rows[local], device=self.w.device)]
            loss = per_sample_log_loss(logits, self.y[lo:hi])
            total[idx] += (loss * w).sum(0)
            weight[idx] += w.sum(0)
        return (total / weight.clamp_min(torch.finfo(weight.dtype).tiny)).cpu().numpy()


def adamw_loop(module, train_set, *, learning_rate, max_iter, batch_size, weight_decay,
               tol, n_iter_no_change, validation_set, verbose, desc, held_out=None):
    """AdamW until converged or ``max_iter`` steps; see :func:`fit_module`.

    ``held_out``, for a stack: a callable ``(module, rows) -> losses`` (a
    :class:`HeldOutLoss`) giving
    each working model's loss on its own held-out texts after an epoch (rows:
    the models' original indices); a model also stops once that loss has not
    fallen by ``tol`` for more than ``held_out.patience`` epochs in a row.
    With ``held_out.settle`` the training rule waits for a risen objective
    (:class:`StoppingRule`), overfitting being the held-out rule's to catch."""
    device = train_set.y.device
    stacked = getattr(module, "n_models", None) is not None
    n_models = module.n_models if stacked else 1
    models = _StackedModels(module) if stacked else None
    train_set = copy.copy(train_set)  # its weight columns shrink with the models
    decay = weight_decay
    optimizer = AdamW(module.parameters(), lr=parameter_learning_rates(module, learning_rate))
    # a single probe on the numba backend: objective and gradients without
    # autograd (same values; see _manual_step)
    manual = None if stacked else manual_objective(module, decay)
    rule = StoppingRule(n_models, tol, n_iter_no_change,
                        settle=held_out is not None and held_out.settle)
    held_rule = (StoppingRule(n_models, tol, held_out.patience) if held_out is not None
                 else None)
    held_out_stops = np.zeros(n_models, dtype=bool)
    held_out_curve = []
    n_iter = np.zeros(n_models, dtype=np.int64)
    converged = np.zeros(n_models, dtype=bool)
    loss_curve, val_scores = [], []
    best_state, best_val = None, None
    steps, start = 0, time.perf_counter()
    report = ProgressReporter(max_iter, verbose, desc, unit="step")
    # the manual objective's BLAS rule holds for the whole loop; the kernels'
    # large outputs are reused from step to step (._scratch)
    with (manual.blas_context() if manual is not None else contextlib.nullcontext(),
          _scratch.reuse()):
        while steps < max_iter:
            total, seen = 0.0, 0
            for batch, (y, w) in train_set.epoch(batch_size):
                optimizer.zero_grad(set_to_none=True)
                obj = manual(batch, y, w) if manual is not None else None
                if obj is None:
                    obj = objectives(module, batch, y, w, decay)
                    obj.sum().backward()
                optimizer.step()
                _scratch.tick()
                total = total + obj.detach() * len(batch)
                seen += len(batch)
                steps += 1
                report.advance(1)
                if steps >= max_iter:
                    break
            epoch_loss = np.atleast_1d((total / seen).double().cpu().numpy())
            rows = models.active if stacked else np.arange(1)
            if stacked:
                loss_curve.append(_all_models(n_models, rows, epoch_loss))
            else:
                loss_curve.append(float(epoch_loss[0]))
            monitored = epoch_loss
            if validation_set is not None:
                with torch.no_grad():
                    logits = module(validation_set.batch)
                    val_scores.append(_accuracy(logits, validation_set.y, validation_set.w))
                # as MLPClassifier: the held-out accuracy, higher is better
                monitored = np.array([-val_scores[-1]])
            improved, stopped = rule.update(monitored, rows)
            if held_rule is not None:
                with torch.no_grad():
                    held = np.asarray(held_out(module, rows), dtype=np.float64)
                held_out_curve.append(_all_models(n_models, rows, held))
                _, overfit = held_rule.update(held, rows)
                held_out_stops[rows[overfit & ~stopped]] = True
                stopped = stopped | overfit
            if validation_set is not None and improved[0]:
                best_val = val_scores[-1]
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            n_iter[rows] = steps
            report.status(models=len(rows), loss=float(np.mean(epoch_loss)))
            if stopped.any():
                converged[rows[stopped]] = True
                if stopped.all():
                    break
                keep = np.flatnonzero(~stopped)
                optimizer = models.shrink(keep, optimizer)
                train_set.w = train_set.w[:, torch.as_tensor(keep, device=device)]
                if torch.is_tensor(decay):
                    decay = decay[torch.as_tensor(keep, device=decay.device)]
    if n_iter_no_change is None:
        converged[:] = True  # a fixed number of steps was asked for
    if stacked:
        models.finish()
    if best_state is not None:
        module.load_state_dict(best_state)
    report.close(f"{steps} steps, {'converged' if converged.all() else 'max_iter reached'}"
                 f", {time.perf_counter() - start:.1f} s")
    return FitResult(n_iter=n_iter, loss_curve=loss_curve, converged=converged,
                     validation_scores=val_scores, best_validation_score=best_val,
                     held_out_stops=held_out_stops, held_out_curve=held_out_curve)


def _all_models(n_models, rows, values):
    """``(n_models,)``: ``values`` of the working models ``rows``, NaN for
    the models that have stopped (one epoch's entry of a stack's curve)."""
    curve = np.full(n_models, np.nan)
    curve[rows] = values
    return curve


def _accuracy(logits, y, w):
    pred = (logits[:, 0] > 0).long() if logits.shape[-1] == 1 else logits.argmax(-1)
    return float(((pred == y).to(w.dtype) * w).sum() / w.sum())


def lbfgs_loop(module, train_set, *, max_iter, tol, weight_decay, verbose, desc,
               batch_size=None):
    """Full-batch L-BFGS; see :func:`fit_module`.

    SciPy's L-BFGS-B (as scikit-learn's ``LogisticRegression``) drives the
    module's parameters, flattened to one float64 vector; the objective and
    its gradient are computed by torch in the module's dtype. Why not
    :class:`torch.optim.LBFGS`: constructing it imports ``torch._dynamo``
    (see :mod:`._adamw`), measured at 1.2-1.4 s on the first pooled-probe fit
    of a process against 0.02 s for the fit itself.

    Each evaluation of the objective is one pass of ``train_set.full_pass``:
    the whole packed batch in memory, or a streamed set's texts read from
    the file in order, ``batch_size`` at a time, with the gradients of the
    parts accumulated (the same objective, never all texts in memory).
    Stopping: the largest gradient entry below ``tol``, or a relative change
    of the objective below ``tol * 1e-3`` (``_lbfgs_options``' criteria).
    """
    from scipy.optimize import minimize

    options = _lbfgs_options(max_iter, tol)
    params = list(module.parameters())
    flat = _FlatParameters(params)
    total_w = total_weight(train_set.w)
    losses = []
    report = ProgressReporter(max_iter, verbose, desc, unit="eval")
    start = time.perf_counter()

    def objective_and_gradient(x):
        flat.assign(x)
        for p in params:
            p.grad = None
        obj = 0.0
        for batch, (y, w) in train_set.full_pass(batch_size):
            # this part's share of the weighted mean over all texts
            part = weighted_log_loss(module(batch), y, w, total=total_w)
            part.sum().backward()
            obj = obj + part.detach().sum()
        if has_penalty(module, weight_decay):
            penalty = module.penalty(weight_decay).sum()
            penalty.backward()
            obj = obj + penalty.detach()
        losses.append(obj)
        report.advance(1)
        _scratch.tick()
        return float(obj), flat.gradient()

    with _scratch.reuse():
        res = minimize(objective_and_gradient, flat.values(), jac=True, method="L-BFGS-B",
                       options=dict(maxiter=max_iter, maxfun=options["max_eval"],
                                    maxcor=options["history_size"],
                                    gtol=options["tolerance_grad"],
                                    ftol=options["tolerance_change"]))
    flat.assign(res.x)
    for p in params:
        p.grad = None
    # status 1: an iteration or evaluation limit; 2 (the line search found no
    # decrease) means the objective is flat to its own rounding: converged
    converged = res.status != 1
    n_models = getattr(module, "n_models", 1)
    curve = [float(v) for v in torch.stack(losses).double().cpu()] if losses else []
    report.close(f"{res.nit} L-BFGS iterations, {res.nfev} evaluations, "
                 f"{time.perf_counter() - start:.1f} s")
    return FitResult(n_iter=np.full(n_models, res.nit), loss_curve=curve,
                     converged=np.full(n_models, converged))


class _FlatParameters:
    """A module's parameters as one float64 vector (SciPy's optimizers' view)."""

    def __init__(self, params):
        self.params = params
        self.sizes = [p.numel() for p in params]

    def values(self):
        return torch.cat([p.detach().reshape(-1).double().cpu()
                          for p in self.params]).numpy()

    @torch.no_grad()
    def assign(self, x):
        parts = torch.from_numpy(np.asarray(x, dtype=np.float64)).split(self.sizes)
        for p, part in zip(self.params, parts):
            p.copy_(part.view_as(p))

    def gradient(self):
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            .double().cpu() for p in self.params]).numpy()
