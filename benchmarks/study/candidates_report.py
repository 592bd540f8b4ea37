"""Tables of the training candidates (:mod:`candidates`) against the study's own
attn-8 probe (the ``baseline``), the best pooled probe and the oracle.

``baseline`` rows come from the study run itself (``results.csv``,
``evidence.csv``, ``predictions.csv``): the same fit, so it is not run again.
The candidate fits ran under the same conditions (two jobs on two cores).
::

    python -m benchmarks.study.candidates_report --run /work/study_full \\
        --run /work/study_minilm --results benchmarks/results/candidates
"""

import argparse
from pathlib import Path

import numpy as np

from . import stats

POOLED = ("mean", "last")


def _bits(s):
    return np.array([c == "1" for c in s], dtype=float)


def study_rows(run):
    """``{(task, layer): {method: correct array}}`` and the attn-8 baseline rows."""
    from .evidence import run_options

    model = run_options(run)[0].model
    groups = stats._group(stats.read_csv(Path(run) / "predictions.csv"))
    correct = {key: {m: np.array([int(r["y_pred"]) == int(r["y_true"]) for r in rows],
                                 dtype=float) for m, rows in methods.items()}
               for key, methods in groups.items()}
    recall = {(r["task"], int(r["layer"])): r for r in
              stats.read_csv(Path(run) / "evidence.csv") if r["method"] == "attn-8"}
    baseline = []
    for r in stats.read_csv(Path(run) / "results.csv"):
        if r["method"] != "attn-8":
            continue
        key = (r["task"], int(r["layer"]))
        row = {"model": model, "task": r["task"], "layer": key[1], "candidate": "baseline",
               "test_accuracy": round(float(r["test_accuracy"]), 4),
               "best_weight_decay": float(r["best_weight_decay"]),
               "fit_seconds": round(float(r["fit_seconds"]), 1),
               "n_test": int(r["n_test"])}
        if key in recall:
            row.update(recall_mean_head=float(recall[key]["recall_mean_head"]),
                       recall_best_head=float(recall[key]["recall_best_head"]))
        row["correct"] = "".join(str(int(c)) for c in correct[key]["attn-8"])
        baseline.append(row)
    return model, correct, baseline


def oracle_correct(run, model, tasks_needed):
    """Per-text correctness of the oracle on each needle (task, layer) of ``run``."""
    from sklearn_attnprobe import RaggedArray

    from .evidence import _run_args, oracle_predictions, read_evidence, tasks_of_run
    from .run import _data_paths, _split

    built, model_name, layers, max_length, seed = tasks_of_run(run)
    run_args = _run_args(Path(run) / "cache", model_name, layers, max_length, seed)
    out = {}
    for task in built:
        if task.name not in tasks_needed:
            continue
        folder, paths = _data_paths(run_args, task)
        evidence = read_evidence(folder)[0]
        train, test = _split(task.y, seed)
        for layer, path in paths.items():
            X = RaggedArray.load(path, mmap_mode="r")
            pred, _ = oracle_predictions(X, task.y, evidence, train, test)
            out[(task.name, int(layer))] = (pred == np.asarray(task.y)[test]).astype(float)
    return out


def _fmt(v, digits=3):
    return "" if v is None or v == "" else f"{float(v):.{digits}f}"


