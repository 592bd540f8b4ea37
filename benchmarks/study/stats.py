"""Paired bootstrap intervals of method-vs-method differences, and the
seed's claims counted as wins / ties / losses.

Every (task, layer) configuration keeps its per-text test predictions (and,
for attention probes, the per-text attention-entropy ratio averaged over
heads). Two methods on the same (task, layer) saw the same test texts, so the
difference of their accuracies is bootstrapped by resampling test texts with
replacement and recomputing both accuracies on the same resample (a paired
bootstrap, percentile interval). A claim "A beats B" counts a win where the
95% interval of acc(A) - acc(B) lies above zero, a loss where it lies below,
and a tie otherwise.
"""

import csv

import numpy as np

__all__ = ["paired_bootstrap", "resampled_means", "prediction_rows", "pairwise_intervals",
           "claims_markdown", "write_csv", "CLAIMS"]

N_BOOT = 2000
# (claim, statistic, method A, method B): "A beats B" / "A's entropy is higher"
CLAIMS = (
    ("mean beats last-token", "accuracy", "mean", "last"),
    ("attn-8 beats mean (L-BFGS)", "accuracy", "attn-8", "mean"),
    ("attn-8 beats mean (AdamW)", "accuracy", "attn-8", "mean-adamw"),
    ("attn-1 vs mean (L-BFGS): mixed", "accuracy", "attn-1", "mean"),
    ("attn-1 vs mean (AdamW): mixed", "accuracy", "attn-1", "mean-adamw"),
    ("mean (L-BFGS) beats mean (AdamW)", "accuracy", "mean", "mean-adamw"),
    ("attn-2 beats attn-1", "accuracy", "attn-2", "attn-1"),
    ("attn-8 beats attn-2", "accuracy", "attn-8", "attn-2"),
    ("entropy: attn-2 above attn-1", "entropy", "attn-2", "attn-1"),
    ("entropy: attn-8 above attn-2", "entropy", "attn-8", "attn-2"),
)


def paired_bootstrap(a, b, *, n_boot=N_BOOT, seed=0, level=0.95):
    """``(mean(a - b), low, high)``: percentile interval of the mean paired
    difference, resampling the pairs ``(a[i], b[i])`` with replacement."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("a and b must be 1-d, non-empty and of equal length")
    boots = resampled_means(d, n_boot=n_boot, seed=seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)


def resampled_means(values, *, n_boot=N_BOOT, seed=0):
    """``(n_boot,)`` means of ``values`` over bootstrap resamples of its rows.

    The resamples depend only on ``len(values)``, ``n_boot`` and ``seed``:
    two calls with the same three use the same resamples, so statistics built
    from several of them (a ratio of two differences) stay paired.
    """
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def verdict(low, high):
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def prediction_rows(rows, configs):
    """One row per (configuration, test text); pops the per-text lists that
    :func:`protocol.run_config` put into ``rows``."""
    out = []
    for row, c in zip(rows, configs):
        pred = row.pop("_pred", None)
        ent = row.pop("_entropy", None)
        if pred is None:
            continue
        for k, (i, p) in enumerate(zip(c.test, pred)):
            out.append({"task": c.task, "layer": c.layer, "method": c.method,
                        "text": int(i), "y_true": int(c.y[i]), "y_pred": int(p),
                        "entropy_ratio": "" if ent is None else float(ent[k])})
    return out


def _group(pred_rows):
    groups = {}
    for r in pred_rows:
        g = groups.setdefault((r["task"], int(r["layer"])), {})
        g.setdefault(r["method"], []).append(r)
    for g in groups.values():
        for m in g:
            g[m].sort(key=lambda r: int(r["text"]))
    return groups


def pairwise_intervals(pred_rows, *, n_boot=N_BOOT, seed=0, claims=CLAIMS):
    """For every (task, layer) and claim whose two methods ran: the
    difference, its paired-bootstrap 95% interval and the verdict.

    ``claims`` are ``(claim, statistic, A, B)`` tuples as in :data:`CLAIMS`;
    the figures add the pairs they plot that no claim covers.
    """
    out = []
    for (task, layer), g in sorted(_group(pred_rows).items()):
        for claim, stat, a, b in claims:
            if a not in g or b not in g:
                continue
            ra, rb = g[a], g[b]
            if [r["text"] for r in ra] != [r["text"] for r in rb]:
                raise ValueError(f"{task} L{layer}: {a} and {b} saw different texts")
            if stat == "accuracy":
                va = [int(r["y_pred"]) == int(r["y_true"]) for r in ra]
                vb = [int(r["y_pred"]) == int(r["y_true"]) for r in rb]
            else:
                if any(r["entropy_ratio"] == "" for r in ra + rb):
                    continue
                va = [float(r["entropy_ratio"]) for r in ra]
                vb = [float(r["entropy_ratio"]) for r in rb]
            diff, low, high = paired_bootstrap(va, vb, n_boot=n_boot, seed=seed)
            out.append({"task": task, "layer": layer, "claim": claim, "statistic": stat,
                        "a": a, "b": b, "n_test": len(va), "difference": round(diff, 4),
                        "low": round(low, 4), "high": round(high, 4),
                        "verdict": verdict(low, high)})
    return out


def claims_markdown(intervals):
    """The seed's claims as wins / ties / losses over (task, layer) pairs."""
    lines = ["The seed's claims, counted over (task, layer) pairs; a win or a loss "
             "only where the paired-bootstrap 95% interval of the difference "
             f"(A - B, {N_BOOT} resamples of the test texts) excludes zero:", "",
             "| claim (A vs B) | wins | ties | losses | median difference |",
             "|---|---|---|---|---|"]
    for claim, stat, a, b in CLAIMS:
        hits = [r for r in intervals if r["claim"] == claim]
        if not hits:
            continue
        n = {v: sum(r["verdict"] == v for r in hits) for v in ("win", "tie", "loss")}
        med = float(np.median([r["difference"] for r in hits]))
        lines.append(f"| {claim} ({a} vs {b}) | {n['win']} | {n['tie']} | "
                     f"{n['loss']} | {med:+.3f} |")
    return "\n".join(lines)


def write_csv(rows, path):
    with open(path, "w", newline="") as fh:
        if not rows:
            return
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
