"""The attention probes' AdamW step size on real activations.

Refits the study's 8-head probe on each (task, layer) of finished study runs,
at the weight decay that run's cross-validation chose for it (``attn-8`` in
its ``results.csv``), once per step-size rule and seed, and records test
accuracy, test log-loss, the steps taken, the final training objective and
the fit time. The rules:

- ``fixed-1e-2``: ``learning_rate=1e-2`` for every parameter (the default);
- ``auto``: ``learning_rate="auto"``: ``min(1e-2, 1 / mean
  ||x_t||_1)`` for the query and the values, ``1e-2`` for the slopes and
  intercepts;
- ``auto-values``: the ``auto`` step for the values only; ``1e-2`` for the
  query, the slopes and the intercepts.

Needle tasks at every layer of a run, the tasks whose evidence is the whole
text at its middle layer::

    python -m benchmarks.study.learning_rate --run /work/study_full \\
        --run /work/study_minilm --out benchmarks/results/learning_rate

``--planted`` runs the harder planted needle of ``benchmarks.choose_defaults``
instead (2,000 training texts of 128 tokens, d_model 384, ``weight_decay=1e-2``,
the penalty CV chooses there), 1 and 8 heads, seeds 0-3: a needle that an
attention fit finds only after a long, slow descent of the objective, or not
at all.
"""

import argparse
import csv
import functools
import time
from pathlib import Path

import numpy as np

RULES = ("fixed-1e-2", "auto", "auto-values")
SEEDS = (0, 1)
PLANTED_SEEDS = (0, 1, 2, 3)
N_HEADS = 8


def _chosen_weight_decays(run):
    """``{(task, layer): weight decay}`` of the run's attn-8 probes."""
    with open(Path(run) / "results.csv") as f:
        return {(r["task"], int(r["layer"])): float(r["best_weight_decay"])
                for r in csv.DictReader(f) if r["method"] == "attn-8"}


def learning_rate_of(rule, X):
    """The ``learning_rate`` argument for ``rule`` on training texts ``X``."""
    if rule == "fixed-1e-2":
        return 1e-2
    if rule == "auto":
        return "auto"
    from sklearn_attnprobe._training import auto_learning_rate

    return {**auto_learning_rate(X), "query": 1e-2}


def _timed_fit(probe, rate, X, y):
    """Fit ``probe`` with step-size rule ``rate``; the seconds it took."""
    from sklearn_attnprobe import _attention

    original = _attention.auto_learning_rate
    if isinstance(rate, dict):  # a per-parameter rule the public API does not offer
        probe.learning_rate = "auto"
        _attention.auto_learning_rate = lambda source: rate
    else:
        probe.learning_rate = rate
    try:
        start = time.perf_counter()
        probe.fit(X, y)
        return time.perf_counter() - start
    finally:
        _attention.auto_learning_rate = original


def job_data(job):
    """``(X_train, y_train, X_test, y_test)`` of a refit job (memory-mapped
    activations; one torch thread per worker)."""
    import torch

    from sklearn_attnprobe import RaggedArray

    torch.set_num_threads(1)
    X = RaggedArray.load(job["path"], mmap_mode="r")
    train, test, y = job["train"], job["test"], job["y"]
    return X[train], y[train], X[test], y[test]


def refit_row(job, probe, X_test, y_test, seconds, **extra):
    """The result row of a refitted probe (``extra`` columns after the
    weight decay)."""
    from sklearn.metrics import log_loss

    proba = probe.predict_proba(X_test)
    pred = probe.classes_[proba.argmax(axis=1)]
    return {"model": job["model"], "task": job["task"], "layer": job["layer"],
            "candidate": job["rule"], "seed": job["seed"],
            "weight_decay": job["weight_decay"], **extra,
            "test_accuracy": round(float(np.mean(pred == y_test)), 4),
            "test_log_loss": round(float(log_loss(y_test, proba, labels=probe.classes_)), 5),
            "n_iter": int(probe.n_iter_),
            "final_objective": round(float(probe.loss_curve_[-1]), 5),
            "fit_seconds": round(seconds, 2)}


def run_job(job):
    """Refit one (task, layer) with one rule and seed; a result row."""
    from sklearn_attnprobe import AttentionProbeClassifier

    X_train, y_train, X_test, y_test = job_data(job)
    rate = learning_rate_of(job["rule"], X_train)
    probe = AttentionProbeClassifier(n_heads=N_HEADS, weight_decay=job["weight_decay"],
                                     max_iter=500, random_state=job["seed"])
    seconds = _timed_fit(probe, rate, X_train, y_train)
    value_rate = rate["value"] if isinstance(rate, dict) else probe.learning_rate_
    return refit_row(job, probe, X_test, y_test, seconds,
                     query_learning_rate=round(float(probe.learning_rate_), 6),
                     value_learning_rate=round(float(value_rate), 6))