def summarise(rows, correct, oracle):
    """Per-candidate summary rows (dicts) over the (model, task, layer) pairs."""
    from .evidence import gap_closed

    base = {(r["model"], r["task"], r["layer"]): r for r in rows
            if r["candidate"] == "baseline"}
    out = []
    for cand in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == cand
                and (r["model"], r["task"], r["layer"]) in base]
        if not mine:
            continue
        wtl, deltas, at_or_above, half, gaps, t_c, t_b = [0, 0, 0], [], 0, 0, 0, 0.0, 0.0
        for r in mine:
            key = (r["model"], r["task"], r["layer"])
            a, b = _bits(r["correct"]), _bits(base[key]["correct"])
            d, low, high = stats.paired_bootstrap(a, b)
            wtl[0 if low > 0 else 2 if high < 0 else 1] += 1
            deltas.append(d)
            t_c += float(r["fit_seconds"])
            t_b += float(base[key]["fit_seconds"])
            pair = correct[key]
            pooled = max(POOLED, key=lambda m: pair[m].mean())
            _, _, high = stats.paired_bootstrap(a, pair[pooled])
            at_or_above += high >= 0  # the target: no interval below zero
            if key in oracle:
                share, _, _ = gap_closed(a, pair[pooled], oracle[key])
                if share is not None:
                    gaps += 1
                    half += share >= 0.5
        recalls = [float(r["recall_mean_head"]) for r in mine if r.get("recall_mean_head")]
        best = [float(r["recall_best_head"]) for r in mine if r.get("recall_best_head")]
        out.append({
            "candidate": cand, "pairs": len(mine),
            "accuracy": np.mean([float(r["test_accuracy"]) for r in mine]),
            "delta": np.mean(deltas), "wtl": "/".join(map(str, wtl)),
            "not_below_pooled": at_or_above, "half_gap": f"{half}/{gaps}" if oracle else "",
            "recall_mean": np.mean(recalls) if recalls else None,
            "recall_best": np.mean(best) if best else None,
            "time_ratio": t_c / t_b})
    return out


def summary_markdown(summary, scope):
    head = ("| candidate | pairs | mean accuracy | vs baseline (points) | W/T/L vs baseline "
            "| pairs not below best pooled | gap closed >= half | recall (mean head) "
            "| recall (best head) | fit time vs baseline |\n|---|---|---|---|---|---|---|---|"
            "---|---|\n")
    lines = [f"| {s['candidate']} | {s['pairs']} | {s['accuracy']:.3f} | "
             f"{100 * s['delta']:+.2f} | {s['wtl']} | {s['not_below_pooled']} | "
             f"{s['half_gap']} | {_fmt(s['recall_mean'])} | {_fmt(s['recall_best'])} | "
             f"{s['time_ratio']:.2f}x |" for s in summary]
    return f"### {scope}\n\n" + head + "\n".join(lines) + "\n"


