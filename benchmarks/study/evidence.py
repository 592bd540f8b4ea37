"""Where the evidence is: an oracle ceiling and the attention probes' evidence recall.

For the tasks whose label-bearing sentence is known (``Task.needle_spans``:
``needle_language`` and the controlled family), each text's *evidence
tokens* are the extracted activation rows whose characters overlap that
sentence. From them:

- **Oracle**: a logistic-regression probe on the mean of the evidence tokens
  alone (:class:`~sklearn_attnprobe.MeanProbeClassifierCV` on a RaggedArray
  that holds only each text's evidence rows), with the study's protocol
  (5-fold CV over the same weight decays on the training part, test accuracy
  on the test part). It is the ceiling an attention probe aims at: pooling
  exactly the right tokens.
- **Evidence recall** of each attention probe (attn-1, attn-2, attn-8): per
  test text and head, the share of the head's attention weight on the
  evidence tokens; averaged over the test texts, for the mean over heads and
  for the best head (the head with the highest average recall). The uniform
  share (evidence tokens / text tokens, averaged) is what a head that
  attends evenly gets.
- **Paired bootstrap intervals** (:mod:`stats`' resamples of the test texts)
  of oracle minus the best pooled probe (mean or last-token, whichever has
  the higher test accuracy) and of attn-8 minus the best pooled probe, and the
  share of the pooled-to-oracle gap that attn-8 closes.

Texts whose evidence is cut off by the truncation (no evidence row left)
cannot be pooled: the oracle trains without them and predicts, for such a
test text, the majority class of the training labels (it has no input);
they are left out of the recall averages (their recall is 0 for every probe
and for the uniform share). ``evidence.csv`` counts them.

After a study run (also one from before this module existed)::

    python -m benchmarks.study.evidence --out study-results/full

reads ``<out>/run.json``, ``<out>/datasets.json``, ``<out>/predictions.csv``,
``<out>/probes/`` and the activation cache (``<out>/cache`` or ``--cache``),
writes each task's ``evidence.json`` into its cache folder where it is
missing (loading only the tokenizer), and writes ``evidence.csv``,
``evidence_intervals.csv``, ``evidence.md`` (also appended to
``results.md``) and ``evidence_recall.png``.
"""

import argparse
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import stats
from .evidence_report import (
    ATTN_METHODS,
    append_to_results,
    evidence_markdown,
    plot_recall,
)
from .protocol import WEIGHT_DECAYS

__all__ = ["evidence_rows", "write_evidence", "read_evidence", "oracle_predictions",
           "evidence_recall", "analyse", "main"]

EVIDENCE_FILE = "evidence.json"
POOLED_METHODS = ("mean", "last")
OUTPUTS = ("evidence.csv", "evidence_intervals.csv", "evidence.md", "evidence_recall.png")


# -- alignment ---------------------------------------------------------------------------
def evidence_rows(tokenizer, texts, spans, *, max_length=None, drop_first_token=True,
                  add_special_tokens=True):
    """Per text, the activation rows whose characters overlap its span.

    Tokenizes exactly as :func:`~sklearn_attnprobe.activations.extract_activations`
    does (same truncation, special tokens and first-token drop; the token ids
    are checked against the package's own tokenization) and asks the fast
    tokenizer for each token's character offsets. Token ``k`` of text ``i``
    is evidence where its offsets ``[a, b)`` are not empty (special tokens
    have none) and overlap the span ``[start, end)``: ``a < end`` and
    ``b > start``; a byte-level BPE token that carries the space before the
    span (``" The"``) therefore counts. Row ``r`` of the extracted
    activations is token ``r + dropped`` (``dropped`` is 1 where the first
    token is dropped), so a dropped evidence token is no row, and a span cut
    off by the truncation gives no rows at all.

    Returns
    -------
    rows : list of ndarray of int64
        Per text, the sorted row indices of its evidence tokens (possibly
        empty).
    n_rows : ndarray of int64
        Per text, its number of activation rows.
    """
    from sklearn_attnprobe.activations._encoder import (
        check_drop_first_token,
        check_texts,
        resolve_max_length,
        tokenize_texts,
    )

    texts = check_texts(texts)
    spans = [(int(a), int(b)) for a, b in spans]
    if len(spans) != len(texts):
        raise ValueError(f"{len(spans)} spans for {len(texts)} texts")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("evidence alignment needs a fast tokenizer (character "
                        "offsets); got " + type(tokenizer).__name__)
    max_length = resolve_max_length(tokenizer, max_length)
    ids, _, drops = tokenize_texts(tokenizer, texts, max_length=max_length,
                                   add_special_tokens=bool(add_special_tokens),
                                   drop=check_drop_first_token(drop_first_token))
    enc = tokenizer(texts, add_special_tokens=bool(add_special_tokens),
                    truncation=max_length is not None, max_length=max_length,
                    padding=False, return_attention_mask=False,
                    return_offsets_mapping=True, return_special_tokens_mask=True)
    rows = []
    for i, (start, end) in enumerate(spans):
        if list(enc["input_ids"][i]) != ids[i]:
            raise RuntimeError(f"text {i}: the offsets' tokenization differs from "
                               "the extraction's")
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        special = np.asarray(enc["special_tokens_mask"][i], dtype=bool)
        hit = ((offsets[:, 1] > offsets[:, 0]) & ~special
               & (offsets[:, 0] < end) & (offsets[:, 1] > start))
        rows.append(np.flatnonzero(hit[drops[i]:]).astype(np.int64))
    n_rows = np.array([len(s) - d for s, d in zip(ids, drops)], dtype=np.int64)
    return rows, n_rows


