"""CPU speed, memory and precision benchmark of the attention probe.

Measured side by side in one run, on this machine:

1. time per AdamW step of the 8-head, 10-class attention probe on 1,500 texts
   x 16-128 tokens x d 384 (float32 input; float16 input computed in float32
   and in float16), three ways in one run: this tree (the fused operator),
   0.1.0 (run by ``--baseline-python``, another environment with 0.1.0
   installed, on the same data saved to a ``.npz`` file) and a direct
   implementation of the seed's pseudocode (``_direct.py``: pad to the
   longest text, per-token values of shape tokens x heads x classes); each
   step's time as a fraction of the two-read roofline (two reads of the real
   tokens' bytes at the read bandwidth measured in the same run) and of the
   compute floor (the operator's multiply-adds at the measured rate of its
   per-text products in cache);
2. test accuracies of ours and the direct probe after the same number of
   steps from the same initialisation, for 10 classes and a binary task;
3. ``AttentionProbeClassifierCV`` (all 20 fold x weight-decay models in one
   batched pass) against ``GridSearchCV(n_jobs=1)`` over the same grid, and the
   pooled probes' CV classes against their GridSearchCV;
4. peak memory growth of a fit on skewed lengths (1% of texts 4,096 tokens,
   the rest 32) relative to the packed input, in a fresh subprocess;
5. bfloat16 / float16 compute: speed per step and accuracy on the planted tasks.

Timings run one after another on one core (one torch thread; the roofline is
measured with the same thread count). The step times of (1) are medians over
repeats, ours and 0.1.0 alternating in fresh subprocesses, so that load from
other work on a shared machine hits both alike; the other timings are the
fastest of three runs. The accuracy runs of (5) are independent
configurations and run joblib-parallel with one thread each.

    python benchmarks/bench_speed.py [--out benchmarks/results] [--quick]
        [--baseline-python /tmp/venv010/bin/python] [--sections steps,accuracy,...]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.model_selection import GridSearchCV, train_test_split

sys.path.insert(0, str(Path(__file__).parent))
import _direct  # noqa: E402

from sklearn_attnprobe import (  # noqa: E402
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    MeanProbeClassifier,
    MeanProbeClassifierCV,
)
from sklearn_attnprobe._modules import init_values  # noqa: E402
from sklearn_attnprobe.datasets import make_planted_task  # noqa: E402

GRID = [0.0, 1e-3, 1e-2, 1e-1]


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def bandwidth(n_bytes=1 << 29):
    a = torch.ones(n_bytes // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    return 2 * n_bytes * reps / (time.perf_counter() - start)


def read_bandwidth(n_bytes=1 << 29):
    """Bytes per second of one thread reading a buffer (a sum over it): the
    rate the two-read roofline assumes. Earlier results divided by
    ``bandwidth`` (a copy) instead, 9.3-9.5 GB/s in the committed runs on the
    AMD machine, where reading alone ran at 24-30 GB/s in a later run: that
    roofline was 2-3x too long, and every fraction of it as much too high."""
    a = torch.ones(n_bytes // 4)
    a.sum()
    best = min(_seconds(a.sum) for _ in range(5))
    return n_bytes / best


def thin_product_rate(d, n_heads, n_tokens=128, reps=2000):
    """Multiply-adds per second of the fused operator's per-text products,
    ``(tokens, d) @ (d, heads)`` with the text in cache (numpy's BLAS, as the
    kernels call it): the compute floor of a step is 4 of them per token (5
    where the backward recomputes the logits)."""
    x = np.random.default_rng(0).standard_normal((n_tokens, d)).astype(np.float32)
    q = np.ones((d, n_heads), np.float32)
    x @ q

    def run():
        for _ in range(reps):
            x @ q
    return reps * n_tokens * d * n_heads / min(_seconds(run) for _ in range(3))


def two_read_roofline(tokens, d_model, itemsize, read_rate):
    """Seconds to read the real tokens' bytes twice at ``read_rate`` (see
    :func:`read_bandwidth`): the roofline of a training step."""
    return 2.0 * tokens * d_model * itemsize / read_rate


def compute_floor(products, tokens, d_model, n_heads, product_rate):
    """Seconds for ``products`` per-token ``d_model x n_heads`` multiply-adds
    at ``product_rate`` (see :func:`thin_product_rate`)."""
    return products * tokens * d_model * n_heads / product_rate


def _seconds(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def gemm_throughput(dtype, n=2048):
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def best_of(f, repeats=3):
    """Fastest of a few runs: the least disturbed by other load on the machine."""
    return min(f() for _ in range(repeats))


def ours_step(X, y, k1=10, k2=40, **params):
    """Seconds per step of our fit: the difference of two fits cancels packing."""
    def fit(k):
        start = time.perf_counter()
        AttentionProbeClassifier(max_iter=k, random_state=0, **params).fit(X, y)
        return time.perf_counter() - start
    fit(2)
    return (best_of(lambda: fit(k2)) - best_of(lambda: fit(k1))) / (k2 - k1)


def direct_module(d, H, C, seed=0):
    """The direct probe, initialised exactly as ours with random_state=seed."""
    s = np.random.RandomState(seed).randint(np.iinfo(np.int32).max)
    value = init_values(d, H, C, torch.Generator().manual_seed(int(s)), torch.float32)
    return _direct.DirectAttentionProbe(torch.zeros(d, H), torch.zeros(H), value,
                                        torch.zeros(C))


def direct_step(texts, y, H, C, steps=3):
    x, mask, lengths = _direct.padded(texts)
    module = direct_module(x.shape[2], H, C)
    _direct.train(module, x, mask, lengths, y, 1, 1e-2)

    def run():
        start = time.perf_counter()
        _direct.train(module, x, mask, lengths, y, 1, 1e-2)
        return time.perf_counter() - start
    return best_of(run, steps)


# -- 1: ms per step, ours vs 0.1.0 vs direct, fraction of roofline ----------
# Run by this interpreter and by the baseline's, with the working directory
# outside the repository so that each imports its own installed package. Both
# versions build the same module, pack the same data and time the same
# full-batch AdamW step (forward, cross-entropy, penalty, backward, update).
STEP_CHILD = r"""
import json, sys, time, numpy as np, torch
import torch.nn.functional as F
torch.set_num_threads(1)
import sklearn_attnprobe
from sklearn_attnprobe import RaggedArray
from sklearn_attnprobe._modules import AttentionProbeModule
from sklearn_attnprobe._packing import pack
path, steps, configs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
z = np.load(path)
out = {"version": getattr(sklearn_attnprobe, "__version__", "?"),
       "file": sklearn_attnprobe.__file__}
