"""Peers: our probes against other packages' tools for the same job.

Same data, same process, same thread count for every method. Two comparisons
on binary ``make_planted_task`` data (fixed seed, 80/20 stratified split):

1. Mean pooling + logistic regression. ``MeanProbeClassifier(weight_decay=wd)``
   minimises the same objective as scikit-learn's
   ``LogisticRegression(C=1 / (wd * n_train))`` on the mean-pooled features,
   so both should give the same probabilities. The LogisticRegression side is
   timed end to end from the same ragged input: numpy mean pooling of the
   texts plus the fit. It is also timed alone on precomputed features, and
   once more with a tight tolerance as a converged reference. Rows at each
   side's own defaults (ours ``weight_decay=0``, LogisticRegression
   ``C=1.0``) are included too.
2. Attention probes. Ours (``AttentionProbeClassifier`` at its defaults, with
   ``n_heads=1`` and ``n_heads=8``) against ``probelab.probes.Attention`` at
   its documented defaults (an MLP scorer and an MLP classifier, sigmoid
   output, minibatch AdamW, early stopping on an internal 20% validation
   split). The probelab probe gets the same tokens as a flat+offsets
   ``probelab.Activations`` built from our ``RaggedArray`` with no copy.

Every fit is timed with ``time.perf_counter``. torch and the BLAS pools
(through threadpoolctl) use ``--threads`` threads (1 unless told otherwise).
One untimed warm-up fit of every method on a small task pays one-time costs
(thread pools, lazy imports) first.

probelab is a benchmark-only peer, not a dependency of sklearn_attnprobe.
Install it into the benchmark environment first. Check with a dry run that
pip keeps your torch, which already satisfies probelab's ``torch>=2.6``:

    pip install --dry-run probelab     # must not list torch
    pip install probelab
    python benchmarks/bench_peers.py [--n-texts 2000] [--d-model 256] [--threads 1]

Writes ``benchmarks/results/peers.json`` and ``benchmarks/results/peers.md``
(or ``--out DIR``), and prints the markdown table.
"""

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

MISSING_PROBELAB = (
    "bench_peers.py compares against the attention probe of the 'probelab' "
    "package, which is not installed. probelab is a benchmark-only peer, not a "
    "dependency of sklearn_attnprobe. Install it into this environment with\n"
    "    pip install probelab\n"
    "(first check with 'pip install --dry-run probelab' that pip would keep "
    "your torch; any torch>=2.6 satisfies probelab), then run this script again."
)

WD = 1e-2  # weight decay of the mean-vs-LogisticRegression equivalence


# -- helpers ---------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def timed(fn, repeats):
    """Call ``fn`` ``repeats`` times; return (last result, list of seconds)."""
    out, seconds = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return out, seconds


def numpy_mean_pool(X):
    """Mean of each text's tokens, float64, with numpy only (X packed or not).

    A per-text ``ndarray.mean`` loop: on this kind of data it is several times
    faster than ``np.add.reduceat`` (see ``numpy_pooling_seconds`` in the JSON).
    """
    data = X.data
    return np.stack([data[s:s + n].mean(axis=0, dtype=np.float64)
                     for s, n in zip(X.starts.tolist(), X.lengths.tolist())])


def numpy_mean_pool_reduceat(X):
    """Same features through ``np.add.reduceat`` (packed X only); timed for reference."""
    return np.add.reduceat(X.data, X.starts, axis=0, dtype=np.float64) / X.lengths[:, None]


def to_probelab(X):
    """probelab ``Activations`` (dims "bsh", flat+offsets) sharing X's buffer."""
    import torch
    from probelab import Activations

    return Activations.from_flat(torch.from_numpy(X.data), torch.from_numpy(X.offsets),
                                 dims="bsh")


def init_defaults(cls, skip=()):
    """Keyword defaults of ``cls.__init__`` as JSON-friendly values."""
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in skip or p.default is inspect.Parameter.empty:
            continue
        v = p.default
        out[name] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return out