def write_evidence(folder, tokenizer, texts, spans, *, max_length):
    """Write ``folder/evidence.json`` for texts extracted with ``max_length``
    and ``drop_first_token=True`` (the study's options); returns its path."""
    rows, n_rows = evidence_rows(tokenizer, texts, spans, max_length=max_length,
                                 drop_first_token=True)
    doc = {"max_length": max_length, "drop_first_token": True,
           "spans": [[int(a), int(b)] for a, b in spans],
           "n_rows": n_rows.tolist(), "rows": [r.tolist() for r in rows]}
    path = Path(folder) / EVIDENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return path


def read_evidence(folder):
    """``(rows, n_rows)`` as :func:`evidence_rows` returns them, from
    ``folder/evidence.json``."""
    doc = json.loads((Path(folder) / EVIDENCE_FILE).read_text())
    return ([np.asarray(r, dtype=np.int64) for r in doc["rows"]],
            np.asarray(doc["n_rows"], dtype=np.int64))


# -- the measurements --------------------------------------------------------------------
def oracle_predictions(X, y, evidence, train, test):
    """Test predictions of the oracle (mean of the evidence rows, then the
    study's CV logistic regression); ``(predictions, n_train_used)``.

    Texts without evidence rows are left out of the fit; such a test text
    gets the majority class of ``y[train]``.
    """
    from sklearn_attnprobe import MeanProbeClassifierCV, RaggedArray

    y = np.asarray(y)
    has = np.array([len(r) > 0 for r in evidence])
    fit_idx, pred_idx = train[has[train]], test[has[test]]
    if len(np.unique(y[fit_idx])) < 2:
        raise ValueError("the oracle needs training texts with evidence in two classes")

    def evidence_only(idx):
        return RaggedArray.from_list([np.asarray(X[int(i)])[evidence[i]] for i in idx])

    probe = MeanProbeClassifierCV(weight_decays=WEIGHT_DECAYS, cv=5)
    probe.fit(evidence_only(fit_idx), y[fit_idx])
    pred = np.full(len(test), np.bincount(y[train]).argmax(), dtype=y.dtype)
    if len(pred_idx):
        pred[has[test]] = probe.predict(evidence_only(pred_idx))
    return pred, len(fit_idx)


def evidence_recall(weights, evidence):
    """``(n_texts, n_heads)`` share of each head's attention on the evidence.

    ``weights`` are per-text ``(T_i, n_heads)`` arrays (as
    :meth:`~sklearn_attnprobe.AttentionProbeClassifier.attention_weights`
    returns them), ``evidence`` per-text row indices.
    """
    return np.stack([np.asarray(w, dtype=float)[np.asarray(r, dtype=np.int64)].sum(axis=0)
                     for w, r in zip(weights, evidence)])


def summarise_recall(recall):
    """Mean over texts of the mean over heads; the best head's mean; its index."""
    per_head = recall.mean(axis=0)
    return float(recall.mean()), float(per_head.max()), int(per_head.argmax())


def _correct(rows):
    return np.array([int(r["y_pred"]) == int(r["y_true"]) for r in rows], dtype=float)


def _interval_row(task, layer, quantity, a, b, n, est, low, high, with_verdict=True):
    fmt = (lambda v: "" if v is None else round(float(v), 4))
    return {"task": task, "layer": layer, "quantity": quantity, "a": a, "b": b,
            "n_test": n, "estimate": fmt(est), "low": fmt(low), "high": fmt(high),
            "verdict": stats.verdict(low, high) if with_verdict else ""}


