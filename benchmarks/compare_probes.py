"""Compare the probes with the seed's protocol on the built-in planted tasks.

Protocol (Shabalin & Belrose, "Attention Probes"): an 80/20 train/test split,
5-fold cross-validation over weight decay in {0, 1e-3, 1e-2, 1e-1} on the
training part, refit on all of it, accuracy on the test part. Probes: mean and
last-token (L-BFGS) and attention probes with 1, 2 and 8 heads (AdamW).

The cross-validation runs through the batched CV classes (all 20 fold x
weight-decay models of a probe in one pass); ``--gridsearch`` runs the same
protocol through scikit-learn's GridSearchCV instead. Each (task, probe)
configuration runs in its own joblib worker (one torch thread each). Prints a
markdown table and writes CSV / markdown files.

    python benchmarks/compare_probes.py [--n-texts 500] [--n-jobs 2] [--out DIR]
"""

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.model_selection import GridSearchCV, train_test_split

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    LastTokenProbeClassifier,
    LastTokenProbeClassifierCV,
    MeanProbeClassifier,
    MeanProbeClassifierCV,
)
from sklearn_attnprobe.datasets import PLANTED_TASKS, make_planted_task

WEIGHT_DECAYS = [0.0, 1e-3, 1e-2, 1e-1]
# name -> (estimator, batched CV class, its parameters)
PROBES = {
    "mean": (MeanProbeClassifier, MeanProbeClassifierCV, {}),
    "last": (LastTokenProbeClassifier, LastTokenProbeClassifierCV, {}),
    "attn-1": (AttentionProbeClassifier, AttentionProbeClassifierCV, {"n_heads": 1}),
    "attn-2": (AttentionProbeClassifier, AttentionProbeClassifierCV, {"n_heads": 2}),
    "attn-8": (AttentionProbeClassifier, AttentionProbeClassifierCV, {"n_heads": 8}),
}


def make_search(probe_name, seed, gridsearch):
    Estimator, CV, params = PROBES[probe_name]
    if "n_heads" in params:
        params = {**params, "random_state": seed}
    if gridsearch:
        return GridSearchCV(Estimator(**params), {"weight_decay": WEIGHT_DECAYS}, cv=5)
    return CV(weight_decays=WEIGHT_DECAYS, cv=5, **params)


def run_config(task, probe_name, args):
    import torch

    torch.set_num_threads(1)
    X, y = make_planted_task(task, n_texts=args.n_texts, d_model=args.d_model,
                             n_classes=args.n_classes, random_state=args.seed,
                             return_ragged=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, stratify=y,
                                          random_state=args.seed)
    search = make_search(probe_name, args.seed, args.gridsearch)
    start = time.perf_counter()
    search.fit(Xtr, ytr)
    elapsed = time.perf_counter() - start
    best = search.best_estimator_
    row = {
        "task": task,
        "probe": probe_name,
        "best_weight_decay": search.best_params_["weight_decay"],
        "cv_accuracy": search.best_score_,
        "test_accuracy": best.score(Xte, yte),
        "entropy_ratio": float("nan"),
        "search_seconds": elapsed,
    }
    if hasattr(best, "attention_entropy"):
        row["entropy_ratio"] = float(best.attention_entropy(Xte).ratio.mean())
    return row


def markdown(rows):
    head = ["task", "probe", "best wd", "CV acc", "test acc", "entropy ratio",
            "search s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ent = "" if np.isnan(r["entropy_ratio"]) else f"{r['entropy_ratio']:.3f}"
        lines.append(
            f"| {r['task']} | {r['probe']} | {r['best_weight_decay']:g} | "
            f"{r['cv_accuracy']:.3f} | {r['test_accuracy']:.3f} | {ent} | "
            f"{r['search_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=500)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-classes", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(PLANTED_TASKS),
                        choices=PLANTED_TASKS)
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--n-jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gridsearch", action="store_true",
                        help="cross-validate with GridSearchCV instead of the CV classes")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.csv and results.md")
    args = parser.parse_args(argv)

    configs = [(t, p) for t in args.tasks for p in args.probes]
    how = "GridSearchCV" if args.gridsearch else "batched CV classes"
    print(f"{len(configs)} configurations x (5-fold CV over {len(WEIGHT_DECAYS)} "
          f"weight decays with {how}, then a refit), n_jobs={args.n_jobs}", flush=True)
    start = time.perf_counter()
    rows = Parallel(n_jobs=args.n_jobs)(delayed(run_config)(t, p, args) for t, p in configs)
    total = time.perf_counter() - start
    table = markdown(rows)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}")
    summary = (f"{table}\n\n{args.n_texts} texts per task (80/20 split), d_model "
               f"{args.d_model}, {args.n_classes} classes; total {total:.0f} s on {machine}.")
    print(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "results.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (args.out / "results.md").write_text(summary + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