def pairs_markdown(rows, candidates):
    keys = sorted({(r["model"], r["task"], r["layer"]) for r in rows})
    by = {(r["model"], r["task"], r["layer"], r["candidate"]): r for r in rows}
    head = "| model | task | layer | " + " | ".join(candidates) + " |\n|---|---|---|" \
        + "---|" * len(candidates) + "\n"
    lines = []
    for k in keys:
        cells = []
        for c in candidates:
            r = by.get(k + (c,))
            cells.append("" if r is None else f"{float(r['test_accuracy']):.3f}"
                         + (f" / {float(r['recall_mean_head']):.2f}"
                            if r.get("recall_mean_head") not in (None, "") else ""))
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def planted_markdown(rows):
    """Baseline against each candidate on the planted tasks (1,000 / 2,000 texts)."""
    by = {(r["task"], r["heads"], r["candidate"]): r for r in rows}
    cands = [c for c in dict.fromkeys(r["candidate"] for r in rows) if c != "baseline"]
    head = ("### planted\n\nThe planted tasks of `benchmarks/choose_defaults.py` (1,000 "
            "training and 2,000 test texts of 16-128 tokens, d 128), CV-tuned probe: test "
            "accuracy (chosen weight decay)\n\n| task | heads | baseline | "
            + " | ".join(cands) + " |\n|---|---|---|" + "---|" * len(cands) + "\n")
    lines = []
    for task, heads in sorted({(r["task"], int(r["heads"])) for r in rows}):
        cells = []
        for c in ["baseline"] + cands:
            r = by.get((task, str(heads), c))
            cells.append("" if r is None else
                         f"{float(r['test_accuracy']):.3f} ({float(r['best_weight_decay']):g})")
        lines.append(f"| {task} | {heads} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


REFIT_INTRO = (
    "Refit variants (`candidates --refit`): per pair the study's cross-validation pass "
    "for attn-8 picks the weight decay, then the 8-head probe is refitted on the "
    "training texts once per variant; `baseline` is that refit unchanged (the "
    "study's own attn-8 probe). Fit time: the CV pass plus the refit.\n\n")


def planted_refit_markdown(rows):
    """Test accuracy of each refit variant on the planted tasks."""
    cands = list(dict.fromkeys(r["candidate"] for r in rows))
    by = {(r["task"], r["candidate"]): r for r in rows}
    head = ("### planted, refit variants\n\nThe planted tasks of "
            "`benchmarks/choose_defaults.py` (1,000 training and 2,000 test texts; "
            "the d 384 needle: 2,000 and 500), weight decay chosen by the CV pass: "
            "test accuracy (AdamW steps)\n\n| task | weight decay | "
            + " | ".join(cands) + " |\n|---|---|" + "---|" * len(cands) + "\n")
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = [f"{float(by[task, c]['test_accuracy']):.3f} ({by[task, c]['n_iter']})"
                 if (task, c) in by else "" for c in cands]
        wd = float(by[task, cands[0]]["best_weight_decay"])
        lines.append(f"| {task} | {wd:g} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _scope_section(rows, scope, refit, baseline, correct, studies):
    """The summary and per-pair tables of one results file. Refit screens
    carry their own baseline rows (the study's fit, refitted); the others
    are compared with the study run's attn-8 rows."""
    for r in rows:
        r["layer"] = int(r["layer"])
    keys = {(r["model"], r["task"], r["layer"]) for r in rows}
    if not refit:
        rows = [b for b in baseline if (b["model"], b["task"], b["layer"]) in keys] + rows
    oracle = {}
    if scope == "needle":
        for run, model in studies:
            tasks = {k[1] for k in keys if k[0] == model}
            oracle.update({(model,) + k: v for k, v in
                           oracle_correct(run, model, tasks).items()})
    label = f"{scope}, refit variants" if refit else scope
    cands = list(dict.fromkeys(r["candidate"] for r in rows))
    return ((REFIT_INTRO if refit else "")
            + summary_markdown(summarise(rows, correct, oracle), label) + "\n"
            + f"Per pair ({label}): test accuracy / evidence recall (mean head)\n\n"
            + pairs_markdown(rows, cands))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.study.candidates_report")
    p.add_argument("--run", type=Path, action="append", required=True)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/candidates"))
    args = p.parse_args(argv)
    correct, baseline = {}, []
    studies = []
    for run in args.run:
        model, c, b = study_rows(run)
        correct.update({(model,) + k: v for k, v in c.items()})
        baseline += b
        studies.append((run, model))
    md = ["# Training candidates for the attention probe (issue 14)\n",
          "Each row: the CV-tuned 8-head probe trained with one change, over the "
          "(model, task, layer) pairs of the scope; `baseline` is the study's own attn-8 "
          "fit. W/T/L count paired-bootstrap 95% intervals of the accuracy difference "
          "against the baseline; 'not below best pooled' counts pairs where the "
          "95% interval of the candidate minus the best pooled probe (mean or last-token, "
          "by test accuracy) is not entirely below zero; 'gap closed >= half' counts, "
          "among the pairs where the oracle leads the best pooled probe, those where the "
          "candidate closes at least half of that gap; recall is the evidence recall of the 8 heads.\n"]
    for scope, refit in (("needle", False), ("control", False), ("needle", True),
                         ("control", True)):
        path = args.results / (f"{scope}_refit.csv" if refit else f"{scope}.csv")
        if path.exists():
            md.append(_scope_section(stats.read_csv(path), scope, refit, baseline, correct,
                                     studies))
    planted = args.results / "planted.csv"
    if planted.exists():
        md.append(planted_markdown(stats.read_csv(planted)))
    planted = args.results / "planted_refit.csv"
    if planted.exists():
        md.append(planted_refit_markdown(stats.read_csv(planted)))
    text = "\n".join(md)
    (args.results / "candidates.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
