"""The evidence analysis's report: the Markdown section and the recall figure
(the numbers come from :mod:`.evidence`)."""

from pathlib import Path

from .position_figure import finish_panels

ATTN_METHODS = ("attn-1", "attn-2", "attn-8")
_MARKER = "<!-- evidence analysis (benchmarks/study/evidence.py) -->"


def append_to_results(path, md):
    """Append ``md`` to ``path`` as its evidence section, replacing the one a
    previous analysis appended."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    text = text.split("\n" + _MARKER)[0].rstrip("\n")
    path.write_text((text + "\n\n" if text else "") + _MARKER + "\n" + md + "\n")


def _fmt(v, digits=3):
    return "" if v in ("", None) else f"{float(v):.{digits}f}"


def _interval_cell(r):
    if r is None or r["estimate"] == "":
        return "n/a"
    if r["low"] == "":
        return f"{float(r['estimate']):+.3f}"
    return f"{float(r['estimate']):+.3f} [{float(r['low']):+.3f}, {float(r['high']):+.3f}]"


def evidence_markdown(rows, intervals):
    """The evidence section: oracle vs probes, and evidence recall."""
    by = {}
    for r in rows:
        by.setdefault((r["task"], int(r["layer"])), {})[r["method"]] = r
    iv = {(r["task"], int(r["layer"]), r["quantity"]): r for r in intervals}
    lines = ["Evidence: the oracle probe (mean of the evidence tokens only, then the "
             "same CV logistic regression) against the best pooled probe (mean or "
             "last-token, by test accuracy) and attn-8; differences with paired-"
             "bootstrap 95% intervals; \"gap closed\" is (attn-8 - pooled) / "
             "(oracle - pooled):", "",
             "| task | layer | oracle | best pooled | attn-8 | oracle - pooled | "
             "attn-8 - pooled | gap closed |", "|---|---|---|---|---|---|---|---|"]
    for (task, layer), g in sorted(by.items()):
        pooled = next((r for r in intervals if r["task"] == task
                       and int(r["layer"]) == layer), None)
        bp = pooled["b"] if pooled else ""
        acc = (lambda m: _fmt(g[m]["test_accuracy"]) if m in g else "")
        lines.append(f"| {task} | {layer} | {acc('oracle')} | {bp} {acc(bp) if bp else ''} "
                     f"| {acc('attn-8')} | "
                     f"{_interval_cell(iv.get((task, layer, 'oracle - best pooled')))} | "
                     f"{_interval_cell(iv.get((task, layer, 'attn-8 - best pooled')))} | "
                     f"{_interval_cell(iv.get((task, layer, 'gap closed by attn-8')))} |")
    lines += ["", "Evidence recall: share of the attention weight on the evidence tokens, "
              "averaged over the test texts with evidence, as mean over heads / best "
              "head; uniform: evidence tokens / text tokens:", "",
              "| task | layer | uniform | " + " | ".join(ATTN_METHODS) + " |",
              "|---|---|---|" + "---|" * len(ATTN_METHODS)]
    for (task, layer), g in sorted(by.items()):
        cells = [f"{_fmt(g[m]['recall_mean_head'])} / {_fmt(g[m]['recall_best_head'])}"
                 if m in g and g[m]["recall_mean_head"] != "" else "" for m in ATTN_METHODS]
        any_row = next(iter(g.values()))
        lines.append(f"| {task} | {layer} | {_fmt(any_row['uniform_share'])} | "
                     + " | ".join(cells) + " |")
    cut = {(r["task"]): int(r["n_test"]) - int(r["n_test_with_evidence"]) for r in rows}
    if any(cut.values()):
        lines += ["", "Test texts whose evidence the truncation cut off (the oracle "
                  "predicts the training majority class; left out of the recall): "
                  + ", ".join(f"{t} {n}" for t, n in sorted(cut.items()) if n) + "."]
    return "\n".join(lines)


def plot_recall(rows, path):
    """Evidence recall against the number of heads, one panel per task, one
    colour per layer (solid: mean over heads, dashed: best head), the uniform
    share dotted; returns ``path``, or None without recall values."""
    recall = [r for r in rows if r["recall_mean_head"] != ""]
    if not recall:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in recall})
    layers = sorted({int(r["layer"]) for r in recall})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4),
                             sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        for j, layer in enumerate(layers):
            pts = sorted((int(r["method"].split("-")[1]), float(r["recall_mean_head"]),
                          float(r["recall_best_head"]), float(r["uniform_share"]))
                         for r in recall if r["task"] == task and int(r["layer"]) == layer)
            if not pts:
                continue
            heads, mean_head, best, uniform = zip(*pts)
            c = colors[j % len(colors)]
            ax.plot(heads, mean_head, "o-", color=c, label=f"L{layer} mean head")
            ax.plot(heads, best, "^--", color=c, label=f"L{layer} best head")
        # the same tokens at every layer: one uniform share per task
        ax.axhline(uniform[0], color="0.4", ls=":", lw=1.2, label="uniform share")
        ax.set_ylim(0, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 8], ["1", "2", "8"])
        ax.set_xlabel("heads")
        ax.set_title(task)
    return finish_panels(fig, axes, "attention weight on evidence tokens", path)
