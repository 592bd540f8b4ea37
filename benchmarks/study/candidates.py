"""Training choices that might make the attention find the evidence (issue 14).

Each *candidate* changes one thing in how the CV-tuned 8-head probe
(:class:`~sklearn_attnprobe.AttentionProbeClassifierCV`, the study's 4
weight decays x 5 folds, seed 0) is trained; everything else is the
study's protocol, on the activations a finished study run cached:

- ``baseline``: the package as it is (zero query, random values, one
  weight decay on query and values, AdamW).
- ``values-only-penalty``: ``query_weight_decay=0``: the weight decay
  penalises the values only; the query is free, so a sharp attention costs
  nothing by itself. (The needle and control runs of the committed results
  patched the penalty to the same effect, before the parameter existed.)
- ``random-query``: the query starts random (normal, std ``1/sqrt(d)``, so
  the initial logits have unit scale on standardised activations) instead
  of zero: each head starts from its own attention pattern.
- ``mean-init``: the values start from the mean probe fitted on the
  training part (:class:`~sklearn_attnprobe.MeanProbeClassifierCV`): head
  ``h`` gets ``W / H`` plus random values that sum to zero over the heads,
  so step 0 *is* the mean probe and the heads still differ. (Screening
  shortcut: one mean probe for all CV models, so it has seen each fold's
  validation texts; the test part stays unseen.)
- ``lbfgs``: ``solver="lbfgs"``.

Per (model, task, layer, candidate) it records test accuracy, the evidence
recall of the 8 heads (mean over heads, best head), the chosen weight decay
and the fit time::

    python -m benchmarks.study.candidates --run /work/study_full \\
        --run /work/study_minilm --scope needle --out benchmarks/results/candidates

``--scope control`` runs the tasks whose evidence is the whole text, at each
run's middle layer (every layer with ``--all-layers``), to check that a
candidate costs nothing there.

``--refit`` screens changes of the refit instead (:mod:`.candidates_refit`).
"""

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

CANDIDATES = ("baseline", "values-only-penalty", "random-query", "mean-init", "lbfgs")
N_HEADS = 8


# -- the candidates: patches active while one probe is fitted -----------------------------
def _restore(undo):
    """Undo ``(object, attribute, original value)`` patches, last first."""
    for obj, attr, value in reversed(undo):
        setattr(obj, attr, value)


def _patched_init(cls, after):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        after(self)

    return original, __init__


@contextlib.contextmanager
def candidate(name, mean_probe=None):
    """Patch the package for candidate ``name`` while the block runs.

    ``mean_probe`` is ``(W (d, C), b (C,))`` for ``mean-init``.
    """
    import torch

    from sklearn_attnprobe import _modules

    undo = []
    if name in ("random-query", "mean-init"):
        gen = torch.Generator().manual_seed(0)

        def after(module):
            with torch.no_grad():
                if name == "random-query":
                    q = torch.randn(module.query.shape, generator=gen, dtype=torch.float64)
                    module.query.copy_(q / np.sqrt(module.query.shape[0]))
                    return
                W, b = (torch.as_tensor(a, dtype=torch.float64) for a in mean_probe)
                value = module.value.detach().double()  # (heads, d, C)
                # a stack's rows are its models' heads, model after model
                counts = getattr(module, "head_counts", [value.shape[0]])
                module.value.copy_(torch.cat([
                    W / len(v) + (v - v.mean(dim=0, keepdim=True))
                    for v in value.split([int(h) for h in counts])]))
                module.bias.copy_(b.expand_as(module.bias))

        for cls in (_modules.AttentionProbeModule, _modules.StackedAttentionProbeModule):
            original, init = _patched_init(cls, after)
            undo.append((cls, "__init__", original))
            cls.__init__ = init
    elif name not in ("baseline", "lbfgs", "values-only-penalty"):
        raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")
    try:
        yield
    finally:
        _restore(undo)


