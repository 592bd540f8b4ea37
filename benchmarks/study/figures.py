"""The study's tables and the seed's figures, from its result rows.

Figures (as in Shabalin & Belrose's post): test accuracy of method A against
method B, one point per (task, layer), coloured by the task's number of
classes, with the diagonal; and the mean attention-entropy ratio of the
attention probes with 1 vs 2 and 2 vs 8 heads. Given the paired-bootstrap
intervals of :func:`stats.pairwise_intervals <benchmarks.study.stats.pairwise_intervals>`,
each point gets a vertical bar: the 95% interval of (y - x) drawn from
y = x + low to y = x + high, so a bar that crosses the diagonal is a tie.
"""

import math
from collections import defaultdict

from .protocol import METHODS

# (x, y) pairs the seed plots
ACCURACY_PAIRS = (
    ("last", "mean"), ("mean-adamw", "mean"), ("mean", "attn-8"),
    ("mean-adamw", "attn-8"), ("mean", "attn-1"), ("mean-adamw", "attn-1"),
    ("attn-1", "attn-2"), ("attn-2", "attn-8"), ("last", "attn-8"),
)
ENTROPY_PAIRS = (("attn-1", "attn-2"), ("attn-2", "attn-8"))


def figure_claims(claims=None):
    """``(claim, statistic, A, B)`` tuples for the plotted pairs that no claim
    of ``claims`` (default :data:`stats.CLAIMS`) covers in either order, so
    that :func:`stats.pairwise_intervals` gives every point its bar."""
    from .stats import CLAIMS

    claims = CLAIMS if claims is None else claims
    have = {(stat, a, b) for _, stat, a, b in claims}
    out = []
    for stat, pairs in (("accuracy", ACCURACY_PAIRS), ("entropy", ENTROPY_PAIRS)):
        for x, y in pairs:
            if (stat, x, y) not in have and (stat, y, x) not in have:
                out.append((f"{y} vs {x} (figure)", stat, y, x))
    return tuple(out)


def interval_bars(intervals, x, y, statistic):
    """{(task, layer): (low, high)}: the 95% interval of value(y) - value(x)
    from the interval rows of ``x`` and ``y`` (in either order)."""
    bars = {}
    for r in intervals or ():
        if r["statistic"] != statistic:
            continue
        key = (r["task"], int(r["layer"]))
        low, high = float(r["low"]), float(r["high"])
        if (r["a"], r["b"]) == (y, x):
            bars[key] = (low, high)
        elif (r["a"], r["b"]) == (x, y):
            bars[key] = (-high, -low)
    return bars


def _by_key(rows, value):
    """{(task, layer): {method: value}} and {(task, layer): n_classes}."""
    table, classes = defaultdict(dict), {}
    for r in rows:
        key = (r["task"], int(r["layer"]))
        table[key][r["method"]] = float(r[value])
        classes[key] = int(r["n_classes"])
    return table, classes


def markdown_tables(rows, needle_tasks=()):
    """Accuracy and entropy tables plus the head-to-head counts, as markdown."""
    acc, classes = _by_key(rows, "test_accuracy")
    ent, _ = _by_key(rows, "entropy_ratio")
    methods = [m for m in METHODS if any(m in v for v in acc.values())]
    head = "| task | classes | layer | " + " | ".join(methods) + " |"
    lines = ["Test accuracy (80/20 split, weight decay by 5-fold CV):", "",
             head, "|" + "---|" * (3 + len(methods))]
    for key in sorted(acc):
        best = max(acc[key].values())
        cells = []
        for m in methods:
            v = acc[key].get(m)
            cell = "" if v is None else f"{v:.3f}"
            cells.append(f"**{cell}**" if v is not None and v == best else cell)
        lines.append(f"| {key[0]} | {classes[key]} | {key[1]} | " + " | ".join(cells) + " |")
    attn = [m for m in methods if m.startswith("attn-")]
    if attn:
        lines += ["", "Attention entropy / uniform entropy (mean over test texts and "
                  "heads; 1 = uniform, 0 = one token):", "",
                  "| task | layer | " + " | ".join(attn) + " |", "|" + "---|" * (2 + len(attn))]
        for key in sorted(ent):
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(
                f"{ent[key][m]:.3f}" if m in ent[key] else "" for m in attn) + " |")
    lines += ["", *head_to_head(acc, needle_tasks)]
    return "\n".join(lines)


def write_accuracy_table(rows, path):
    """One row per (task, layer), one column per method: test accuracy (CSV)."""
    import csv

    acc, classes = _by_key(rows, "test_accuracy")
    methods = [m for m in METHODS if any(m in v for v in acc.values())]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "classes", "layer", *methods])
        for key in sorted(acc):
            writer.writerow([key[0], classes[key], key[1],
                             *(f"{acc[key][m]:.3f}" if m in acc[key] else ""
                               for m in methods)])
    return path