def gap_closed(attn, pooled, oracle, *, n_boot=stats.N_BOOT, seed=0, level=0.95):
    """``(share, low, high)`` of the pooled-to-oracle accuracy gap that attn
    closes, ``(acc(attn) - acc(pooled)) / (acc(oracle) - acc(pooled))``, from
    per-text correctness. None where the gap is not positive; the interval
    uses the paired resamples of :func:`stats.paired_bootstrap` and is None
    unless the gap is positive on at least ``level`` of them."""
    attn, pooled, oracle = (np.asarray(v, dtype=float) for v in (attn, pooled, oracle))
    gap = (oracle - pooled).mean()
    share = (attn - pooled).mean() / gap if gap > 0 else None
    num = stats.resampled_means(attn - pooled, n_boot=n_boot, seed=seed)
    den = stats.resampled_means(oracle - pooled, n_boot=n_boot, seed=seed)
    ok = den > 0
    if share is None or ok.mean() < level:
        return share, None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(num[ok] / den[ok], [tail, 100 - tail])
    return share, float(low), float(high)


def analyse_layer(task, layer, X, y, evidence, train, test, preds, probe_dir, *,
                  seed=0, n_boot=stats.N_BOOT):
    """Rows of evidence.csv and evidence_intervals.csv for one (task, layer).

    ``preds`` maps each method to its predictions.csv rows (sorted by text);
    attention probes are read from ``probe_dir/<task>_L<layer>_<method>.safetensors``.
    """
    from sklearn_attnprobe import AttentionProbeClassifier

    test = np.asarray(test)
    has = np.array([len(evidence[i]) > 0 for i in test])
    ev_test = [evidence[i] for i in test[has]]
    uniform = float(np.mean([len(evidence[i]) / len(X[int(i)]) for i in test[has]])) \
        if has.any() else float("nan")
    oracle, n_fit = oracle_predictions(X, y, evidence, np.asarray(train), test)
    correct = {m: _correct(r) for m, r in preds.items()}
    correct["oracle"] = (oracle == np.asarray(y)[test]).astype(float)
    counts = {"n_test": len(test), "n_test_with_evidence": int(has.sum()),
              "n_train_oracle": n_fit}
    rows = []
    for method in ("oracle",) + tuple(m for m in POOLED_METHODS + ("mean-adamw",)
                                      + ATTN_METHODS if m in correct):
        row = {"task": task, "layer": layer, "method": method,
               "test_accuracy": round(correct[method].mean(), 4), "recall_mean_head": "",
               "recall_best_head": "", "best_head": "",
               "uniform_share": round(uniform, 4), **counts}
        path = Path(probe_dir) / f"{task}_L{layer}_{method}.safetensors"
        if method in ATTN_METHODS and path.exists() and has.any():
            probe = AttentionProbeClassifier.load(path, device="cpu")
            weights = probe.attention_weights(X[test[has]])
            mean_head, best, head = summarise_recall(evidence_recall(weights, ev_test))
            row.update(recall_mean_head=round(mean_head, 4),
                       recall_best_head=round(best, 4), best_head=head)
        rows.append(row)
    intervals = []
    pooled = [m for m in POOLED_METHODS if m in correct]
    if pooled:
        best_pooled = max(pooled, key=lambda m: correct[m].mean())  # ties: mean
        p = correct[best_pooled]
        for a in ("oracle", "attn-8"):
            if a in correct:
                diff, low, high = stats.paired_bootstrap(correct[a], p, n_boot=n_boot,
                                                         seed=seed)
                intervals.append(_interval_row(task, layer, f"{a} - best pooled", a,
                                               best_pooled, len(test), diff, low, high))
        if "attn-8" in correct:
            share, low, high = gap_closed(correct["attn-8"], p, correct["oracle"],
                                          n_boot=n_boot, seed=seed)
            intervals.append(_interval_row(task, layer, "gap closed by attn-8", "attn-8",
                                           best_pooled, len(test), share, low, high,
                                           with_verdict=False))
    return rows, intervals


# -- a whole run -------------------------------------------------------------------------
def _run_args(cache, model, layers, max_length, seed):
    return SimpleNamespace(cache=Path(cache), model=model, layers=list(layers),
                           max_length=int(max_length), seed=int(seed))


def ensure_evidence(tasks, run_args, tokenizer=None):
    """Write ``evidence.json`` into the cache folder of every task with spans
    that lacks it, loading the model's tokenizer only if needed; returns
    ``{task name: cache folder}``."""
    from .models import load_tokenizer
    from .run import _data_paths

    folders = {}
    for task in tasks:
        if task.needle_spans is None:
            continue
        folder = _data_paths(run_args, task)[0]
        if not (folder / EVIDENCE_FILE).exists():
            if tokenizer is None:
                # tiny-random's vocabulary comes from the texts; its token
                # boundaries (all that the offsets need) do not
                tokenizer = load_tokenizer(run_args.model,
                                           [s for t in tasks for s in t.texts])
            write_evidence(folder, tokenizer, task.texts, task.needle_spans,
                           max_length=run_args.max_length)
        folders[task.name] = folder
    return folders


