"""Timings quoted on the GPU page of the documentation (docs/user_guide/gpu.rst).

One planted "needle" task of realistic width, float16 activations, fitted on
the CPU and on the GPU, and on the GPU in each compute dtype:

    python docs/scripts/gpu_timings.py [--out results.json]

Needs a CUDA GPU. Each timed fit follows a warm-up fit of the same estimator,
so CUDA context creation and kernel compilation are not counted; packing the
texts (host to device copy included) is.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from sklearn_attnprobe import (AttentionProbeClassifier, AttentionProbeClassifierCV,
                               MeanProbeClassifier)
from sklearn_attnprobe.datasets import make_planted_task


def timed(make, X, y, device):
    make().fit(X[:64], y[:64])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    est = make().fit(X, y)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return est, seconds, peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-texts", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    X, y = make_planted_task("needle", n_texts=args.n_texts, d_model=args.d_model,
                             min_length=16, max_length=args.max_length,
                             dtype=np.float16, random_state=0, return_ragged=True)
    n_train = int(0.8 * len(y))
    Xtr, ytr, Xte, yte = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    rows = []

    def record(name, device, dtype, est, seconds, peak):
        row = {"estimator": name, "device": device, "compute_dtype": dtype,
               "fit_s": round(seconds, 3),
               "test_accuracy": round(float(est.score(Xte, yte)), 3),
               "peak_gpu_gib": None if peak is None else round(peak, 2)}
        rows.append(row)
        print(row, flush=True)
        return est

    devices = (["cpu"] if args.cpu else []) + ["cuda"]
    for device in devices:
        def attn():
            return AttentionProbeClassifier(n_heads=8, max_iter=args.max_iter,
                                            random_state=0, device=device)

        est, s, p = timed(attn, Xtr, ytr, device)
        record("AttentionProbeClassifier(n_heads=8)", device, "auto", est, s, p)
        est, s, p = timed(lambda: MeanProbeClassifier(device=device), Xtr, ytr, device)
        record("MeanProbeClassifier", device, "auto", est, s, p)

    reference = None
    for dtype in ("float32", "bfloat16", "float16"):
        def attn_dtype():
            return AttentionProbeClassifier(n_heads=8, max_iter=args.max_iter,
                                            random_state=0, device="cuda",
                                            compute_dtype=dtype)

        est, s, p = timed(attn_dtype, Xtr, ytr, "cuda")
        record("AttentionProbeClassifier(n_heads=8)", "cuda", dtype, est, s, p)
        proba = est.predict_proba(Xte)[:, 1]
        if reference is None:
            reference = proba
        rows[-1]["max_proba_diff_vs_float32"] = float(np.abs(proba - reference).max())

    def cv_attn():
        return AttentionProbeClassifierCV(n_heads=8, max_iter=args.max_iter, cv=5,
                                          random_state=0, device="cuda")

    est, s, p = timed(cv_attn, Xtr, ytr, "cuda")
    record("AttentionProbeClassifierCV(n_heads=8, cv=5, 4 weight decays)", "cuda",
           "auto", est, s, p)

    info = {
        "gpu": torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "n_texts_train": int(n_train),
        "n_tokens_train": int(Xtr.n_tokens),
        "d_model": args.d_model,
        "max_iter": args.max_iter,
        "rows": rows,
    }
    print(json.dumps(info, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