def git_state():
    """Commit of the checkout and the package files that differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True,
                              timeout=30, check=True).stdout.rstrip()

    try:
        return {"commit": git("rev-parse", "--short", "HEAD"),
                "uncommitted_package_files": git(
                    "status", "--porcelain", "--", "sklearn_attnprobe").splitlines()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "uncommitted_package_files": []}


def fmt_params(d):
    return ", ".join(f"{k}={v}" for k, v in d.items())


# -- the two comparisons -------------------------------------------------------

def split_task(task, args):
    from sklearn.model_selection import train_test_split
    from sklearn_attnprobe.datasets import make_planted_task

    X, y = make_planted_task(task, n_texts=args.n_texts, d_model=args.d_model,
                             n_classes=2, min_length=args.min_length,
                             max_length=args.max_length, random_state=args.seed,
                             return_ragged=True)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                              random_state=args.seed)
    # packed copies, made once, untimed, used by every method
    return X[tr].pack(), X[te].pack(), y[tr], y[te]


def bench_mean(task, args):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn_attnprobe import MeanProbeClassifier

    Xtr, Xte, ytr, yte = split_task(task, args)
    n_train = len(ytr)
    C = 1.0 / (WD * n_train)
    rows, r = [], args.repeats

    def row(method, settings, fit_s, predict_s, acc, n_iter, diff, note=""):
        return {"part": "mean vs LogisticRegression", "task": task, "method": method,
                "settings": settings, "fit_seconds": min(fit_s), "fit_seconds_all": fit_s,
                "predict_seconds": min(predict_s), "test_accuracy": float(acc),
                "n_iter": n_iter, "max_abs_proba_diff_vs_ours_mean_wd": diff,
                "note": note}

    # ours, weight_decay=WD (the reference for the probability differences)
    ours, fit_s = timed(lambda: MeanProbeClassifier(weight_decay=WD).fit(Xtr, ytr), r)
    p_ours, pred_s = timed(lambda: ours.predict_proba(Xte), r)
    rows.append(row("ours MeanProbeClassifier", f"weight_decay={WD:g}", fit_s, pred_s,
                    ours.score(Xte, yte), int(ours.n_iter_), 0.0,
                    "reference of the proba column; fit includes its own (torch) pooling"))

    def lr_end_to_end(**kw):
        def fit():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                lr = LogisticRegression(**kw).fit(numpy_mean_pool(Xtr), ytr)
            lr.converged_ = not any(issubclass(w.category, ConvergenceWarning)
                                    for w in caught)
            return lr
        lr, fit_s = timed(fit, r)
        proba, pred_s = timed(lambda: lr.predict_proba(numpy_mean_pool(Xte)), r)
        return lr, proba, fit_s, pred_s

    def lr_note(lr):
        return "" if lr.converged_ else "ConvergenceWarning (max_iter reached)"

    # LR end to end (numpy pooling + fit), C matched to WD, other params default
    lr, proba, fit_s, pred_s = lr_end_to_end(C=C)
    rows.append(row("LogisticRegression + numpy mean pooling",
                    f"C=1/(wd*n_train)={C:.4g}, rest default (lbfgs, tol=1e-4, max_iter=100)",
                    fit_s, pred_s, (lr.classes_[proba.argmax(1)] == yte).mean(),
                    int(lr.n_iter_[0]), float(np.abs(proba - p_ours).max()),
                    "end to end from the ragged input; " + lr_note(lr)))

    # LR alone on precomputed features
    Ftr, Fte = numpy_mean_pool(Xtr), numpy_mean_pool(Xte)
    for method, kw, note in [
        ("LogisticRegression on precomputed features",
         dict(C=C), "fit only; pooling not timed"),
        ("LogisticRegression on precomputed features, tight tol",
         dict(C=C, tol=1e-8, max_iter=10_000),
         "converged reference (not a default); fit only"),
    ]:
        lr, fit_s = timed(lambda: LogisticRegression(**kw).fit(Ftr, ytr), r)
        proba, pred_s = timed(lambda: lr.predict_proba(Fte), r)
        settings = fmt_params({k: (f"{v:.4g}" if k == "C" else v) for k, v in kw.items()})
        settings += ", rest default"
        rows.append(row(method, settings, fit_s, pred_s, lr.score(Fte, yte),
                        int(lr.n_iter_[0]), float(np.abs(proba - p_ours).max()), note))

    # each side at its own defaults (different objectives: no proba diff)
    ours0, fit_s = timed(lambda: MeanProbeClassifier().fit(Xtr, ytr), r)
    _, pred_s = timed(lambda: ours0.predict_proba(Xte), r)
    rows.append(row("ours MeanProbeClassifier", "defaults (weight_decay=0)", fit_s, pred_s,
                    ours0.score(Xte, yte), int(ours0.n_iter_), None,
                    "own defaults; different objective from the LR rows"))
    lr, proba, fit_s, pred_s = lr_end_to_end()
    rows.append(row("LogisticRegression + numpy mean pooling", "defaults (C=1.0)",
                    fit_s, pred_s, (lr.classes_[proba.argmax(1)] == yte).mean(),
                    int(lr.n_iter_[0]), None,
                    "own defaults, end to end; " + lr_note(lr)))

    pool_s = {
        "per_text_mean_loop_float64": min(timed(lambda: numpy_mean_pool(Xtr), r)[1]),
        "np_add_reduceat_float64": min(timed(lambda: numpy_mean_pool_reduceat(Xtr), r)[1]),
    }
    return rows, pool_s


def bench_attention(task, args):
    import torch
    from probelab.probes import Attention
    from sklearn_attnprobe import AttentionProbeClassifier

    Xtr, Xte, ytr, yte = split_task(task, args)
    rows, r = [], args.attn_repeats

    def row(method, settings, fit_s, predict_s, acc, n_iter, note=""):
        return {"part": "attention", "task": task, "method": method, "settings": settings,
                "fit_seconds": min(fit_s), "fit_seconds_all": fit_s,
                "predict_seconds": min(predict_s), "test_accuracy": float(acc),
                "n_iter": n_iter, "max_abs_proba_diff_vs_ours_mean_wd": None,
                "note": note}

    for heads in (1, 8):
        est, fit_s = timed(lambda: AttentionProbeClassifier(
            n_heads=heads, random_state=args.seed).fit(Xtr, ytr), r)
        _, pred_s = timed(lambda: est.predict_proba(Xte), r)
        rows.append(row("ours AttentionProbeClassifier",
                        f"n_heads={heads}, rest default (full-batch AdamW, 500 steps)",
                        fit_s, pred_s, est.score(Xte, yte), int(est.n_iter_),
                        f"random_state={args.seed}; n_iter = optimizer steps"))

    def fit_probelab():
        probe = Attention(seed=args.seed)
        epochs = [0]
        check = probe._check_val_loss  # called once per epoch (eval_interval=1)

        def counting_check(val_loss, scheduler=None):
            epochs[0] += 1
            return check(val_loss, scheduler)

        probe._check_val_loss = counting_check
        # timed from our RaggedArray: building Activations is part of the fit
        probe.fit(to_probelab(Xtr), torch.as_tensor(ytr, dtype=torch.float32))
        probe.epochs_run_ = epochs[0]
        return probe

    probe, fit_s = timed(fit_probelab, r)

    def predict_probelab():
        return probe.predict(to_probelab(Xte)).detach().double().cpu().numpy()

    p1, pred_s = timed(predict_probelab, r)
    acc = ((p1 >= 0.5).astype(int) == yte).mean()
    rows.append(row("probelab probes.Attention", "defaults", fit_s, pred_s, acc,
                    int(probe.epochs_run_),
                    f"seed={args.seed}; n_iter = epochs run before early stopping "
                    f"(patience 5); trains on 80% of the training split"))
    return rows


def warm_up(args):
    """One small untimed fit of every method: thread pools, lazy imports."""
    import torch
    from probelab.probes import Attention
    from sklearn.linear_model import LogisticRegression
    from sklearn_attnprobe import AttentionProbeClassifier, MeanProbeClassifier
    from sklearn_attnprobe.datasets import make_planted_task

    X, y = make_planted_task("needle", n_texts=64, d_model=args.d_model,
                             min_length=args.min_length, max_length=args.max_length,
                             random_state=args.seed + 1, return_ragged=True)
    MeanProbeClassifier(weight_decay=WD).fit(X, y).predict_proba(X)
    LogisticRegression().fit(numpy_mean_pool(X), y)
    AttentionProbeClassifier(n_heads=8, max_iter=5, random_state=0).fit(X, y).predict_proba(X)
    Attention(n_epochs=1, seed=0).fit(to_probelab(X), torch.as_tensor(y, dtype=torch.float32))


# -- output ------------------------------------------------------------------------

def markdown(result):
    m, c = result["machine"], result["config"]
    g = m["sklearn_attnprobe_git"]
    lines = [
        "# Peers: same data, same run",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} logical cores "
        f"({m['cpus_usable']} usable), load average {m['loadavg_start']} at start and "
        f"{m['loadavg_end']} at end (shared machine); {m['platform']}",
        f"- Versions: Python {m['python']}, torch {m['torch']}, scikit-learn "
        f"{m['scikit-learn']}, numpy {m['numpy']}, probelab {m['probelab']}, "
        f"sklearn_attnprobe {m['sklearn_attnprobe']} (git {g['commit']}"
        + (f" plus uncommitted changes to {len(g['uncommitted_package_files'])} package "
           "files" if g["uncommitted_package_files"] else "") + ")",
        f"- Threads: torch.set_num_threads({c['threads']}), BLAS pools limited to "
        f"{c['threads']} (threadpoolctl)",
        f"- Data: make_planted_task, binary, {c['n_texts']} texts, lengths "
        f"{c['min_length']}-{c['max_length']}, d_model {c['d_model']}, float32, seed "
        f"{c['seed']}; 80/20 stratified split ({c['n_train']} train / {c['n_test']} test "
        "texts), packed once before timing and shared by every method",
        f"- Timing: time.perf_counter around fit (predict: predict_proba on the test "
        f"split); best of {c['repeats']} for the mean/LR part, best of "
        f"{c['attn_repeats']} for the attention part, after one untimed warm-up fit of "
        "every method",
        f"- Total run time: {result['total_seconds']:.0f} s",
        "",
        "| part | task | method | settings | fit s | predict s | test acc | iters | "
        "fit s / iter | max abs Δproba vs ours mean wd=1e-2 |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        diff = r["max_abs_proba_diff_vs_ours_mean_wd"]
        diff = "" if diff is None else ("0 (reference)" if diff == 0 else f"{diff:.2e}")
        lines.append(
            f"| {r['part']} | {r['task']} | {r['method']} | {r['settings']} | "
            f"{r['fit_seconds']:.3f} | {r['predict_seconds']:.3f} | "
            f"{r['test_accuracy']:.4f} | {r['n_iter']} | "
            f"{r['fit_seconds'] / max(r['n_iter'], 1):.4f} | {diff} |"
        )
    d = result["defaults"]
    lines += [
        "",
        "Notes:",
        "",
        "- iters: L-BFGS iterations (ours mean) and lbfgs `n_iter_` (LogisticRegression); "
        "optimizer steps (ours attention); epochs run before early stopping (probelab). "
        "For the attention rows, fit s / iter is the cost of one pass over the training "
        "texts (ours: one full-batch step; probelab: one epoch of minibatches over 80% of "
        "them plus a validation pass over the other 20%).",
        "- The LogisticRegression + numpy mean pooling rows are end to end from the "
        "same packed ragged input: a per-text `ndarray.mean(axis=0, dtype=float64)` "
        "loop, then the fit (predict: pooling of the test texts, then predict_proba). "
        "Pooling alone on the training texts (s, per-text loop / `np.add.reduceat`): "
        + "; ".join(f"{t} {v['per_text_mean_loop_float64']:.3f} / "
                    f"{v['np_add_reduceat_float64']:.3f}"
                    for t, v in result["numpy_pooling_seconds"].items()) + ".",
        f"- `MeanProbeClassifier(weight_decay={WD:g})` and "
        f"`LogisticRegression(C=1/({WD:g}*n_train))` minimise the same objective; the "
        "probability difference at LogisticRegression's default tol=1e-4 is its early "
        "stop, the tight-tol row shows the converged gap.",
        "- The probelab rows include building `probelab.Activations` (flat+offsets, "
        "zero-copy `torch.from_numpy`) from our RaggedArray in the timed region.",
        f"- scikit-learn LogisticRegression defaults: {fmt_params(d['LogisticRegression'])}",
        f"- probelab probes.Attention defaults: {fmt_params(d['probelab.probes.Attention'])}"
        f" (seed set to {c['seed']} here)",
        f"- ours AttentionProbeClassifier defaults: "
        f"{fmt_params(d['AttentionProbeClassifier'])} (random_state set to {c['seed']})",
        f"- ours MeanProbeClassifier defaults: {fmt_params(d['MeanProbeClassifier'])}",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--min-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for every method (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fits per mean/LR method; the best time is reported")
    parser.add_argument("--attn-repeats", type=int, default=1,
                        help="fits per attention method; the best time is reported")
    parser.add_argument("--mean-tasks", default="shift,needle,last")
    parser.add_argument("--attn-tasks", default="needle,last")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    try:
        import probelab  # noqa: F401
        from probelab.probes import Attention
    except ImportError as exc:
        raise SystemExit(f"{MISSING_PROBELAB}\n(import failed: {exc})") from None

    import torch
    from threadpoolctl import threadpool_limits
    from sklearn.linear_model import LogisticRegression
    import sklearn_attnprobe
    from sklearn_attnprobe import AttentionProbeClassifier, MeanProbeClassifier

    torch.set_num_threads(args.threads)
    start_all = time.perf_counter()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    rows, pooling = [], {}
    with threadpool_limits(limits=args.threads):
        warm_up(args)
        for task in [t for t in args.mean_tasks.split(",") if t]:
            print(f"mean vs LogisticRegression: {task}", file=sys.stderr, flush=True)
            task_rows, pooling[task] = bench_mean(task, args)
            rows += task_rows
        for task in [t for t in args.attn_tasks.split(",") if t]:
            print(f"attention probes: {task}", file=sys.stderr, flush=True)
            rows += bench_attention(task, args)
    total = time.perf_counter() - start_all

    n_test = math.ceil(0.2 * args.n_texts)  # what train_test_split(test_size=0.2) gives
    result = {
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "loadavg_start": loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "scikit-learn": version_of("scikit-learn"),
            "numpy": np.__version__,
            "probelab": version_of("probelab"),
            "sklearn_attnprobe": sklearn_attnprobe.__version__,
            "sklearn_attnprobe_git": git_state(),
        },
        "config": {
            "n_texts": args.n_texts, "n_train": args.n_texts - n_test, "n_test": n_test,
            "d_model": args.d_model, "min_length": args.min_length,
            "max_length": args.max_length, "seed": args.seed, "threads": args.threads,
            "repeats": args.repeats, "attn_repeats": args.attn_repeats,
            "weight_decay_mean_vs_lr": WD,
        },
        "defaults": {
            "LogisticRegression": LogisticRegression().get_params(),
            "probelab.probes.Attention": init_defaults(
                Attention, skip=("optimizer_fn", "scheduler_fn")),
            "AttentionProbeClassifier": {
                k: v for k, v in AttentionProbeClassifier().get_params().items()
                if k != "callbacks"},
            "MeanProbeClassifier": {
                k: v for k, v in MeanProbeClassifier().get_params().items()
                if k != "callbacks"},
        },
        "numpy_pooling_seconds": pooling,
        "rows": rows,
        "total_seconds": total,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (args.out / "peers.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'peers.json'} and {args.out / 'peers.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