def analyse(out, tasks, run_args, pred_rows, *, tokenizer=None, n_boot=stats.N_BOOT):
    """The evidence analysis of a study run; the files written (none when no
    task has spans).

    ``tasks`` are the run's built tasks, ``run_args`` its cache folder, model,
    layers, max_length and seed, ``pred_rows`` the rows of predictions.csv.
    """
    from sklearn_attnprobe import RaggedArray

    from .run import _data_paths, _split

    out = Path(out)
    folders = ensure_evidence(tasks, run_args, tokenizer)
    if not folders:
        return []
    groups = stats._group(pred_rows)
    rows, intervals = [], []
    for task in tasks:
        if task.name not in folders:
            continue
        evidence, n_rows = read_evidence(folders[task.name])
        train, test = _split(task.y, run_args.seed)
        for layer, path in _data_paths(run_args, task)[1].items():
            preds = groups.get((task.name, int(layer)), {})
            if not preds:
                continue
            for m, r in preds.items():
                if [int(x["text"]) for x in r] != test.tolist():
                    raise ValueError(f"{task.name} L{layer} {m}: predictions.csv holds "
                                     "other test texts than the run's split")
            X = RaggedArray.load(path, mmap_mode="r")
            if not np.array_equal(X.lengths, n_rows):
                raise ValueError(f"{folders[task.name]}: {EVIDENCE_FILE} does not line "
                                 f"up with the rows of {path.name}")
            r, i = analyse_layer(task.name, int(layer), X, task.y, evidence, train, test,
                                 preds, out / "probes", seed=run_args.seed, n_boot=n_boot)
            rows += r
            intervals += i
    stats.write_csv(rows, out / "evidence.csv")
    stats.write_csv(intervals, out / "evidence_intervals.csv")
    md = evidence_markdown(rows, intervals)
    (out / "evidence.md").write_text(md + "\n")
    append_to_results(out / "results.md", md)
    written = [out / name for name in OUTPUTS[:3]]
    if plot_recall(rows, out / "evidence_recall.png"):
        written.append(out / "evidence_recall.png")
    return written


# -- the command -------------------------------------------------------------------------
def run_options(out):
    """The parsed command, ``run.json`` and ``datasets.json`` of the run in ``out``."""
    from .run import parse_args

    info = json.loads((Path(out) / "run.json").read_text())
    manifest = json.loads((Path(out) / "datasets.json").read_text())
    return parse_args(shlex.split(info["command"])[3:]), info, manifest


def tasks_of_run(out, spans=True, on_mismatch="raise"):
    """The tasks of the run in ``out`` (rebuilt from datasets.json and
    run.json, checked against their checksums) and its options.

    ``spans``: True for the tasks with evidence spans, False for the others,
    None for all. A task whose rebuilt texts differ from the run's raises,
    or with ``on_mismatch="skip"`` is reported and left out.
    """
    from . import tasks as task_lib

    args, info, manifest = run_options(out)
    built = []
    for entry in manifest:
        if spans is not None and bool(entry.get("needle_spans")) != spans:
            continue
        task = task_lib.build_task(entry["name"], seed=args.seed,
                                   n_per_class=entry["n_texts"] // entry["n_classes"])
        if task.sha256 != entry["sha256"]:
            msg = (f"{entry['name']}: rebuilt texts differ from the run's "
                   "(other package versions?); sha256 "
                   f"{task.sha256[:12]} != {entry['sha256'][:12]}")
            if on_mismatch != "skip":
                raise ValueError(msg)
            print(f"skipping {msg}", flush=True)
            continue
        built.append(task)
    return built, args.model, info["layers"], info["max_length"], args.seed


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.study.evidence",
                                description="Oracle probe and evidence recall of a "
                                "finished study run (tasks with known evidence spans).")
    p.add_argument("--out", type=Path, required=True, help="the study run's output folder")
    p.add_argument("--cache", type=Path, default=None,
                   help="its activation cache (default <out>/cache)")
    args = p.parse_args(argv)
    built, model, layers, max_length, seed = tasks_of_run(args.out)
    if not built:
        print(f"no task of the run in {args.out} has evidence spans; nothing to do")
        return []
    run_args = _run_args(args.cache or args.out / "cache", model, layers, max_length, seed)
    pred_rows = stats.read_csv(args.out / "predictions.csv")
    written = analyse(args.out, built, run_args, pred_rows)
    print((args.out / "evidence.md").read_text())
    print(f"wrote {len(written)} files in {args.out}/: "
          + ", ".join(Path(f).name for f in written)
          + " (and results.md's evidence section)")
    return written


if __name__ == "__main__":
    main()