def _result_row(job, name, probe, X_test, wd, seconds, **extra):
    """Test accuracy, evidence recall (needle tasks) and per-text correctness."""
    from .evidence import evidence_recall, summarise_recall

    test, y = job["test"], job["y"]
    pred = probe.predict(X_test)
    row = {k: job[k] for k in ("model", "task", "layer")}
    row.update(candidate=name, test_accuracy=round(float(np.mean(pred == y[test])), 4),
               best_weight_decay=wd, fit_seconds=round(seconds, 1), n_test=len(test),
               **extra)
    evidence = job.get("evidence")
    if evidence is not None:
        has = np.array([len(evidence[i]) > 0 for i in test])
        recall = evidence_recall(probe.attention_weights(X_test[has]),
                                 [evidence[i] for i in test[has]])
        mean_head, best, _ = summarise_recall(recall)
        row.update(recall_mean_head=round(mean_head, 4), recall_best_head=round(best, 4))
    row["correct"] = "".join("1" if p == t else "0" for p, t in zip(pred, y[test]))
    return row


# -- one fit -------------------------------------------------------------------------------
def run_job(job):
    """Fit one candidate on one (task, layer); a dict of results."""
    import torch

    from sklearn_attnprobe import AttentionProbeClassifierCV, MeanProbeClassifierCV, RaggedArray

    from .protocol import WEIGHT_DECAYS

    torch.set_num_threads(1)
    X = RaggedArray.load(job["path"], mmap_mode="r")
    train, test, y = job["train"], job["test"], job["y"]
    X_train, X_test = X[train], X[test]
    start = time.perf_counter()
    mean_probe = None
    if job["candidate"] == "mean-init":
        mean = MeanProbeClassifierCV(weight_decays=WEIGHT_DECAYS, cv=5).fit(X_train, y[train])
        mean_probe = (mean.best_estimator_.coef_.T, mean.best_estimator_.intercept_)
    probe = AttentionProbeClassifierCV(
        n_heads=N_HEADS, weight_decays=WEIGHT_DECAYS, cv=5, max_iter=500,
        random_state=job["seed"], solver="lbfgs" if job["candidate"] == "lbfgs" else "adamw",
        query_weight_decay=0.0 if job["candidate"] == "values-only-penalty" else None)
    with candidate(job["candidate"], mean_probe):
        probe.fit(X_train, y[train])
        seconds = time.perf_counter() - start
        return _result_row(job, job["candidate"], probe, X_test,
                           probe.best_params_["weight_decay"], seconds)


