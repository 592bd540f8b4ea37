"""How the attention probe's refit stops, on real activations.

Refits the study's 8-head probe on the pairs of
``benchmarks.study.learning_rate`` (each run's needle tasks at every layer,
its whole-text tasks at the middle layer), at the weight decay the run's
cross-validation chose for attn-8, seed 0, under three stopping rules:

- ``rule``: the stand-alone rule (scikit-learn's: stop after more than
  ``n_iter_no_change`` epochs without a new best objective);
- ``settle``: the same, but a fit whose objective rose after its best stops
  only once it is back within ``tol`` of it (the training rule of
  ``AttentionProbeClassifierCV(refit_steps="cv")``'s batched pass, here for a
  stand-alone fit);
- ``best-iterate``: the ``rule`` fit returned at the epoch of its lowest
  objective (refitted for that many steps without a stopping rule).

::

    python -m benchmarks.study.stopping --run RUN [--run RUN2] \\
        --out benchmarks/results/stopping

The refit that trains for the steps the cross-validation chose
(``refit_steps="cv"``) needs the search itself; the study runs it.
"""

import argparse
import time
from pathlib import Path

import numpy as np

RULES = ("rule", "settle", "best-iterate")
N_HEADS = 8


def _fit(rule, probe, X, y):
    """Fit ``probe``; under ``settle`` with the settling training rule."""
    from sklearn_attnprobe import _loops

    if rule != "settle":
        return probe.fit(X, y)
    init = _loops.StoppingRule.__init__

    def settling(self, n_models, tol, n_iter_no_change, settle=False):
        init(self, n_models, tol, n_iter_no_change, settle=True)

    _loops.StoppingRule.__init__ = settling
    try:
        return probe.fit(X, y)
    finally:
        _loops.StoppingRule.__init__ = init


def run_job(job):
    """Refit one (task, layer) under one rule; a result row."""
    from sklearn.base import clone

    from sklearn_attnprobe import AttentionProbeClassifier

    from .learning_rate import job_data, refit_row

    X_train, y_train, X_test, y_test = job_data(job)
    probe = AttentionProbeClassifier(n_heads=N_HEADS, weight_decay=job["weight_decay"],
                                     max_iter=500, random_state=job["seed"])
    start = time.perf_counter()
    _fit(job["rule"], probe, X_train, y_train)
    best = int(np.argmin(probe.loss_curve_)) + 1
    if job["rule"] == "best-iterate" and best < probe.n_iter_:
        probe = clone(probe).set_params(max_iter=best, n_iter_no_change=None)
        probe.fit(X_train, y_train)
    return refit_row(job, probe, X_test, y_test, time.perf_counter() - start)


def main(argv=None):
    from .candidates import _run_all
    from .learning_rate import jobs_of_runs, summary_markdown

    p = argparse.ArgumentParser(prog="python -m benchmarks.study.stopping",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, action="append", required=True,
                   help="a finished study run's folder (repeat for several models)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/stopping"))
    p.add_argument("--n-jobs", type=int, default=2)
    args = p.parse_args(argv)
    args.scope = "stopping"
    for job in (jobs := jobs_of_runs(args.run, rules=RULES, seeds=(0,))):
        job["cost"] = len(job["train"])
    rows = _run_all(jobs, run_job, args, "stopping.csv")
    (args.out / "stopping.md").write_text(summary_markdown(rows, rules=RULES))
    print(f"wrote {args.out / 'stopping.md'}")


if __name__ == "__main__":
    main()
