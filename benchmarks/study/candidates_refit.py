"""Changes of the refit only, screened on a finished study run (issue 14).

``python -m benchmarks.study.candidates --refit``: per (task, layer) one
cross-validation pass exactly as the study's attn-8 (``held_out_stopping``;
the weight decay it picks), then one refit on the training part per variant
at that weight decay. The ``baseline`` variant is
the study's own attn-8 probe again; the others change one thing:

- ``entropy-<lam>``: adds ``lam`` times the heads' mean attention entropy
  (nats, weighted mean over texts) to the objective, through the CPU step
  kernel's hook (:class:`sklearn_attnprobe._manual_step._ManualObjective`);
- ``tied-values``: one value projection shared by the 8 heads (they start
  equal and get the summed gradient, so they stay equal);
- ``seed-<k>``: ``random_state`` plus ``k`` (how much one seed decides);
- ``warmup-20``: the AdamW step size rises linearly over the first 20 steps;
- ``burnin-20``: the stopping rule counts no miss in the first 20 epochs.

Rows go to ``<scope>_refit.csv``; fit seconds are the CV pass plus the refit.
The committed screen (``benchmarks/results/candidates_refit``) ran::

    python -m benchmarks.study.candidates --refit --run RUN --scope needle --out OUT
    python -m benchmarks.study.candidates --refit --run RUN --scope control --out OUT
    python -m benchmarks.study.candidates --refit --scope planted --out OUT

for each model's study run, then ``candidates_report --results OUT`` with
both runs.
"""

import contextlib
import time
from pathlib import Path

import numpy as np

from .candidates import N_HEADS, _restore, _result_row

REFIT_VARIANTS = ("baseline", "entropy-0.003", "entropy-0.01", "entropy-0.03", "entropy-0.1",
                  "tied-values", "seed-1", "seed-2", "seed-3", "warmup-20", "burnin-20")


@contextlib.contextmanager
def refit_variant(name, calls):
    """Patch the package for refit variant ``name`` (see the module doc) while
    the block runs; ``calls`` (a list) gets one entry per evaluation of the
    manual objective, so a caller can check that the hooked path ran."""
    import torch

    from sklearn_attnprobe import _adamw, _loops, _manual_step, _modules

    kind, _, arg = name.partition("-")
    if kind not in ("baseline", "entropy", "tied", "seed", "warmup", "burnin"):
        raise ValueError(f"unknown refit variant {name!r}; choose from {REFIT_VARIANTS}")
    undo = []

    def patch(obj, attr, value):
        undo.append((obj, attr, obj.__dict__[attr]))
        setattr(obj, attr, value)

    objective = _manual_step._ManualObjective
    tie = name == "tied-values"
    original_call = objective.__call__

    def call(self, batch, y, w):
        out = original_call(self, batch, y, w)
        if out is not None:
            calls.append(1)
            if tie:  # every head gets the summed gradient, so the values stay equal
                g = self.module.value.grad
                g.copy_(g.sum(0, keepdim=True).expand_as(g))
        return out

    patch(objective, "__call__", call)
    if kind == "entropy":
        patch(objective, "entropy_penalty", float(arg))
    elif tie:
        original_init = _modules.AttentionProbeModule.__init__

        def init(module, *args, **kwargs):
            original_init(module, *args, **kwargs)
            # head 0's values for all, over sqrt(H): the heads' sum then has the
            # scale of H independent heads' sum
            with torch.no_grad():
                v = module.value
                v.copy_(v[:1].expand_as(v) / np.sqrt(v.shape[0]))

        patch(_modules.AttentionProbeModule, "__init__", init)
    elif kind == "warmup":
        original_step = _adamw.AdamW.step

        def step(self):
            self.warmup_steps = getattr(self, "warmup_steps", 0) + 1
            self.base_lrs = getattr(self, "base_lrs", self.lrs)
            self.lrs = [lr * min(1.0, self.warmup_steps / int(arg)) for lr in self.base_lrs]
            return original_step(self)

        patch(_adamw.AdamW, "step", step)
    elif kind == "burnin":
        original_update = _loops.StoppingRule.update

        def update(self, loss, rows):
            self.epochs = getattr(self, "epochs", 0) + 1
            improved, stopped = original_update(self, loss, rows)
            if self.epochs <= int(arg):
                self.misses[rows] = 0
                stopped = np.zeros_like(stopped)
            return improved, stopped

        patch(_loops.StoppingRule, "update", update)
    try:
        yield
    finally:
        _restore(undo)


def run_refit_job(job):
    """The study's CV pass for attn-8 on one (task, layer), then one refit per
    refit variant at the weight decay it chose; a list of result rows."""
    import torch

    from sklearn_attnprobe import AttentionProbeClassifier, AttentionProbeClassifierCV, RaggedArray

    from .protocol import HELD_OUT_PATIENCE, WEIGHT_DECAYS

    torch.set_num_threads(1)
    X = RaggedArray.load(job["path"], mmap_mode="r")
    train, test, y = job["train"], job["test"], job["y"]
    X_train, X_test = X[train], X[test]
    start = time.perf_counter()
    search = AttentionProbeClassifierCV(
        n_heads=N_HEADS, weight_decays=WEIGHT_DECAYS, cv=5, max_iter=500,
        held_out_stopping=HELD_OUT_PATIENCE, random_state=job["seed"],
        refit=False).fit(X_train, y[train])
    cv_seconds = time.perf_counter() - start
    wd = search.best_params_["weight_decay"]
    rows = []
    for name in REFIT_VARIANTS:
        calls = []
        seed = job["seed"] + (int(name.split("-")[1]) if name.startswith("seed-") else 0)
        start = time.perf_counter()
        with refit_variant(name, calls):
            probe = AttentionProbeClassifier(n_heads=N_HEADS, weight_decay=wd, max_iter=500,
                                             random_state=seed).fit(X_train, y[train])
        seconds = time.perf_counter() - start
        if name.startswith(("entropy", "tied")) and not calls:
            raise RuntimeError(f"{name}: the hooked CPU step did not run")
        rows.append(_result_row(job, name, probe, X_test, wd, cv_seconds + seconds,
                                n_iter=int(probe.n_iter_),
                                final_objective=round(float(probe.loss_curve_[-1]), 5)))
    return rows


def planted_refit_jobs(folder):
    """Refit-variant jobs on the planted tasks of ``benchmarks.choose_defaults``
    (all five, the d 384 needle too): each task's training and test texts
    saved together in ``folder`` so that :func:`run_refit_job` loads them as
    it loads a study's activations."""
    from benchmarks.choose_defaults import TASKS, task_data
    from sklearn_attnprobe import RaggedArray

    Path(folder).mkdir(parents=True, exist_ok=True)
    jobs = []
    for _, task, n_classes, settings in TASKS:
        X, y, X_test, y_test = task_data(task, n_classes, **settings)
        name = f"{task}-{n_classes} d{settings.get('d_model', 128)}"
        path = Path(folder) / f"{name.replace(' ', '_')}.npz"
        RaggedArray.from_list(list(X) + list(X_test)).save(path)
        n = len(y)
        jobs.append({"model": "planted", "task": name, "layer": 0, "path": str(path),
                     "train": np.arange(n), "test": np.arange(n, n + len(y_test)),
                     "y": np.concatenate([y, y_test]), "seed": 0, "evidence": None,
                     "cost": n * settings.get("d_model", 128)})
    return jobs
