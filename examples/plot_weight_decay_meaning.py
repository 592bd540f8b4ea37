"""
========================================
What ``weight_decay`` means, in pictures
========================================

Every probe here minimises the sample-weighted mean log-loss plus
``weight_decay / 2 * ||W||^2``. For the pooled probes that is exactly
scikit-learn's :class:`~sklearn.linear_model.LogisticRegression` on the
pooled features with ``C = 1 / (weight_decay * n_texts)``, which we check
first. Then we compare the size of that penalty's effect with the decoupled
weight decay of :class:`torch.optim.AdamW`, which is what the attention probe
paper's code passes its ``weight_decay`` to.
"""

# %%
# Same solution as LogisticRegression
# -----------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression

from sklearn_attnprobe import MeanProbeClassifier
from sklearn_attnprobe.datasets import make_planted_task

X, y = make_planted_task("shift", n_texts=300, d_model=16, dtype=np.float64,
                         random_state=0)
pooled = np.array([tokens.mean(axis=0) for tokens in X])  # what the probe sees

decays = [1e-3, 1e-2, 1e-1, 1.0]
probe_coef, logreg_coef = {}, {}
for wd in decays:
    probe_coef[wd] = MeanProbeClassifier(weight_decay=wd).fit(X, y).coef_.ravel()
    logreg = LogisticRegression(C=1 / (wd * len(y)), tol=1e-10, max_iter=10_000)
    logreg_coef[wd] = logreg.fit(pooled, y).coef_.ravel()
    gap = np.abs(probe_coef[wd] - logreg_coef[wd]).max()
    print(f"weight_decay={wd:g}: largest coefficient difference {gap:.1e}")

# %%
# Penalty against decoupled decay
# -------------------------------
# AdamW's decoupled decay multiplies the weights by ``1 - lr * weight_decay``
# at every step, whatever the loss. Over ``n`` steps that compounds to
# ``(1 - lr * weight_decay) ** n``. The seed code's trainer defaults to a
# learning rate of 1e-4 (``attention_probe/trainer.py`` in
# EleutherAI/attention-probes); at that rate and the paper's 500 steps, its
# grid 1e-3 ... 1e-1 removes at most 0.5% of the weights' size, and even at
# 1e-3 at most 5%. The four settings of such a sweep train almost the same
# model.
#
# The penalty in the objective acts on the solution instead. We refit the
# mean probe without a penalty and compare each penalised solution's norm
# with that one.
coef_free = MeanProbeClassifier(weight_decay=0.0).fit(X, y).coef_
kept = [np.linalg.norm(probe_coef[wd]) / np.linalg.norm(coef_free) for wd in decays]
for wd, k in zip(decays, kept):
    print(f"weight_decay={wd:g}: the penalised solution keeps {k:.0%} of the norm")

# %%
# Left: the two fits agree up to the solvers' tolerances, for every penalty
# strength, and the coefficients move a lot across the grid. Right: over the
# same grid, decoupled decay leaves the weights almost untouched while the
# penalty shrinks the solution by an order of magnitude.
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
ax = axes[0]
lim = max(np.abs(c).max() for c in probe_coef.values()) * 1.1
ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=0)
for k, wd in enumerate(decays):
    ax.scatter(logreg_coef[wd], probe_coef[wd], s=25, color=f"C{k}",
               label=f"weight_decay={wd:g}")
ax.set_xlabel("LogisticRegression(C=1/(weight_decay*n)).coef_")
ax.set_ylabel("MeanProbeClassifier(weight_decay).coef_")
ax.set_title("Same solution, one coefficient per point")
ax.legend(fontsize=8)

wd_grid = np.logspace(-3, 0, 31)
ax = axes[1]
for lr, style in ((1e-4, ":"), (1e-3, "--")):
    ax.plot(wd_grid, (1 - lr * wd_grid) ** 500, style, color="C0", lw=2,
            label=f"AdamW decoupled decay, lr={lr:g}, 500 steps")
ax.plot(decays, kept, "o-", color="C3",
        label="L2 penalty in the objective (mean probe)")
ax.axvspan(1e-3, 1e-1, color="0.9", zorder=0)
ax.text(1e-2, 0.03, "the seed's grid", ha="center", fontsize=8, color="0.4")
ax.set_xscale("log")
ax.set_ylim(0, 1.05)
ax.set_xlabel("weight_decay")
ax.set_ylabel("weight norm kept (fraction)")
ax.set_title("Decoupled decay barely acts; the penalty does")
ax.legend(fontsize=8, loc="center left")
fig.tight_layout()
plt.show()
