"""The seed's protocol for one (task, layer, method) configuration.

Shabalin & Belrose, "Attention Probes", training procedure: 80/20 train/test
split; 5-fold cross-validation on the training part over weight decay in
{0, 1e-3, 1e-2, 1e-1}; refit with the best one on the whole training part;
accuracy on the test part. Attention probes train with AdamW for 500 steps
(query at zero, values random), mean and last-token probes with L-BFGS for up
to 2000 iterations; the seed also trains a mean probe with AdamW.

A configuration is a small picklable object naming a memory-mapped activation
file, so a joblib worker (loky, or a dask.distributed worker on the same file
system) receives a few hundred bytes and maps the data itself.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
METHODS = ("mean", "mean-adamw", "last", "attn-1", "attn-2", "attn-8")
# relative cost, to hand the longest jobs out first and for the ETA: each
# method's summed fit time in the full SmolLM2 run (probes rerun from the
# cache, 0.2.0): attn-8 1,402 s, attn-2 525, attn-1 478, mean-adamw 91, last 73,
# mean 47 (the old guesses, 6/4/3/1/1/1, put the first ETA at 90 minutes for a
# 22-minute phase)
_COST = {"attn-8": 30, "attn-2": 11, "attn-1": 10, "mean-adamw": 2, "last": 1.5, "mean": 1}


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
            max_iter=max_iter, random_state=seed, device=device)
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


def run_config(config):
    """Fit one configuration; a dict of its results (one CSV row)."""
    import torch

    from sklearn_attnprobe import RaggedArray

    # one thread per worker: the jobs themselves are the parallelism
    torch.set_num_threads(1)
    X = RaggedArray.load(config.data_path, mmap_mode="r")
    X_train, X_test = X[config.train], X[config.test]
    y_train, y_test = config.y[config.train], config.y[config.test]
    search = make_search(config.method, seed=config.seed, max_iter=config.max_iter,
                         device=config.device)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    best = search.best_estimator_
    pred = np.asarray(best.predict(X_test))  # accuracy and the paired bootstrap
    row = {
        "task": config.task,
        "n_classes": config.n_classes,
        "layer": config.layer,
        "method": config.method,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "best_weight_decay": float(search.best_params_["weight_decay"]),
        "cv_accuracy": float(search.best_score_),
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


def run_configs(configs, n_jobs=2, progress=True):
    """Run ``configs`` with joblib under whatever backend is active.

    The caller picks the backend (``joblib.parallel_config(backend="dask")``
    inside a ``dask.distributed.Client`` runs the same jobs on a cluster);
    results come back in the order of ``configs``.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    order = sorted(range(len(configs)), key=lambda i: -configs[i].cost)
    jobs = (delayed(_indexed)(i, configs[i]) for i in order)
    out = [None] * len(configs)
    # a bar over the jobs as they finish, weighted by their expected cost so
    # that its ETA means something when the long jobs go first
    total = sum(c.cost for c in configs)
    with tqdm(total=total, desc="study jobs", unit="", bar_format=_BAR,
              disable=not progress) as bar:
        for i, row in _unordered(Parallel, n_jobs, jobs):
            out[i] = row
            bar.update(configs[i].cost)
            bar.set_postfix_str(f"{sum(r is not None for r in out)}/{len(out)} done, "
                                f"last {configs[i].task} L{configs[i].layer} "
                                f"{configs[i].method}", refresh=True)
    return out


_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def _indexed(i, config):
    return i, run_config(config)


def _unordered(parallel, n_jobs, jobs):
    """Results as they finish (joblib >= 1.4), else in submission order."""
    try:
        runner = parallel(n_jobs=n_jobs, return_as="generator_unordered")
    except (TypeError, ValueError):
        runner = parallel(n_jobs=n_jobs)
    return runner(jobs)