def _wins(acc, a, b, keys):
    keys = [k for k in keys if a in acc[k] and b in acc[k]]
    win = sum(acc[k][a] > acc[k][b] for k in keys)
    tie = sum(acc[k][a] == acc[k][b] for k in keys)
    return win, tie, len(keys)


def head_to_head(acc, needle_tasks=()):
    """The seed's two questions, counted over (task, layer) pairs."""
    keys = sorted(acc)
    out = []
    w, t, n = _wins(acc, "attn-8", "mean", keys)
    if n:
        out.append(f"- attn-8 beats mean (L-BFGS) on {w} of {n} (task, layer) pairs "
                   f"({t} ties).")
    w, t, n = _wins(acc, "attn-8", "mean-adamw", keys)
    if n:
        out.append(f"- attn-8 beats mean (AdamW) on {w} of {n} ({t} ties).")
    needle = [k for k in keys if k[0] in set(needle_tasks)]
    w, t, n = _wins(acc, "last", "mean", needle)
    if n:
        out.append(f"- last-token beats mean on {w} of {n} needle-task pairs ({t} ties).")
    other = [k for k in keys if k[0] not in set(needle_tasks)]
    w, t, n = _wins(acc, "mean", "last", other)
    if n:
        out.append(f"- mean beats last-token on {w} of {n} other pairs ({t} ties).")
    return out


def _scatter_grid(pairs, table, classes, label, path, title, intervals=None,
                  statistic=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(a, b) for a, b in pairs if any(a in v and b in v for v in table.values())]
    if not pairs:
        return None
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows),
                             squeeze=False)
    values = sorted(set(classes.values()))
    cmap = plt.get_cmap("viridis", max(len(values), 2))
    colour = {c: cmap(i) for i, c in enumerate(values)}
    for ax, (a, b) in zip(axes.flat, pairs):
        keys = [k for k in sorted(table) if a in table[k] and b in table[k]]
        xs = [table[k][a] for k in keys]
        ys = [table[k][b] for k in keys]
        bars = interval_bars(intervals, a, b, statistic)
        bar_keys = [k for k in keys if k in bars]
        bar_x = [table[k][a] for k in bar_keys]
        bar_lo = [x + bars[k][0] for k, x in zip(bar_keys, bar_x)]
        bar_hi = [x + bars[k][1] for k, x in zip(bar_keys, bar_x)]
        lo = min(xs + ys + bar_lo)
        lo = max(0.0, lo - 0.05 * (1.0 - lo + 1e-9))
        ax.plot([lo, 1], [lo, 1], color="0.6", lw=1, ls="--", zorder=0)
        if bar_keys:
            ax.vlines(bar_x, bar_lo, bar_hi, colors=[colour[classes[k]] for k in bar_keys],
                      lw=1.2, alpha=0.6, zorder=1)
        ax.scatter(xs, ys, c=[colour[classes[k]] for k in keys], s=40,
                   edgecolors="k", linewidths=0.4)
        for k, x, y in zip(keys, xs, ys):
            ax.annotate(f"{k[0]}@{k[1]}", (x, y), fontsize=6, alpha=0.7,
                        xytext=(3, -3), textcoords="offset points")
        ax.set_xlim(lo, 1.0 + 0.01)
        ax.set_ylim(lo, max([1.0] + bar_hi) + 0.01)
        ax.set_xlabel(f"{a} {label}")
        ax.set_ylabel(f"{b} {label}")
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[c], markeredgecolor="k",
                          label=f"{c} classes") for c in values]
    if intervals:
        handles.append(plt.Line2D([], [], color="0.4", lw=1.2,
                                  label="95% interval of y - x\n(paired bootstrap)"))
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.92, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_figures(rows, out_dir, intervals=None):
    """Write accuracy_pairs.png and entropy_pairs.png; the paths written.

    ``intervals`` (rows of :func:`stats.pairwise_intervals`, optional) add
    the interval bars to the points whose pair they cover.
    """
    acc, classes = _by_key(rows, "test_accuracy")
    ent, _ = _by_key(rows, "entropy_ratio")
    written = [
        _scatter_grid(ACCURACY_PAIRS, acc, classes, "test accuracy",
                      out_dir / "accuracy_pairs.png",
                      "Test accuracy, method vs method (one point per task@layer)",
                      intervals, "accuracy"),
        _scatter_grid(ENTROPY_PAIRS, ent, classes, "entropy ratio",
                      out_dir / "entropy_pairs.png",
                      "Attention entropy / uniform entropy, test texts",
                      intervals, "entropy"),
    ]
    return [p for p in written if p is not None]