for name, input_dtype, compute in configs:
    X = RaggedArray(z["data"].astype(input_dtype), z["offsets"])
    batch = pack(X, getattr(torch, compute), torch.device("cpu"))
    module = AttentionProbeModule(X.d_model, 8, int(z["y"].max()) + 1,
                                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.query.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        module.slope.fill_(0.05)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.0)
    y = torch.as_tensor(z["y"][batch.order])
    def step():
        opt.zero_grad()
        loss = F.cross_entropy(module(batch), y) + module.penalty(1e-3)
        loss.backward()
        opt.step()
    step(); step()  # warm-up (and compilation, where there is any)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out[name] = times
print(json.dumps(out))
"""
STEP_CONFIGS = [("float32 input", "float32", "float32"),
                ("float16 input, float32 compute", "float16", "float32"),
                ("float16 input, float16 compute", "float16", "float16")]


def run_steps(python, path, steps, configs):
    res = subprocess.run([python, "-c", STEP_CHILD, str(path), str(steps),
                          json.dumps(configs)], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_section(args, hw):
    X, y = make_planted_task("needle", n_texts=args.n_texts, d_model=args.d_model,
                             n_classes=10, min_length=16, max_length=128, signal=8.0,
                             random_state=0)
    lengths = np.array([len(t) for t in X])
    tokens, H, C = int(lengths.sum()), 8, 10
    runs = {"ours": [sys.executable]}
    if args.baseline_python:
        runs["0.1.0"] = [args.baseline_python]
    times = {impl: {} for impl in runs}
    info = {}
    bws = [hw["read_bandwidth"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, data=np.concatenate(X), y=np.asarray(y),
                 offsets=np.concatenate([[0], np.cumsum(lengths)]))
        for rep in range(args.step_repeats):  # alternate: load hits both alike
            for impl, (python,) in runs.items():
                configs = STEP_CONFIGS
                if impl != "ours" and rep > 0:  # 0.1.0's float16 compute is ~1 s/step
                    configs = STEP_CONFIGS[:2]
                r = run_steps(python, path, args.steps_per_run, configs)
                info[impl] = {"version": r.pop("version"), "file": r.pop("file")}
                for name, ts in r.items():
                    times[impl].setdefault(name, []).extend(ts)
                print(rep, impl, {k: round(1e3 * float(np.median(v)), 1)
                                  for k, v in r.items()}, flush=True)
            bws.append(read_bandwidth())
    t_direct = direct_step(X, y, H, C, steps=args.step_repeats)
    bw = float(np.median(bws))
    # FLOPs of the fused operator per real token: forward 2Hd, backward 2Hd
    # multiply-adds where the CPU forward keeps the weights for the backward,
    # 3Hd where the backward recomputes the logits
    from sklearn_attnprobe._fused_cpu import keeps_weights

    products = 4 if keeps_weights(int(lengths.max()), args.d_model) else 5
    flops = 2.0 * products * tokens * args.d_model * H
    # the same multiply-adds at the rate of the kernels' per-text products
    thin_rate = thin_product_rate(args.d_model, H)
    floor = compute_floor(products, tokens, args.d_model, H, thin_rate)
    rows = []
    for name, input_dtype, compute in STEP_CONFIGS:
        # the bytes the fused operator reads: half-precision input is read as
        # it is, whatever the compute dtype
        itemsize = np.dtype(input_dtype).itemsize
        roof = two_read_roofline(tokens, args.d_model, itemsize, bw)
        row = {"config": name, "input_dtype": input_dtype, "compute_dtype": compute,
               "roofline_ms": 1e3 * roof, "direct_ms": 1e3 * t_direct,
               "compute_floor_ms": 1e3 * floor}
        for impl in runs:
            if name in times[impl]:
                med = float(np.median(times[impl][name]))
                row[f"{impl}_ms"] = 1e3 * med
                row[f"{impl}_n"] = len(times[impl][name])
                row[f"{impl}_fraction_of_roofline"] = roof / med
                row[f"{impl}_fraction_of_compute_floor"] = floor / med
        if "0.1.0_ms" in row:
            row["speedup_vs_0.1.0"] = row["0.1.0_ms"] / row["ours_ms"]
            best = min(v for k, v in [(n, float(np.median(t))) for n, t in
                                      times["0.1.0"].items()
                                      if n.startswith(input_dtype)])
            row["speedup_vs_best_0.1.0"] = 1e3 * best / row["ours_ms"]
        row["speedup_vs_direct"] = row["direct_ms"] / row["ours_ms"]
        rows.append(row)
        print(row, flush=True)
    return {"n_texts": args.n_texts, "d_model": args.d_model, "tokens": tokens,
            "n_heads": H, "n_classes": C, "bandwidth_runs": bws, "bandwidth": bw,
            "fused_gflop_per_step": flops / 1e9, "direct_repeats": args.step_repeats,
            "compute_floor_ms": 1e3 * floor, "thin_product_fma_per_s": thin_rate,
            "square_gemm_floor_ms": 1e3 * flops / hw["gemm_f32"],
            "versions": info, "rows": rows}


# -- 2: accuracy against the direct formulation --------------------------------
def accuracy_section(args):
    rows = []
    for n_classes in (10, 2):
        # a strong needle, so that the short accuracy runs learn something
        X, y = make_planted_task("needle", n_texts=args.n_texts, d_model=args.d_model,
                                 n_classes=n_classes, min_length=16, max_length=128,
                                 signal=8.0, random_state=0)
        H, C = 8, (1 if n_classes == 2 else n_classes)
        Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
        ours = AttentionProbeClassifier(n_heads=H, max_iter=args.acc_steps,
                                        random_state=0).fit(Xa, ya)
        xa, ma, la = _direct.padded(Xa)
        direct = _direct.train(direct_module(args.d_model, H, C), xa, ma, la, ya,
                               args.acc_steps, 1e-2)
        rows.append({"n_classes": n_classes, "n_texts": args.n_texts,
                     "ours_test_acc": ours.score(Xb, yb),
                     "direct_test_acc": _direct.accuracy(direct, Xb, yb),
                     "acc_steps": args.acc_steps})
        print(rows[-1], flush=True)
    return rows


def scaling_section(args):
    rows = []
    for n in args.scaling_sizes:
        X, y = make_planted_task("needle", n_texts=n, d_model=args.d_model, n_classes=10,
                                 min_length=16, max_length=128, random_state=0)
        rows.append({"n_texts": n, "tokens": int(sum(len(t) for t in X)),
                     "ours_ms": 1e3 * ours_step(X, y, k1=5, k2=20, n_heads=8),
                     "direct_ms": 1e3 * direct_step(X, y, 8, 10, steps=2)})
        print(rows[-1], flush=True)
    return rows


# -- 3: batched sweep vs GridSearchCV ---------------------------------------
def sweep_section(args):
    X, y = make_planted_task("needle", n_texts=args.sweep_texts, d_model=256,
                             n_classes=8, min_length=16, max_length=64, random_state=0,
                             return_ragged=True)
    out = {}
    for compute in ("float32", "bfloat16"):
        params = dict(n_heads=8, max_iter=args.sweep_steps, random_state=0,
                      compute_dtype=compute)
        start = time.perf_counter()
        gs = GridSearchCV(AttentionProbeClassifier(**params), {"weight_decay": GRID},
                          cv=5, n_jobs=1).fit(X, y)
        t_gs = time.perf_counter() - start
        start = time.perf_counter()
        cv = AttentionProbeClassifierCV(weight_decays=GRID, cv=5, **params).fit(X, y)
        t_cv = time.perf_counter() - start
        out[f"attention_{compute}"] = {
            "gridsearch_s": t_gs, "cv_class_s": t_cv, "speedup": t_gs / t_cv,
            "gridsearch_best": gs.best_params_, "cv_best": cv.best_params_,
            "gridsearch_best_score": gs.best_score_, "cv_best_score": cv.best_score_,
            "max_abs_mean_score_diff": float(np.abs(
                gs.cv_results_["mean_test_score"] - cv.cv_results_["mean_test_score"]).max()),
        }
        print(compute, out[f"attention_{compute}"], flush=True)
    start = time.perf_counter()
    gs = GridSearchCV(MeanProbeClassifier(), {"weight_decay": GRID}, cv=5).fit(X, y)
    t_gs = time.perf_counter() - start
    start = time.perf_counter()
    cv = MeanProbeClassifierCV(weight_decays=GRID, cv=5).fit(X, y)
    t_cv = time.perf_counter() - start
    out["mean"] = {"gridsearch_s": t_gs, "cv_class_s": t_cv, "speedup": t_gs / t_cv,
                   "gridsearch_best": gs.best_params_, "cv_best": cv.best_params_,
                   "gridsearch_best_score": gs.best_score_, "cv_best_score": cv.best_score_}
    print("mean", out["mean"], flush=True)
    # per-step time of M stacked models vs M separate fits
    models = []
    Xs, ys = X[: args.sweep_texts // 2], y[: args.sweep_texts // 2]
    single = ours_step(Xs, ys, k1=3, k2=13, n_heads=8)
    for n_folds, n_wds in [(1, 1), (2, 2), (2, 4), (5, 4)]:
        def fit(k, n_folds=n_folds, n_wds=n_wds):
            start = time.perf_counter()
            AttentionProbeClassifierCV(n_heads=8, weight_decays=GRID[:n_wds],
                                       cv=max(n_folds, 2), max_iter=k, refit=False,
                                       random_state=0).fit(Xs, ys)
            return time.perf_counter() - start
        # cv=2 trains 2 folds; the (1, 1) point is a 2-fold run of 1 decay / 2
        m = max(n_folds, 2) * n_wds
        t = (fit(13) - fit(3)) / 10
        models.append({"n_models": m, "stacked_ms_per_step": 1e3 * t,
                       "separate_ms_per_step": 1e3 * single * m})
        print(models[-1], flush=True)
    out["stacked_vs_separate"] = models
    return out


# -- 4: memory on skewed lengths ----------------------------------------------
MEMORY_CHILD = r"""
import json, resource, sys, numpy as np, torch
from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray
n, d, dtype, compute = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
# warm-up fit: torch's thread pools, allocator and kernels take a fixed
# ~100 MB at the first fit of a process, which is not the fit's data
AttentionProbeClassifier(n_heads=8, max_iter=2, compute_dtype=compute).fit(
    [np.ones((3, d), dtype)] * 4, [0, 1] * 2)
