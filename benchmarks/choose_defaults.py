"""Measure candidate defaults of the probes on the planted tasks.

For each planted task (1,000 training texts of 16-128 tokens, d_model 128,
2,000 test texts from the same task), fit the attention probe (1 and 8 heads)
and the mean probe over a grid of penalties, solvers and step sizes, and
record test accuracy, fit time and iterations. The table behind the defaults
in ``docs/user_guide/defaults.rst``.

    python -m benchmarks.choose_defaults --out benchmarks/results/defaults
"""

import argparse
import itertools
import json
import os
import time
import warnings

import numpy as np
import torch

from sklearn_attnprobe import AttentionProbeClassifier, MeanProbeClassifier
from sklearn_attnprobe.datasets import make_planted_task

TASKS = [("needle", 2), ("shift", 2), ("shift", 8), ("last", 2)]


def task_data(task, n_classes, n_train=1000, n_test=2000, d_model=128, seed=0):
    X, y = make_planted_task(task, n_texts=n_train + n_test, d_model=d_model,
                             n_classes=n_classes, min_length=16, max_length=128,
                             return_ragged=True, random_state=seed)
    idx = np.arange(len(y))
    return X[idx[:n_train]], y[:n_train], X[idx[n_train:]], y[n_train:]


def attention_grid(quick):
    wds = [0.0, 1e-3, 1e-2] if quick else [0.0, 1e-4, 1e-3, 1e-2, 3e-2]
    for n_heads, wd in itertools.product([1, 8], wds):
        yield "attention", dict(n_heads=n_heads, weight_decay=wd, solver="adamw",
                                learning_rate=1e-2)
        yield "attention", dict(n_heads=n_heads, weight_decay=wd, solver="lbfgs",
                                max_iter=100)
        if not quick:
            yield "attention", dict(n_heads=n_heads, weight_decay=wd, solver="adamw",
                                    learning_rate=1e-2, n_iter_no_change=None)
    for wd in wds:
        yield "mean", dict(weight_decay=wd)


def fit_one(kind, params, data):
    Xa, ya, Xb, yb = data
    cls = AttentionProbeClassifier if kind == "attention" else MeanProbeClassifier
    est = cls(random_state=0, **params) if kind == "attention" else cls(**params)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(Xa, ya)
    seconds = time.perf_counter() - start
    return dict(kind=kind, params=params, test_accuracy=float(est.score(Xb, yb)),
                train_accuracy=float(est.score(Xa, ya)), fit_s=seconds,
                n_iter=int(est.n_iter_),
                warned=any("converge" in str(w.message) for w in caught))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/defaults")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for task, n_classes in TASKS:
        data = task_data(task, n_classes)
        for kind, params in attention_grid(args.quick):
            row = dict(task=task, n_classes=n_classes, **fit_one(kind, params, data))
            rows.append(row)
            print(f"{task}/{n_classes} {kind} {params}: acc {row['test_accuracy']:.3f} "
                  f"{row['fit_s']:.1f}s n_iter {row['n_iter']}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "defaults.json"), "w") as f:
        json.dump(dict(rows=rows, torch=torch.__version__), f, indent=1)


if __name__ == "__main__":
    main()
