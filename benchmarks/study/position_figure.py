"""Accuracy against where the evidence sits, for the controlled family.

The tasks ``needle_start``, ``needle_middle`` and ``needle_end`` differ only
in where the planted sentence goes (see ``_prose_tasks.build_needle_position``);
one panel per layer, one line per method, each point with a 95% interval of
its accuracy (a percentile bootstrap of the test texts).

"""

from collections import defaultdict

import numpy as np

POSITIONS = ("start", "middle", "end")


def _accuracy_interval(correct, n_boot=1000, seed=0):
    correct = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    boots = correct[rng.integers(0, len(correct), (n_boot, len(correct)))].mean(axis=1)
    return np.percentile(boots, [2.5, 97.5])


def plot_position(pred_rows, path):
    """Write the figure to ``path`` from predictions.csv-like rows; returns
    ``path``, or None when no position task is in ``pred_rows``."""
    correct = defaultdict(list)
    for r in pred_rows:
        task = r["task"]
        if not task.startswith("needle_") or task[7:] not in POSITIONS:
            continue
        key = (int(r["layer"]), r["method"], task[7:])
        correct[key].append(int(r["y_pred"]) == int(r["y_true"]))
    if not correct:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({k[0] for k in correct})
    methods = sorted({k[1] for k in correct})
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6),
                             sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for j, m in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for x, pos in enumerate(POSITIONS):
                c = correct.get((layer, m, pos))
                if not c:
                    continue
                a, b = _accuracy_interval(c)
                xs.append(x + (j - len(methods) / 2) * 0.04)
                ys.append(np.mean(c))
                lo.append(ys[-1] - a)
                hi.append(b - ys[-1])
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=m)
        ax.set_xticks(range(len(POSITIONS)), POSITIONS)
        ax.set_xlabel("position of the planted sentence")
        ax.set_title(f"layer {layer}")
    return finish_panels(fig, axes, "test accuracy (95% bootstrap interval)", path)


def finish_panels(fig, axes, ylabel, path):
    """Label the first of a row of panels, put the legend on the last, write
    the figure to ``path`` and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