rng = np.random.default_rng(0)
lengths = np.full(n, 32); lengths[: n // 100] = 4096
data = np.empty((lengths.sum(), d), dtype)
for s in range(0, len(data), 1 << 14):  # in chunks: no float32 copy in the peak
    data[s : s + (1 << 14)] = rng.standard_normal((len(data[s : s + (1 << 14)]), d))
X = RaggedArray(data, np.concatenate([[0], np.cumsum(lengths)]))
y = np.arange(n) % 2
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
before = rss()
AttentionProbeClassifier(n_heads=8, max_iter=3, compute_dtype=compute).fit(X, y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"input_bytes": int(data.nbytes), "rss_before": before, "peak": peak,
                  "padded_to_longest_bytes": int(n * 4096 * d * 4)}))
"""


def memory_section(args):
    rows = []
    for dtype, compute in [("float32", "auto"), ("float16", "auto"),
                           ("float16", "float16")]:
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(args.memory_texts),
                              "256", dtype, compute], capture_output=True, text=True,
                             check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        growth = r["peak"] - r["rss_before"]
        rows.append({"input_dtype": dtype, "compute_dtype": compute,
                     "input_mib": r["input_bytes"] / 2**20,
                     "peak_growth_mib": growth / 2**20,
                     "growth_over_input": growth / r["input_bytes"],
                     "padded_to_longest_f32_mib": r["padded_to_longest_bytes"] / 2**20})
        print(rows[-1], flush=True)
    return rows


# -- 5: low precision -----------------------------------------------------------
def precision_accuracy(task, compute, n_texts):
    torch.set_num_threads(1)
    X, y = make_planted_task(task, n_texts=n_texts, d_model=64, dtype=np.float16,
                             random_state=0)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    start = time.perf_counter()
    est = AttentionProbeClassifier(n_heads=2, compute_dtype=compute,
                                   random_state=0).fit(Xa, ya)
    return {"task": task, "compute_dtype": compute, "test_acc": est.score(Xb, yb),
            "fit_s": time.perf_counter() - start}


def precision_section(args):
    X, y = make_planted_task("needle", n_texts=args.n_texts, d_model=args.d_model,
                             n_classes=10, min_length=16, max_length=128,
                             dtype=np.float16, random_state=0)
    speed = {c: 1e3 * ours_step(X, y, k1=5, k2=15, n_heads=8, compute_dtype=c)
             for c in ("float32", "bfloat16", "float16")}
    print("ms per step by compute dtype", speed, flush=True)
    acc = Parallel(n_jobs=args.n_jobs)(
        delayed(precision_accuracy)(task, c, args.precision_texts)
        for task in ("needle", "shift", "last")
        for c in ("float32", "bfloat16", "float16"))
    for row in acc:
        print(row, flush=True)
    return {"ms_per_step": speed, "accuracy": acc}


def plots(result, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    s = result["scaling"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([r["tokens"] for r in s], [r["direct_ms"] for r in s], "o-", label="direct")
    ax.loglog([r["tokens"] for r in s], [r["ours_ms"] for r in s], "o-", label="ours")
    ax.set_xlabel("real tokens")
    ax.set_ylabel("ms per AdamW step")
    ax.set_title("8 heads, 10 classes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speed_time_per_step.png", dpi=120)
    m = result["sweep"]["stacked_vs_separate"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["n_models"] for r in m], [r["separate_ms_per_step"] for r in m], "o-",
            label="separate fits (sum)")
    ax.plot([r["n_models"] for r in m], [r["stacked_ms_per_step"] for r in m], "o-",
            label="stacked (CV class)")
    ax.set_xlabel("models trained")
    ax.set_ylabel("ms per step, all models")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speed_sweep_models.png", dpi=120)


def markdown(result):
    m, hw = result["machine"], result["hardware"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads); measured copy bandwidth "
        f"{hw['bandwidth'] / 1e9:.1f} GB/s, read bandwidth "
        f"{hw.get('read_bandwidth', float('nan')) / 1e9:.1f} GB/s, GEMM {hw['gemm_f32'] / 1e9:.0f} GFLOP/s "
        f"float32, {hw['gemm_bf16'] / 1e9:.0f} GFLOP/s bfloat16."]
    if "steps" in result:
        st = result["steps"]
        base = st["versions"].get("0.1.0")
        lines += ["", f"ms per AdamW step, {st['n_heads']} heads, {st['n_classes']} "
                  f"classes, {st['n_texts']} texts x 16-128 tokens ({st['tokens']} "
                  f"tokens) x d {st['d_model']}, one thread; medians over "
                  f"{st['rows'][0]['ours_n']} steps in alternating subprocesses; "
                  f"roofline: two reads of the real tokens' bytes at the read "
                  f"bandwidth, {st['bandwidth'] / 1e9:.1f} GB/s (median of "
                  f"{len(st['bandwidth_runs'])} measurements in this run); compute "
                  f"floor: the fused operator's {st['fused_gflop_per_step']:.1f} GFLOP "
                  f"at the rate of its per-text products in cache "
                  f"({st['thin_product_fma_per_s'] / 1e9:.0f} GFMA/s); direct: the "
                  f"fastest of {st['direct_repeats']} steps in this process (which "
                  f"favours it)"
                  + (f"; 0.1.0 from {base['file']}" if base else "") + ".", "",
                  "| input / compute | ours ms | 0.1.0 ms | direct ms | two-read "
                  "roofline ms | compute floor ms | ours / roofline | ours / compute "
                  "floor | 0.1.0 / roofline | vs 0.1.0 (same compute) | vs 0.1.0 (its "
                  "best, same input) | vs direct |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in st["rows"]:
            def f(key, fmt="{:.1f}"):
                return fmt.format(r[key]) if key in r else "-"
            lines.append(
                f"| {r['config']} | {f('ours_ms')} | {f('0.1.0_ms')} | "
                f"{f('direct_ms')} | {f('roofline_ms')} | {f('compute_floor_ms')} | "
                f"{f('ours_fraction_of_roofline', '{:.2f}')} | "
                f"{f('ours_fraction_of_compute_floor', '{:.2f}')} | "
                f"{f('0.1.0_fraction_of_roofline', '{:.2f}')} | "
                f"{f('speedup_vs_0.1.0', '{:.1f}x')} | "
                f"{f('speedup_vs_best_0.1.0', '{:.1f}x')} | "
                f"{f('speedup_vs_direct', '{:.1f}x')} |")
    if "accuracy" in result:
        lines += ["", "| classes | ours acc | direct acc | steps |", "|---|---|---|---|"]
        for r in result["accuracy"]:
            lines.append(f"| {r['n_classes']} | {r['ours_test_acc']:.3f} | "
                         f"{r['direct_test_acc']:.3f} | {r['acc_steps']} |")
    if "sweep" in result:
        lines += ["", "| sweep | GridSearchCV s | CV class s | speed-up | same choice | "
                  "best CV score (GS / CV) |", "|---|---|---|---|---|---|"]
        for name, r in result["sweep"].items():
            if name == "stacked_vs_separate":
                continue
            lines.append(f"| {name} | {r['gridsearch_s']:.1f} | {r['cv_class_s']:.1f} | "
                         f"{r['speedup']:.1f}x | {r['gridsearch_best'] == r['cv_best']} | "
                         f"{r['gridsearch_best_score']:.3f} / {r['cv_best_score']:.3f} |")
    if "memory" in result:
        lines += ["", "| input | compute | input MiB | peak growth MiB | growth / input | "
                  "padded-to-longest f32 MiB |", "|---|---|---|---|---|---|"]
        for r in result["memory"]:
            lines.append(f"| {r['input_dtype']} | {r['compute_dtype']} | "
                         f"{r['input_mib']:.0f} | {r['peak_growth_mib']:.0f} | "
                         f"{r['growth_over_input']:.2f} | "
                         f"{r['padded_to_longest_f32_mib']:.0f} |")
    if "precision" in result:
        p = result["precision"]
        lines += ["", "ms per step by compute dtype (float16 input): " + ", ".join(
            f"{k} {v:.1f}" for k, v in p["ms_per_step"].items()), "",
            "| task | compute | test acc | fit s |", "|---|---|---|---|"]
        for r in p["accuracy"]:
            lines.append(f"| {r['task']} | {r['compute_dtype']} | {r['test_acc']:.3f} | "
                         f"{r['fit_s']:.1f} |")
    return "\n".join(lines)


SECTIONS = ("steps", "accuracy", "scaling", "sweep", "memory", "precision")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count())
    parser.add_argument("--baseline-python", default=None,
                        help="python of an environment with 0.1.0 installed "
                             "(e.g. /tmp/venv010/bin/python)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    big = not args.quick
    args.n_texts = 1500 if big else 200
    args.d_model = 384 if big else 64
    args.acc_steps = 60 if big else 10
    args.scaling_sizes = [250, 500, 1000, 2000] if big else [100, 200]
    args.sweep_texts = 1000 if big else 150
    args.sweep_steps = 100 if big else 10
    args.memory_texts = 4000 if big else 300
    args.precision_texts = 600 if big else 150
    args.step_repeats = 5 if big else 2
    args.steps_per_run = 5 if big else 2

    torch.set_num_threads(1)
    hw = {"bandwidth": bandwidth(), "read_bandwidth": read_bandwidth(),
          "gemm_f32": gemm_throughput(torch.float32),
          "gemm_bf16": gemm_throughput(torch.bfloat16, n=512)}
    print(hw, flush=True)
    start = time.perf_counter()
    result = {"machine": machine(), "hardware": hw}
    run = {"steps": lambda: step_section(args, hw), "accuracy": lambda: accuracy_section(args),
           "scaling": lambda: scaling_section(args), "sweep": lambda: sweep_section(args),
           "memory": lambda: memory_section(args),
           "precision": lambda: precision_section(args)}
    for name in SECTIONS:
        if name in sections:
            result[name] = run[name]()
    result["total_s"] = time.perf_counter() - start
    table = markdown(result)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps(result, indent=2, default=str))
        (args.out / "speed.md").write_text(table + f"\n\nTotal {result['total_s']:.0f} s.\n")
        if "scaling" in result and "sweep" in result:
            plots(result, args.out)


if __name__ == "__main__":
    main()
