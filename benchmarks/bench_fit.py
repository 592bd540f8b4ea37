"""Time to a fitted probe: this tree against 0.1.0, side by side, same data.

Three measurements (issue "time to a fitted probe"):

* ``planted``: default-settings ``AttentionProbeClassifier`` (1 and 8 heads)
  on the planted needle, shift and last-token tasks, 1,000 training texts of
  16-128 tokens, d_model 128, test accuracy on 2,000 more texts of the task;
* ``grid``: ``GridSearchCV(AttentionProbeClassifier(n_heads=8),
  {"weight_decay": [0, 1e-3, 1e-2, 1e-1]})`` on 180 texts of 8-40 tokens,
  d_model 32 (a needle task), test accuracy on 1,000 more;
* ``step``: milliseconds per AdamW step of a default 8-head probe on 200
  texts of 40 tokens, d_model 32, 10 classes, one thread: the difference of
  fits of 220 and 20 fixed steps over 200 (packing and set-up cancel);
* ``cv``: ``AttentionProbeClassifierCV(n_heads=8)`` (4 weight decays x 5
  folds + refit) on 2,000 texts of 128 tokens, d_model 384, on every core
  (this tree only: 0.1.0 takes over a quarter of an hour here);
* ``cvstep``: seconds per step of the stacked CV pass of
  ``AttentionProbeClassifierCV`` (1 and 8 heads, 20 models) on a study-sized
  task: 800 float16 texts of 64-128 tokens, d_model 576 (SmolLM2's), 5
  classes, one thread; the difference of passes of 14 and 4 fixed steps
  over 10 (no refit);
* ``fitstep``: milliseconds per step of a default 8-head
  ``AttentionProbeClassifier`` fit on the speed benchmark's workload
  (``bench_speed.py``: 1,500 texts of 16-128 tokens, d_model 384, 10
  classes), float16 and float32 input, one thread: the difference of fits of
  40 and 10 fixed steps over 30, the best of three. Unlike ``bench_speed``'s
  operator step (autograd through the module), this is the step a ``fit``
  runs.

Each fit runs in a fresh subprocess of the interpreter under test (``--baseline-python``
for 0.1.0, e.g. a venv with ``pip install`` of ``git archive 5987ba4``), reading
the same ``.npz`` files, so both sides see identical texts. The timed fit is
the process's first, as a user's first fit after ``import``; the planted and
grid fits then run once more in the same process, and the report gives that
warm time too (without one-time costs such as imports and kernel loading).

    python -m benchmarks.bench_fit --baseline-python /tmp/venv010/bin/python \\
        --out benchmarks/results
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

GRID = [0.0, 1e-3, 1e-2, 1e-1]


# -- the worker: runs inside the interpreter under test ----------------------------
def _load(path):
    from sklearn_attnprobe import RaggedArray

    z = np.load(path)
    X = RaggedArray(z["data"], z["offsets"])
    n_train = int(z["n_train"])
    idx = np.arange(len(z["y"]))
    return X[idx[:n_train]], z["y"][:n_train], X[idx[n_train:]], z["y"][n_train:]


def worker(spec):
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(spec["threads"])
    import sklearn_attnprobe as ap
    from sklearn.model_selection import GridSearchCV

    if spec["kind"] == "step":
        return _step_ms(ap)
    if spec["kind"] == "cvstep":
        return _cv_step_seconds(ap, spec)
    if spec["kind"] == "fitstep":
        return _fit_step_seconds(ap, spec)
    Xa, ya, Xb, yb = _load(spec["data"])

    def fit():
        if spec["kind"] == "planted":
            est = ap.AttentionProbeClassifier(n_heads=spec["n_heads"], random_state=0)
            return est.fit(Xa, ya), dict(n_iter=int(est.n_iter_))
        if spec["kind"] == "grid":
            est = GridSearchCV(ap.AttentionProbeClassifier(n_heads=8, random_state=0),
                               {"weight_decay": GRID}).fit(Xa, ya)
            return est, dict(best=est.best_params_["weight_decay"], cv_score=est.best_score_)
        est = ap.AttentionProbeClassifierCV(n_heads=8, random_state=0).fit(Xa, ya)
        return est, dict(best=est.best_params_["weight_decay"], cv_score=est.best_score_,
                         fit_time=est.fit_time_)

    start = time.perf_counter()
    est, extra = fit()
    seconds = time.perf_counter() - start
    if spec.get("repeat"):
        # the same fit again in the same process: without the one-time costs
        # of a process's first fit (imports, compiled-kernel loading)
        start = time.perf_counter()
        fit()
        extra["warm_seconds"] = time.perf_counter() - start
    return dict(seconds=seconds, test_accuracy=float(est.score(Xb, yb)),
                version=ap.__version__, **extra)


def _timed_fixed_steps(estimator_class, X, y, **params):
    """Seconds to fit ``estimator_class(**params)`` for exactly ``max_iter``
    steps (0.1.0 has no stopping rule and always runs them)."""
    if "n_iter_no_change" in estimator_class().get_params():
        params["n_iter_no_change"] = None
    est = estimator_class(**params)
    start = time.perf_counter()
    est.fit(X, y)
    return time.perf_counter() - start


def _step_ms(ap):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((40, 32)).astype(np.float32) for _ in range(200)]
    y = rng.integers(0, 10, 200)

    def fit(steps):
        return _timed_fixed_steps(ap.AttentionProbeClassifier, X, y, n_heads=8,
                                  max_iter=steps, random_state=0)

    fit(5)  # one-time costs out of the way
    short, long = (min(fit(s) for _ in range(3)) for s in (20, 220))
    return dict(seconds=(long - short) / 200, test_accuracy=None,
                version=ap.__version__, ms_per_step=(long - short) / 200 * 1e3)


def _cv_step_seconds(ap, spec):
    Xa, ya, _, _ = _load(spec["data"])

    def fit(steps):
        return _timed_fixed_steps(ap.AttentionProbeClassifierCV, Xa, ya,
                                  n_heads=spec["n_heads"], max_iter=steps, refit=False,
                                  random_state=0)

    fit(2)  # one-time costs out of the way
    short, long = fit(4), fit(14)
    return dict(seconds=(long - short) / 10, test_accuracy=None, version=ap.__version__)


def _fit_step_seconds(ap, spec):
    z = np.load(spec["data"])
    Xa, ya = ap.RaggedArray(z["data"].astype(spec["dtype"]), z["offsets"]), z["y"]

    def fit(steps):
        return _timed_fixed_steps(ap.AttentionProbeClassifier, Xa, ya, n_heads=8,
                                  max_iter=steps, random_state=0)

    fit(2)  # one-time costs out of the way
    short, long = (min(fit(s) for _ in range(3)) for s in (10, 40))
    return dict(seconds=(long - short) / 30, test_accuracy=None, version=ap.__version__)


# -- the driver ------------------------------------------------------------------
def _save_task(folder, name, task, n_train, n_test, **kwargs):
    from sklearn_attnprobe.datasets import make_planted_task

    X, y = make_planted_task(task, n_texts=n_train + n_test, return_ragged=True,
                             random_state=0, **kwargs)
    path = os.path.join(folder, f"{name}.npz")
    np.savez(path, data=X.data, offsets=X.offsets, y=y, n_train=n_train)
    return path


def _run(python, spec):
    out = subprocess.run([python, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{python} failed on {spec}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time to a fitted probe vs 0.1.0")
    parser.add_argument("--baseline-python", required=False)
    parser.add_argument("--out", default=None)
    parser.add_argument("--baseline-label", default="0.1.0",
                        help="the baseline's name in the report (another commit, say)")
    parser.add_argument("--only", choices=["planted", "grid", "step", "cv", "cvstep", "fitstep"],
                        action="append")
    parser.add_argument("--worker")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    only = args.only or ["planted", "grid", "step", "cv", "cvstep", "fitstep"]
    pythons = {"ours": sys.executable}
    if args.baseline_python:
        pythons[args.baseline_label] = args.baseline_python
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        jobs = []
        if "planted" in only:
            for task in ("needle", "shift", "last"):
                path = _save_task(folder, task, task, 1000, 2000, d_model=128,
                                  min_length=16, max_length=128)
                for n_heads in (1, 8):
                    jobs.append(dict(kind="planted", task=task, n_heads=n_heads,
                                     data=path, threads=1, repeat=True))
        if "grid" in only:
            path = _save_task(folder, "tiny", "needle", 180, 1000, d_model=32,
                              min_length=8, max_length=40)
            jobs.append(dict(kind="grid", task="needle", n_heads=8, data=path, threads=1,
                             repeat=True))
        if "step" in only:
            jobs.append(dict(kind="step", task="random", n_heads=8, data=None, threads=1))
        if "cv" in only:
            path = _save_task(folder, "cv", "needle", 2000, 500, d_model=384,
                              min_length=128, max_length=128)
            jobs.append(dict(kind="cv", task="needle", n_heads=8, data=path,
                             threads=os.cpu_count(), ours_only=True))
        if "cvstep" in only:
            path = _save_task(folder, "cvstep", "needle", 800, 10, d_model=576, n_classes=5,
                              min_length=64, max_length=128, dtype=np.float16)
            for n_heads in (1, 8):
                jobs.append(dict(kind="cvstep", task="needle", n_heads=n_heads, data=path,
                                 threads=1))
        if "fitstep" in only:
            fitstep_path = _save_task(folder, "fitstep", "needle", 1500, 0, d_model=384,
                                      n_classes=10, min_length=16, max_length=128,
                                      signal=8.0)
            for dtype in ("float16", "float32"):
                jobs.append(dict(kind="fitstep", task=f"needle {dtype}", n_heads=8,
                                 data=fitstep_path, dtype=dtype, threads=1))
        for spec in jobs:
            for side, python in pythons.items():
                if side != "ours" and spec.get("ours_only"):
                    continue
                result = _run(python, {k: v for k, v in spec.items() if k != "ours_only"})
                rows.append(dict(side=side, **{k: v for k, v in spec.items()
                                               if k not in ("data", "ours_only")}, **result))
                print(json.dumps(rows[-1]), flush=True)
        floors = _fit_step_floors(fitstep_path) if "fitstep" in only else None
    report = _report(rows, args.baseline_label, floors)
    print(report)
    if args.out:
        # imported here: the workers run this file as a script, outside the package
        from benchmarks._results import save_results

        save_results(args.out, "fit_time", rows, report)


def _fit_step_floors(path):
    """The fit step's floors on its workload, measured in this run as
    ``bench_speed.py`` measures them (one thread): the two-read roofline
    (two reads of the real tokens' bytes at the read bandwidth) per input
    dtype, and the compute floor (the operator's four per-token products,
    8 heads, at the rate BLAS reaches on one text's products in cache)."""
    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks.bench_speed import (
        compute_floor,
        read_bandwidth,
        thin_product_rate,
        two_read_roofline,
    )

    z = np.load(path)
    tokens, d = z["data"].shape
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            bandwidth = float(np.median([read_bandwidth() for _ in range(3)]))
            rate = thin_product_rate(d, 8)
    finally:
        torch.set_num_threads(threads)
    return {"tokens": int(tokens), "d_model": int(d), "read_bandwidth": bandwidth,
            "thin_product_fma_per_s": rate,
            "compute_floor_ms": 1e3 * compute_floor(4, tokens, d, 8, rate),
            "roofline_ms": {dt: 1e3 * two_read_roofline(tokens, d, np.dtype(dt).itemsize,
                                                        bandwidth)
                            for dt in ("float16", "float32")}}


def _report(rows, base_label="0.1.0", floors=None):
    import platform

    b = base_label
    lines = [f"Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; one torch thread per fit except the CV row.", "",
             f"| measurement | task | heads | {b} s | ours s | speed-up | {b} acc | "
             f"ours acc | ours n_iter / best wd | warm: {b} s | ours s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["kind"], r["task"], r["n_heads"])  # noqa: E731
    groups = {}
    for r in rows:
        groups.setdefault(key(r), {})[r["side"]] = r
    speedups = {}
    for (kind, task, heads), sides in groups.items():
        ours, base = sides["ours"], sides.get(base_label)
        tail = ours.get("n_iter", ours.get("best"))
        if not base:
            acc = ours["test_accuracy"]
            acc = "-" if acc is None else f"{acc:.3f}"
            lines.append(f"| {kind} | {task} | {heads} | - | {ours['seconds']:.1f} | - | - | "
                         f"{acc} | {tail} | - | - | - |")
            continue
        ratio = base["seconds"] / ours["seconds"]
        speedups.setdefault(kind, []).append(ratio)
        if kind == "step":
            lines.append(f"| step (ms) | {task} | {heads} | {base['ms_per_step']:.2f} | "
                         f"{ours['ms_per_step']:.2f} | {ratio:.1f}x | - | - | - | - | - | - |")
            continue
        if kind == "fitstep":
            lines.append(f"| fit step (ms) | {task} | {heads} | {1e3 * base['seconds']:.1f} | "
                         f"{1e3 * ours['seconds']:.1f} | {ratio:.2f}x | - | - | - | - | - | - |")
            continue
        if kind == "cvstep":
            lines.append(f"| CV step (s) | {task} | {heads} | {base['seconds']:.3f} | "
                         f"{ours['seconds']:.3f} | {ratio:.2f}x | - | - | - | - | - | - |")
            continue
        warm = "- | - | -"
        if "warm_seconds" in ours and "warm_seconds" in base:
            warm_ratio = base["warm_seconds"] / ours["warm_seconds"]
            speedups.setdefault(kind + " (warm)", []).append(warm_ratio)
            warm = (f"{base['warm_seconds']:.1f} | {ours['warm_seconds']:.1f} | "
                    f"{warm_ratio:.1f}x")
        lines.append(f"| {kind} | {task} | {heads} | {base['seconds']:.1f} | "
                     f"{ours['seconds']:.1f} | {ratio:.1f}x | {base['test_accuracy']:.3f} | "
                     f"{ours['test_accuracy']:.3f} | {tail} | {warm} |")
    lines.append("")
    if floors:
        lines += [
            f"Fit step against its floors, measured in this run (one thread): "
            f"{floors['tokens']} tokens x d {floors['d_model']}, read bandwidth "
            f"{floors['read_bandwidth'] / 1e9:.1f} GB/s, per-text products in cache "
            f"{floors['thin_product_fma_per_s'] / 1e9:.0f} GFMA/s.", "",
            "| input | ours ms | two-read roofline ms | compute floor ms | ours / roofline "
            "| ours / compute floor |", "|---|---|---|---|---|---|"]
        for (kind, task, _), sides in groups.items():
            if kind != "fitstep":
                continue
            dt = task.split()[-1]
            ms = 1e3 * sides["ours"]["seconds"]
            roof, floor = floors["roofline_ms"][dt], floors["compute_floor_ms"]
            lines.append(f"| {dt} | {ms:.1f} | {roof:.1f} | {floor:.1f} | {roof / ms:.2f} | "
                         f"{floor / ms:.2f} |")
        lines.append("")
    for kind, ratios in speedups.items():
        geo = float(np.exp(np.mean(np.log(ratios))))
        lines.append(f"{kind}: geometric-mean speed-up {geo:.1f}x over {len(ratios)} fits")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
