"""What a RaggedArray saves when joblib ships data to parallel workers.

The same 12-fit grid (4 weight decays x 3 folds, ``n_jobs=2``) over the same
texts, passed once as a list of small arrays and once as a RaggedArray. With a
list, every task pickles thousands of arrays; a RaggedArray's single buffer is
memory-mapped once by joblib and only index arrays travel.

    python benchmarks/bench_joblib.py [--n-texts 20000] [--out benchmarks/results]
"""

import argparse
import json
import time
from pathlib import Path

from sklearn.model_selection import GridSearchCV

from sklearn_attnprobe import MeanProbeClassifier, RaggedArray
from sklearn_attnprobe.datasets import make_planted_task


def timed_grid(X, y):
    search = GridSearchCV(MeanProbeClassifier(), {"weight_decay": [0, 1e-3, 1e-2, 1e-1]},
                          cv=3, n_jobs=2)
    start = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - start, search.best_score_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=20000)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    X, y = make_planted_task("shift", n_texts=args.n_texts, d_model=args.d_model,
                             min_length=4, max_length=40, random_state=0)
    R = RaggedArray.from_list(X)
    timed_grid(R[:200], y[:200])  # start the workers once, outside the timings
    t_list, s_list = timed_grid(X, y)
    t_ragged, s_ragged = timed_grid(R, y)
    result = {"n_texts": args.n_texts, "d_model": args.d_model,
              "data_mib": R.data.nbytes / 2**20, "list_s": t_list, "ragged_s": t_ragged,
              "speedup": t_list / t_ragged, "same_best_score": bool(s_list == s_ragged)}
    text = (f"12-fit GridSearchCV (n_jobs=2) of MeanProbeClassifier over {args.n_texts} "
            f"texts ({result['data_mib']:.0f} MiB float32): list of arrays "
            f"{t_list:.1f} s, RaggedArray {t_ragged:.1f} s ({result['speedup']:.1f}x); "
            f"same best score: {result['same_best_score']}.")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "joblib.json").write_text(json.dumps(result, indent=2))
        (args.out / "joblib.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
