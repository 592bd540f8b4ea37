"""The seed's protocol for one (task, layer, method) configuration.

Shabalin & Belrose, "Attention Probes", training procedure: 80/20 train/test
split; 5-fold cross-validation on the training part over weight decay in
{0, 1e-3, 1e-2, 1e-1}; refit with the best one on the whole training part;
accuracy on the test part. Attention probes train with AdamW for 500 steps
(query at zero, values random), mean and last-token probes with L-BFGS for up
to 2000 iterations; the seed also trains a mean probe with AdamW.

Two departures. For time: in the attention probes' cross-validation a model
also stops once its loss on its split's held-out texts has not fallen for more
than ``HELD_OUT_PATIENCE`` epochs in a row (``held_out_stopping``). Measured
on 8 (task, layer) pairs of the study: 59% of the cross-validation's
model-steps, test accuracy of the refitted probes +0.001 on average (worst
-0.01). For accuracy: the refit trains for the mean steps of the chosen
candidate's fold models instead of until its own rule stops it
(``refit_steps="cv"``), so that it stops about where held-out texts stopped
gaining. The docs' "Training" page has the measurements of both, and a
needle where both are a risk.

A configuration is a small picklable object naming a memory-mapped activation
file, so a joblib worker (loky, or a dask.distributed worker on the same file
system) receives a few hundred bytes and maps the data itself.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
HELD_OUT_PATIENCE = 20
METHODS = ("mean", "mean-adamw", "last", "attn-1", "attn-2", "attn-8")
# relative cost, to hand the longest jobs out first and for the ETA: each
# method's summed fit time in a full SmolLM2 probe run from the activation
# cache with held-out stopping (0.2.0): attn-8 870 s, attn-2 287, attn-1 217,
# mean-adamw 99, last 79, mean 48
_COST = {"attn-8": 18, "attn-2": 6, "attn-1": 4.5, "mean-adamw": 2, "last": 1.6, "mean": 1}


@dataclass(frozen=True, eq=False)
class Config:
    """One job: fit ``method`` on ``data_path`` (a RaggedArray .npz)."""

    task: str
    n_classes: int
    layer: int
    method: str
    data_path: str
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    seed: int = 0
    max_iter: int = 500
    tokens_path: str | None = None   # JSON token strings, for the reports
    report_dir: str | None = None
    device: str = "cpu"              # "cuda" / "auto": the probes train there
    probe_dir: str | None = None     # fitted attention probes saved here (safetensors)

    @property
    def cost(self):
        return _COST[self.method] * len(self.y)


def make_search(method, *, seed=0, max_iter=500, cv=5, device="cpu"):
    """The cross-validated estimator for ``method`` (fit it on the train part)."""
    from sklearn_attnprobe import (
        AttentionProbeClassifierCV,
        LastTokenProbeClassifierCV,
        MeanProbeClassifierCV,
    )

    if method == "mean":
        return MeanProbeClassifierCV(weight_decays=WEIGHT_DECAYS, cv=cv, device=device)
    if method == "last":
        return LastTokenProbeClassifierCV(weight_decays=WEIGHT_DECAYS, cv=cv,
                                          device=device)
    if method == "mean-adamw":
        # GridSearchCV(MeanProbeClassifier(solver="adamw")) over the decays,
        # its 20 fits trained as one stacked linear model (same models)
        from ._mean_adamw import MeanAdamWSearchCV

        return MeanAdamWSearchCV(weight_decays=WEIGHT_DECAYS, cv=cv, max_iter=max_iter,
                                 random_state=seed, device=device)
    if method.startswith("attn-"):
        return AttentionProbeClassifierCV(
            n_heads=int(method.split("-")[1]), weight_decays=WEIGHT_DECAYS, cv=cv,
            max_iter=max_iter, held_out_stopping=HELD_OUT_PATIENCE, refit_steps="cv",
            random_state=seed, device=device)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _write_reports(probe, X_test, config):
    """Maximum-activating examples of an attention probe on the test texts."""
    import json

    from sklearn_attnprobe.inspection import max_activating_examples

    with open(config.tokens_path) as fh:
        tokens = json.load(fh)
    tokens_test = [tokens[i] for i in config.test]
    report = max_activating_examples(probe, X_test, tokens_test, n_examples=8)
    stem = Path(config.report_dir) / f"{config.task}_L{config.layer}_{config.method}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".txt").write_text(report.to_text())
    report.save_html(stem.with_suffix(".html"))


def _load(config):
    """``(X_train, X_test, y_train, y_test)`` of a configuration, memory-mapped."""
    import torch

    from sklearn_attnprobe import RaggedArray

    # one thread per worker: the jobs themselves are the parallelism
    torch.set_num_threads(1)
    X = RaggedArray.load(config.data_path, mmap_mode="r")
    return (X[config.train], X[config.test], config.y[config.train],
            config.y[config.test])


def run_config(config):
    """Fit one configuration; a dict of its results (one CSV row)."""
    X_train, X_test, y_train, y_test = _load(config)
    search = make_search(config.method, seed=config.seed, max_iter=config.max_iter,
                         device=config.device)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    return _result_row(config, search.best_estimator_, search.best_params_["weight_decay"],
                       search.best_score_, seconds, X_test, y_test, len(y_train))


def run_attention_configs(configs):
    """Fit the attention configurations of one (task, layer) together: one
    cross-validated pass over every (head count, weight decay) pair (the
    models of all head counts share one stacked step), then, per head count,
    the refit of its best weight decay, as its own search would have chosen
    and refitted it. One row per configuration, in order.

    A row's ``fit_seconds`` is its refit plus the share of the shared pass
    its models took: their steps times heads over all models' steps times
    heads."""
    from sklearn_attnprobe import AttentionProbeClassifier

    config = configs[0]
    X_train, X_test, y_train, y_test = _load(config)
    heads = [_heads(c.method) for c in configs]
    search = make_search(config.method, seed=config.seed, max_iter=config.max_iter,
                         device=config.device)
    search.set_params(n_heads=heads, refit=False)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    shared = time.perf_counter() - start
    res = search.cv_results_
    n_heads = np.asarray(res["param_n_heads"], dtype=int)
    work = (search.n_iter_ * n_heads).sum(axis=0)  # steps x heads per candidate
    best_of = best_by_head_count(res)
    rows = []
    for c, h in zip(configs, heads):
        mine = np.flatnonzero(n_heads == h)
        best = best_of[h]
        wd = res["params"][best]["weight_decay"]
        start = time.perf_counter()
        probe = AttentionProbeClassifier(**search._refit_params(best))  # as its refit
        probe.fit(X_train, y_train)
        seconds = time.perf_counter() - start + shared * work[mine].sum() / work.sum()
        rows.append(_result_row(c, probe, wd, float(res["mean_test_score"][best]), seconds,
                                X_test, y_test, len(y_train)))
    return rows


def best_by_head_count(cv_results):
    """``{head count: index of its best candidate}`` in a search over
    ``n_heads``: within each head count, GridSearchCV's rank 1 (the first of
    the best mean scores, rounded to 12 digits), the choice that head count's
    own search would make."""
    n_heads = np.asarray(cv_results["param_n_heads"], dtype=int)
    mean = np.round(cv_results["mean_test_score"], 12)
    best = {}
    for h in dict.fromkeys(n_heads.tolist()):
        mine = np.flatnonzero(n_heads == h)
        best[h] = int(mine[np.argmax(mean[mine])])
    return best


def _heads(method):
    return int(method.split("-")[1])


def _result_row(config, best, weight_decay, cv_score, seconds, X_test, y_test, n_train):
    """The CSV row of a fitted configuration (with its per-text lists)."""
    pred = np.asarray(best.predict(X_test))  # accuracy and the paired bootstrap
    row = {
        "task": config.task,
        "n_classes": config.n_classes,
        "layer": config.layer,
        "method": config.method,
        "n_train": n_train,
        "n_test": len(y_test),
        "best_weight_decay": float(weight_decay),
        "cv_accuracy": float(cv_score),
        "test_accuracy": float(np.mean(pred == y_test)),
        "entropy_ratio": float("nan"),
        "fit_seconds": seconds,
    }
    # per-text test predictions (and entropies), for the paired bootstrap of
    # stats.py; run.py moves them out of the row into predictions.csv
    row["_pred"] = pred.tolist()
    row["_entropy"] = None
    if hasattr(best, "attention_entropy"):
        # the seed's statistic: per text and head, entropy of the attention
        # over its entropy if uniform, averaged over the test texts and heads
        ratio = np.asarray(best.attention_entropy(X_test).ratio, dtype=float)
        row["entropy_ratio"] = float(ratio.mean())
        row["_entropy"] = ratio.reshape(len(y_test), -1).mean(axis=1).tolist()
        if config.tokens_path and config.report_dir:
            _write_reports(best, X_test, config)
        if config.probe_dir:
            # for analyses after the run (where the attention lands) without refitting
            folder = Path(config.probe_dir)
            folder.mkdir(parents=True, exist_ok=True)
            best.save(folder / f"{config.task}_L{config.layer}_{config.method}.safetensors")
    return row


def _jobs(configs, n_workers):
    """Index groups, one per job: the attention methods of a (task, layer)
    together (:func:`run_attention_configs`), every other configuration alone.

    Grouping costs parallelism: a group is one job on one worker. It is done
    only where there are at least two groups per worker (the full study has
    30 for 2 workers); with fewer (``--quick``: one (task, layer)) the
    attention probes run as separate jobs: the quick study's probe phase took
    19 s so on 2 cores, against 26 s as one job."""
    groups = {}
    for i, c in enumerate(configs):
        key = i
        if c.method.startswith("attn-"):
            # everything the shared search depends on (one split object per task)
            key = (c.data_path, c.task, c.layer, c.seed, c.max_iter, c.device, id(c.train),
                   id(c.test))
            if any(configs[j].method == c.method for j in groups.get(key, [])):
                key = (key, i)  # a repeated method runs on its own
        groups.setdefault(key, []).append(i)
    jobs = list(groups.values())
    if sum(len(job) > 1 for job in jobs) < 2 * n_workers:
        return [[i] for i in range(len(configs))]
    return jobs


def _run_job(indices, group):
    """``[(index, row)]`` for the configurations ``group`` (at ``indices``)."""
    if group[0].method.startswith("attn-"):
        return list(zip(indices, run_attention_configs(group)))
    return [(indices[0], run_config(group[0]))]


def run_configs(configs, n_jobs=2, progress=True):
    """Run ``configs`` with joblib under whatever backend is active.

    The caller picks the backend (``joblib.parallel_config(backend="dask")``
    inside a ``dask.distributed.Client`` runs the same jobs on a cluster);
    results come back in the order of ``configs``.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    jobs = _jobs(configs, n_jobs if n_jobs > 0 else (os.cpu_count() or 1))
    cost = [sum(configs[i].cost for i in job) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda j: -cost[j])
    # each job receives its own configurations only (a few hundred bytes each)
    tasks = (delayed(_run_job)(jobs[j], [configs[i] for i in jobs[j]]) for j in order)
    out = [None] * len(configs)
    # a bar over the jobs as they finish, weighted by their expected cost so
    # that its ETA means something when the long jobs go first
    with tqdm(total=sum(cost), desc="study jobs", unit="", bar_format=_BAR,
              disable=not progress) as bar:
        for done in _unordered(Parallel, n_jobs, tasks):
            for i, row in done:
                out[i] = row
                bar.update(configs[i].cost)
            c = configs[done[-1][0]]
            bar.set_postfix_str(f"{sum(r is not None for r in out)}/{len(out)} done, "
                                f"last {c.task} L{c.layer} {c.method}", refresh=True)
    return out


_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def _unordered(parallel, n_jobs, jobs):
    """Results as they finish (joblib >= 1.4), else in submission order."""
    try:
        runner = parallel(n_jobs=n_jobs, return_as="generator_unordered")
    except (TypeError, ValueError):
        runner = parallel(n_jobs=n_jobs)
    return runner(jobs)