@functools.lru_cache(maxsize=1)
def _harder_needle():
    """The d 384 needle task of ``benchmarks.choose_defaults`` (its last
    column), built once per worker process instead of once per job."""
    from benchmarks.choose_defaults import TASKS, task_data

    _, task, n_classes, settings = next(t for t in TASKS if t[3].get("d_model") == 384)
    return task_data(task, n_classes, **settings)


def run_planted_job(job):
    """The harder planted needle with one rule, head count and seed."""
    import torch

    from sklearn_attnprobe import AttentionProbeClassifier

    torch.set_num_threads(1)
    X, y, X_test, y_test = _harder_needle()
    rate = learning_rate_of(job["rule"], X)
    probe = AttentionProbeClassifier(n_heads=job["heads"], weight_decay=1e-2,
                                     random_state=job["seed"])
    seconds = _timed_fit(probe, rate, X, y)
    return {"task": "planted needle d 384", "heads": job["heads"], "candidate": job["rule"],
            "seed": job["seed"], "test_accuracy": round(float(probe.score(X_test, y_test)), 4),
            "n_iter": int(probe.n_iter_), "fit_seconds": round(seconds, 2)}


def planted_markdown(rows):
    """Test accuracy (steps) per head count and seed, one column per rule."""
    lines = ["| heads | seed | " + " | ".join(RULES) + " |",
             "|---|---|" + "---|" * len(RULES)]
    cell = {(r["heads"], r["seed"], r["candidate"]): r for r in rows}
    for heads in (1, N_HEADS):
        for seed in PLANTED_SEEDS:
            lines.append(f"| {heads} | {seed} | " + " | ".join(
                f"{cell[heads, seed, rule]['test_accuracy']:.3f} "
                f"({cell[heads, seed, rule]['n_iter']})" for rule in RULES) + " |")
    return "\n".join(lines) + "\n"


def jobs_of_runs(runs, rules=RULES, seeds=SEEDS):
    """A job per (task, layer) of the runs' screened pairs, rule and seed, at
    the weight decay each run chose for attn-8."""
    from .candidates import jobs_of_run

    jobs = []
    for run in runs:
        chosen = _chosen_weight_decays(run)
        for scope in ("needle", "control"):
            for job in jobs_of_run(run, scope, ["baseline"]):
                for rule in rules:
                    for seed in seeds:
                        jobs.append({**job, "rule": rule, "seed": seed,
                                     "weight_decay": chosen[(job["task"], job["layer"])]})
    return jobs


def summary_markdown(rows, rules=RULES):
    """Mean over (task, layer, seed) per model, scope and rule."""
    import pandas as pd

    d = pd.DataFrame(rows)
    d["scope"] = np.where(d.task.str.startswith("needle"), "needle", "whole text")
    d["candidate"] = pd.Categorical(d.candidate, categories=rules, ordered=True)
    d = d.sort_values(["model", "scope", "candidate"], ascending=[False, True, True])
    g = d.groupby(["model", "scope", "candidate"], sort=False, observed=True).agg(
        fits=("n_iter", "size"), accuracy=("test_accuracy", "mean"),
        log_loss=("test_log_loss", "mean"), worst_objective=("final_objective", "max"),
        steps=("n_iter", "mean"), seconds=("fit_seconds", "sum"))
    lines = ["| model | tasks | rule | fits | test accuracy | test log-loss | "
             "largest final objective | mean steps | summed fit seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (model, scope, rule), r in g.iterrows():
        lines.append(f"| {model} | {scope} | {rule} | {int(r.fits)} | {r.accuracy:.4f} | "
                     f"{r.log_loss:.4f} | {r.worst_objective:.3f} | {r.steps:.0f} | "
                     f"{r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from .candidates import _run_all

    p = argparse.ArgumentParser(prog="python -m benchmarks.study.learning_rate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, action="append", default=[],
                   help="a finished study run's folder (repeat for several models)")
    p.add_argument("--planted", action="store_true",
                   help="the harder planted needle instead of the runs' tasks")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learning_rate"))
    p.add_argument("--n-jobs", type=int, default=2)
    args = p.parse_args(argv)
    if args.planted:
        args.scope = "planted"
        jobs = [{"rule": rule, "heads": heads, "seed": seed, "cost": heads}
                for heads in (1, N_HEADS) for seed in PLANTED_SEEDS for rule in RULES]
        rows = _run_all(jobs, run_planted_job, args, "planted.csv")
        (args.out / "planted.md").write_text(planted_markdown(rows))
        return
    if not args.run:
        p.error("give at least one --run, or --planted")
    args.scope = "learning_rate"
    for job in (jobs := jobs_of_runs(args.run)):
        job["cost"] = len(job["train"])
    rows = _run_all(jobs, run_job, args, "learning_rate.csv")
    (args.out / "learning_rate.md").write_text(summary_markdown(rows))
    print(f"wrote {args.out / 'learning_rate.md'}")


if __name__ == "__main__":
    main()
