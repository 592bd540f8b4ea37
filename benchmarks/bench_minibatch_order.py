"""Bucketed vs uniformly random minibatch order in streamed training.

A streamed fit (memory-mapped ``RaggedArray``, ``batch_size`` set) draws its
minibatches as shuffled runs of ``batch_size // 8`` neighbouring texts, so the
disk reads a few long stretches per step (``sklearn_attnprobe._streaming``).
This measures what that costs in convergence against a uniform shuffle
(runs of one text), on two files holding the same planted needle task:

* ``shuffled``: texts written in random order (neighbours are unrelated);
* ``sorted``: texts written class by class (the worst case: a run is one class).

For each file and order, ``AttentionProbeClassifier(n_heads=8,
batch_size=256)`` is fitted with its stopping rule from the mapped file, and
the table reports AdamW steps, the final epoch objective and the accuracy on
held-out texts, over a few seeds.

    python -m benchmarks.bench_minibatch_order --out benchmarks/results
"""

import argparse
import json
import os
import tempfile
import time
import warnings
from unittest import mock

import numpy as np

from benchmarks._results import save_results


def _fit(path, offsets, y, X_test, y_test, batch_size, bucketed, seed, max_iter):
    from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray, _streaming

    X = RaggedArray(np.load(path, mmap_mode="r"), offsets)
    runs = _streaming.BUCKETS_PER_BATCH if bucketed else batch_size  # run of 1 text
    est = AttentionProbeClassifier(n_heads=8, batch_size=batch_size, max_iter=max_iter,
                                   random_state=seed)
    with mock.patch.object(_streaming, "BUCKETS_PER_BATCH", runs), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - start
    return dict(steps=int(est.n_iter_), final_loss=float(est.loss_curve_[-1]),
                test_accuracy=float(est.score(X_test, y_test)), fit_s=seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for minibatch_order.{json,md}")
    args = parser.parse_args(argv)

    import torch

    from sklearn_attnprobe.datasets import make_planted_task

    torch.set_num_threads(1)
    X_all, y_all = make_planted_task("needle", n_texts=args.n_train + args.n_test,
                                     d_model=args.d_model, min_length=16, max_length=64,
                                     return_ragged=True, random_state=0)
    train = np.arange(args.n_train)
    X_train, y_train = X_all[train], y_all[train]
    X_test = X_all[np.arange(args.n_train, len(y_all))].pack()
    y_test = y_all[args.n_train:]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        layouts = {"shuffled": np.random.default_rng(0).permutation(args.n_train),
                   "sorted": np.argsort(y_train, kind="stable")}
        for layout, perm in layouts.items():
            Xl = X_train[perm].pack()
            path = os.path.join(folder, f"{layout}.npy")
            np.save(path, np.asarray(Xl.data))
            for bucketed in (True, False):
                for seed in range(args.seeds):
                    r = _fit(path, Xl.offsets, y_train[perm], X_test, y_test,
                             args.batch_size, bucketed, seed, args.max_iter)
                    rows.append(dict(layout=layout,
                                     order="bucketed" if bucketed else "random",
                                     seed=seed, **r))
                    print(json.dumps(rows[-1]), flush=True)
    text = report(rows, args)
    print(text)
    if args.out:
        save_results(args.out, "minibatch_order", rows, text)


def report(rows, args):
    lines = ["| file order | minibatch order | steps | final objective | test accuracy |",
             "|---|---|---|---|---|"]
    for layout in ("shuffled", "sorted"):
        for order in ("bucketed", "random"):
            sel = [r for r in rows if r["layout"] == layout and r["order"] == order]
            if not sel:
                continue

            def stat(key, fmt):
                v = np.array([r[key] for r in sel], dtype=float)
                return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

            lines.append(f"| {layout} | {order} | {stat('steps', '.0f')} | "
                         f"{stat('final_loss', '.4f')} | {stat('test_accuracy', '.3f')} |")
    lines.append(
        f"\nPlanted needle task, {args.n_train} training texts of 16-64 tokens, d_model "
        f"{args.d_model}, {args.n_test} test texts; AttentionProbeClassifier(n_heads=8, "
        f"batch_size={args.batch_size}) from a memory-mapped file with its stopping rule "
        f"(max_iter={args.max_iter}); mean ± std over {args.seeds} seeds. Bucketed: "
        f"runs of {args.batch_size // 8} neighbouring texts; random: runs of one.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
