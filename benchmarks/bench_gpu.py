"""GPU benchmark: steps per second and the fraction of the memory roofline.

A realistic size: 16k texts of up to 128 tokens at d_model 2304 (Gemma-2-2B's
width), float16 activations, an 8-head attention probe. The script measures,
in the same run, the GPU's memory bandwidth (a large device-to-device copy)
and the time per AdamW step of ``AttentionProbeClassifier`` (the difference
of two fits with different ``max_iter``, so packing and set-up cancel out),
then reports the step time as a fraction of the roofline: two reads of the
real tokens (once forward, once backward) at the measured bandwidth.

    python benchmarks/bench_gpu.py [--out benchmarks/results]

Needs a CUDA GPU; run on the lent machine.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measured_bandwidth(device, n_bytes=4 << 30):
    """Copy bandwidth in bytes/s on the device, counting read + write."""
    a = torch.ones(n_bytes // 2, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync(device)
    elapsed = (time.perf_counter() - start) / reps
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()
    return 2 * n_bytes / elapsed


def shared_buffer_texts(n_texts, min_len, max_len, d_model, rng):
    """Texts as windows into one random buffer (building 16k distinct random
    texts on the host would dominate the run; the probe cannot tell)."""
    buffer_tokens = 1 << 17
    data = rng.standard_normal((buffer_tokens, d_model), dtype=np.float32).astype(np.float16)
    lengths = rng.integers(min_len, max_len + 1, size=n_texts)
    starts = rng.integers(0, buffer_tokens - max_len, size=n_texts)
    y = rng.integers(0, 2, size=n_texts)  # random labels: this measures speed only
    return RaggedArray(data, starts=starts, lengths=lengths), y


def time_per_step(X, y, compute_dtype, n_heads, device, k1=5, k2=25):
    def fit(k):
        est = AttentionProbeClassifier(n_heads=n_heads, max_iter=k, device=device,
                                       compute_dtype=compute_dtype, random_state=0)
        sync(device)
        start = time.perf_counter()
        est.fit(X, y)
        sync(device)
        return time.perf_counter() - start, est

    fit(2)  # warm-up: CUDA context, kernels, allocator
    t1, _ = fit(k1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t2, est = fit(k2)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else float("nan")
    return (t2 - t1) / (k2 - k1), t1, peak, est


def sweep(args, rng):
    """The batched CV class against GridSearchCV, on the GPU."""
    from sklearn.model_selection import GridSearchCV

    from sklearn_attnprobe import AttentionProbeClassifierCV

    X, y = shared_buffer_texts(args.sweep_texts, args.min_length, args.max_length,
                               args.d_model, rng)
    grid = [0.0, 1e-3, 1e-2, 1e-1]
    params = dict(n_heads=args.n_heads, max_iter=100, device=args.device,
                  compute_dtype="float16", random_state=0)
    sync(args.device)
    start = time.perf_counter()
    gs = GridSearchCV(AttentionProbeClassifier(**params), {"weight_decay": grid},
                      cv=5).fit(X, y)
    sync(args.device)
    t_gs = time.perf_counter() - start
    start = time.perf_counter()
    cv = AttentionProbeClassifierCV(weight_decays=grid, cv=5, **params).fit(X, y)
    sync(args.device)
    t_cv = time.perf_counter() - start
    return {"max_iter": 100, "gridsearch_s": t_gs, "cv_class_s": t_cv,
            "speedup": t_gs / t_cv, "same_choice": gs.best_params_ == cv.best_params_,
            "max_abs_mean_score_diff": float(np.abs(
                gs.cv_results_["mean_test_score"]
                - cv.cv_results_["mean_test_score"]).max())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=16384)
    parser.add_argument("--min-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=2304)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a 10-step float16 fit (CPU and CUDA time per op)")
    parser.add_argument("--bandwidth-gib", type=int, default=4)
    parser.add_argument("--sweep-texts", type=int, default=0,
                        help="also time AttentionProbeClassifierCV against GridSearchCV")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    X, y = shared_buffer_texts(args.n_texts, args.min_length, args.max_length,
                               args.d_model, rng)
    real_tokens = X.n_tokens
    padded_tokens = args.n_texts * args.max_length
    bw = measured_bandwidth(args.device, args.bandwidth_gib << 30)
    rows = []
    for compute_dtype in ("float16", "float32"):
        step, setup, peak, _ = time_per_step(X, y, compute_dtype, args.n_heads, args.device)
        itemsize = 2 if compute_dtype == "float16" else 4
        roofline = 2 * real_tokens * args.d_model * itemsize / bw
        padded_roofline = 2 * padded_tokens * args.d_model * 2 / bw
        rows.append({
            "compute_dtype": compute_dtype,
            "ms_per_step": 1e3 * step,
            "steps_per_s": 1.0 / step,
            "roofline_ms": 1e3 * roofline,
            "fraction_of_roofline": roofline / step,
            "padded_fp16_two_reads_ms": 1e3 * padded_roofline,
            "fit_5_steps_s_incl_packing": setup,
            "peak_gpu_gib": peak / 2**30,
        })
        print(rows[-1], flush=True)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "host": platform.node(),
        "bandwidth_tb_s": bw / 1e12,
        "n_texts": args.n_texts,
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "real_tokens": int(real_tokens),
        "real_fraction_of_padded": real_tokens / padded_tokens,
        "rows": rows,
    }
    lines = [
        f"GPU: {result['device']}, torch {result['torch']}, measured copy bandwidth "
        f"{result['bandwidth_tb_s']:.2f} TB/s; {args.n_texts} texts, lengths "
        f"{args.min_length}-{args.max_length} ({100 * result['real_fraction_of_padded']:.0f}% "
        f"of the padded tensor is real), d_model {args.d_model}, {args.n_heads} heads, "
        "float16 activations.",
        "",
        "| compute dtype | ms / step | steps / s | roofline ms (2 reads of real tokens) "
        "| fraction of roofline | peak GPU GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['compute_dtype']} | {r['ms_per_step']:.2f} | {r['steps_per_s']:.0f} | "
            f"{r['roofline_ms']:.2f} | {r['fraction_of_roofline']:.2f} | "
            f"{r['peak_gpu_gib']:.1f} |"
        )
    if args.sweep_texts:
        result["sweep"] = sweep(args, rng)
        s = result["sweep"]
        lines += ["", f"Sweep over 4 weight decays x 5 folds ({args.sweep_texts} texts, "
                  f"{s['max_iter']} steps, float16 compute): GridSearchCV(n_jobs=1) "
                  f"{s['gridsearch_s']:.1f} s, AttentionProbeClassifierCV "
                  f"{s['cv_class_s']:.1f} s ({s['speedup']:.1f}x); same choice: "
                  f"{s['same_choice']}."]
    table = "\n".join(lines)
    print(table)
    if args.profile and args.device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        est = AttentionProbeClassifier(n_heads=args.n_heads, max_iter=10, device="cuda",
                                       compute_dtype="float16", random_state=0)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            est.fit(X, y)
        summary = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(summary)
        if args.out is not None:
            (args.out / "gpu_profile.txt").write_text(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2))
        (args.out / "gpu.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
