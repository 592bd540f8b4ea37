"""One search over ``n_heads=[1, 2, 8]`` against three searches of one head count.

The study fits the 1-, 2- and 8-head attention probes of every (task, layer)
with the seed's protocol: 5-fold CV over 4 weight decays, then the best weight
decay refitted on all training texts. This benchmark times that on the study's
own activations (its cache, float16 SmolLM2-135M states) both ways, one
after the other for each pair, in one process with one torch thread:

* ``separate``: ``AttentionProbeClassifierCV(n_heads=h)`` for h = 1, 2, 8
  (each refits its best weight decay);
* ``one search``: ``AttentionProbeClassifierCV(n_heads=[1, 2, 8],
  refit=False)``, then per head count the refit of its best weight decay, as
  ``benchmarks.study.protocol.run_attention_configs`` does.

It checks that both ways choose the same weight decays, and reports whether
every model took the same number of steps (float rounding may move a
stopping step when the stack's width changes).

    python -m benchmarks.bench_head_search --cache <study activation cache> \\
        --out benchmarks/results
"""

import argparse
import glob
import sys
import time
import warnings
from pathlib import Path

import numpy as np

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1)
HEADS = (1, 2, 8)
PAIRS = ("code_language:16", "bbc_topic:16", "needle_middle:8")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="the study's activation cache folder")
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), help="TASK:LAYER pairs")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for head_search.md (default: print only)")
    return p.parse_args(argv)


def _train_part(cache, model, task, layer):
    from sklearn.model_selection import train_test_split

    from benchmarks.study.run import STUDY_PER_CLASS
    from benchmarks.study.tasks import build_task
    from sklearn_attnprobe import RaggedArray

    t = build_task(task, n_per_class=STUDY_PER_CLASS.get(task))
    path = glob.glob(f"{cache}/{model}-{task}-*/layer{layer}.npz")
    if not path:
        raise SystemExit(f"no cached activations for {task} layer {layer} in {cache}")
    X = RaggedArray.load(path[0], mmap_mode="r")
    y = np.asarray(t.y)
    # the study's split (benchmarks.study.run: stratified 80/20, seed 0)
    train, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                                random_state=0)
    train = np.sort(train)
    return X[train], y[train]


def separate(X, y):
    from sklearn_attnprobe import AttentionProbeClassifierCV

    start = time.perf_counter()
    fits = [AttentionProbeClassifierCV(n_heads=h, weight_decays=WEIGHT_DECAYS, cv=5,
                                       max_iter=500, random_state=0).fit(X, y)
            for h in HEADS]
    seconds = time.perf_counter() - start
    return seconds, [f.best_params_["weight_decay"] for f in fits], \
        np.concatenate([f.n_iter_ for f in fits], axis=1)


def one_search(X, y):
    from benchmarks.study.protocol import best_by_head_count
    from sklearn_attnprobe import AttentionProbeClassifier, AttentionProbeClassifierCV

    start = time.perf_counter()
    cv = AttentionProbeClassifierCV(n_heads=list(HEADS), weight_decays=WEIGHT_DECAYS, cv=5,
                                    max_iter=500, random_state=0, refit=False).fit(X, y)
    best = best_by_head_count(cv.cv_results_)
    chosen = []
    for h in HEADS:
        wd = cv.cv_results_["params"][best[h]]["weight_decay"]
        AttentionProbeClassifier(n_heads=h, weight_decay=wd, max_iter=500,
                                 random_state=0).fit(X, y)
        chosen.append(wd)
    return time.perf_counter() - start, chosen, cv.n_iter_


def main(argv=None):
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # ConvergenceWarnings of the long fits
    rows = []
    for pair in args.pairs:
        task, layer = pair.split(":")
        X, y = _train_part(args.cache, args.model, task, int(layer))
        t_sep, wd_sep, it_sep = separate(X, y)
        t_one, wd_one, it_one = one_search(X, y)
        rows.append(f"| {task} | {layer} | {t_sep:.1f} | {t_one:.1f} | {t_sep / t_one:.2f}x | "
                    f"{wd_sep == wd_one} | {np.array_equal(it_sep, it_one)} |")
        print(rows[-1], flush=True)
    text = (
        "CV-tuned 1-, 2- and 8-head attention probes of a study (task, layer), "
        "`python -m benchmarks.bench_head_search`: three `AttentionProbeClassifierCV` "
        "searches (one head count each) against one search over `n_heads=[1, 2, 8]` "
        "and a refit per head count; 5 folds x 4 weight decays, the study's 800 "
        "training texts of float16 SmolLM2-135M activations (d 576, up to 128 tokens), "
        "one torch thread, one process, seconds including the refits.\n\n"
        "| task | layer | separate s | one search s | speed-up | same weight decays | "
        "same steps |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "head_search.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