# -- the jobs of a finished study run ------------------------------------------------------
def jobs_of_run(out, scope, candidates, all_layers=False):
    """Jobs for the run in ``out``: needle tasks at every layer, or the
    whole-text tasks at the middle layer (at every layer with ``all_layers``)."""
    from .evidence import _run_args, read_evidence, tasks_of_run
    from .run import _data_paths, _split

    needle = scope == "needle"
    # a task whose texts no longer rebuild has labels that cannot be matched
    # to the cached rows: it is reported and left out
    built, model, layers, max_length, seed = tasks_of_run(out, spans=needle,
                                                          on_mismatch="skip")
    run_args = _run_args(Path(out) / "cache", model, layers, max_length, seed)
    jobs = []
    for task in built:
        folder, paths = _data_paths(run_args, task)
        evidence = read_evidence(folder)[0] if needle else None
        train, test = _split(task.y, seed)
        use = layers if needle or all_layers else [layers[len(layers) // 2]]
        for layer in use:
            for name in candidates:
                jobs.append({"model": model, "task": task.name, "layer": int(layer),
                             "candidate": name, "path": str(paths[layer]),
                             "y": np.asarray(task.y), "train": train, "test": test,
                             "seed": seed, "evidence": evidence,
                             "cost": len(train) * (3 if name == "lbfgs" else 1)})
    return jobs


def run_planted(job):
    """The planted tasks of ``benchmarks.choose_defaults`` (1,000 training and
    2,000 test texts, d 128): the CV-tuned probe with the query penalised
    with the values (0.1) or free (``query_weight_decay=0``)."""
    import torch

    from benchmarks.choose_defaults import task_data
    from sklearn_attnprobe import AttentionProbeClassifierCV

    from .protocol import WEIGHT_DECAYS

    torch.set_num_threads(1)
    X, y, X_test, y_test = task_data(job["task"], job["n_classes"])
    qwd = 0.0 if job["candidate"] == "values-only-penalty" else None
    start = time.perf_counter()
    probe = AttentionProbeClassifierCV(n_heads=job["n_heads"], weight_decays=WEIGHT_DECAYS,
                                       cv=5, query_weight_decay=qwd, random_state=0)
    probe.fit(X, y)
    return {"task": f"{job['task']}-{job['n_classes']}", "heads": job["n_heads"],
            "candidate": job["candidate"], "test_accuracy": round(probe.score(X_test, y_test), 4),
            "best_weight_decay": probe.best_params_["weight_decay"],
            "fit_seconds": round(time.perf_counter() - start, 1)}


def planted_jobs():
    from benchmarks.choose_defaults import TASKS

    # the d 128 tasks (those with default data settings), as run_planted builds them
    return [{"task": t, "n_classes": c, "n_heads": h, "candidate": cand, "cost": h}
            for _, t, c, settings in TASKS if not settings for h in (1, 8)
            for cand in ("baseline", "values-only-penalty")]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.study.candidates",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, action="append", default=[],
                   help="a finished study run's folder (repeat for several models)")
    p.add_argument("--scope", choices=("needle", "control", "planted"), default="needle")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/candidates"))
    p.add_argument("--all-layers", action="store_true",
                   help="control scope: every layer of the run, not only the middle one")
    p.add_argument("--refit", action="store_true",
                   help="screen the refit variants (candidates_refit) instead")
    p.add_argument("--n-jobs", type=int, default=2)
    args = p.parse_args(argv)
    if args.scope != "planted" and not args.run:
        p.error(f"--scope {args.scope} needs at least one --run")
    if args.refit:
        from .candidates_refit import planted_refit_jobs, run_refit_job

        name = f"{args.scope}_refit.csv"
        if args.scope == "planted":  # the planted texts, written for the run only
            with tempfile.TemporaryDirectory() as folder:
                return _run_all(planted_refit_jobs(folder), run_refit_job, args, name)
        jobs = [j for run in args.run
                for j in jobs_of_run(run, args.scope, ["baseline"], args.all_layers)]
        return _run_all(jobs, run_refit_job, args, name)
    if args.scope == "planted":
        return _run_all(planted_jobs(), run_planted, args)
    jobs = [j for run in args.run
            for j in jobs_of_run(run, args.scope, args.candidates, args.all_layers)]
    return _run_all(jobs, run_job, args)


def _run_all(jobs, func, args, name=None):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from .stats import write_csv

    jobs.sort(key=lambda j: -j["cost"])
    rows = []
    out_csv = args.out / (name or f"{args.scope}.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Parallel(n_jobs=args.n_jobs, return_as="generator_unordered")
    with tqdm(total=len(jobs), desc=f"candidates ({args.scope})") as bar:
        for out in runner(delayed(func)(j) for j in jobs):
            row = out[0] if isinstance(out, list) else out
            rows += out if isinstance(out, list) else [out]
            bar.update(1)
            bar.set_postfix_str(f"{row['task']} {row['candidate']} "
                                f"{row['test_accuracy']:.3f}")
            rows.sort(key=lambda r: tuple(str(r[k]) for k in list(r)[:4]))
            write_csv(rows, out_csv)  # partial results survive an interruption
    print(f"wrote {out_csv}")
    return rows


if __name__ == "__main__":
    main()
