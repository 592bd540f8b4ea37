"""
============================================
Where an attention probe looks, head by head
============================================

An attention probe pools each text with its own softmax over the text's
tokens, one distribution per head. :meth:`~sklearn_attnprobe.AttentionProbeClassifier.attention_weights`
returns those distributions, so we can draw them over the tokens of a text.

We use the ``"needle"`` planted task: in every text one token, at a random
position, carries a marker direction plus a class direction; all other tokens
are noise. A probe that solves the task has to find that token.
"""

# %%
# Train a four-head probe
# -----------------------
import matplotlib.pyplot as plt
import numpy as np

from sklearn_attnprobe import AttentionProbeClassifier
from sklearn_attnprobe.datasets import make_planted_task

X, y = make_planted_task("needle", n_texts=300, d_model=16, random_state=0)
X_train, y_train, X_test, y_test = X[:240], y[:240], X[240:], y[240:]

probe = AttentionProbeClassifier(n_heads=4, max_iter=200, random_state=0)
probe.fit(X_train, y_train)
print(f"test accuracy: {probe.score(X_test, y_test):.2f}")

# %%
# Where is the needle?
# --------------------
# :func:`~sklearn_attnprobe.datasets.make_planted_task` does not return the
# needle positions, but we can find them from the data alone: the marker is
# the one direction that every text shares, so the average of all tokens
# points along it. Projecting each token on that average gives a "needle
# score" that is large only for the planted token.
shared = np.concatenate(X).mean(axis=0)
shared /= np.linalg.norm(shared)

# %%
# Attention over the tokens of three test texts
# ---------------------------------------------
# Each column of a text's weight matrix (one per head) sums to one. The top
# row of every panel is the needle score (the highest in red), the heat map
# below it the four heads. Every head starts as mean pooling (the query is
# initialised to zero, so the first softmax is uniform). After training,
# most heads concentrate on the needle, with some weight left on other
# tokens in the longer texts. Heads are free to do something else: one with
# a large learned position slope (printed below the figure) leans towards
# the end of every text, whatever its tokens hold.
weights = probe.attention_weights(X_test[:3])
print("position slopes per head:", np.round(probe.module_.slope.detach().numpy(), 2))

fig, axes = plt.subplots(
    2, 3, figsize=(10, 4.2), sharey="row",
    gridspec_kw={"height_ratios": [1, 2.2], "hspace": 0.08, "wspace": 0.06},
)
for j, (tokens, w) in enumerate(zip(X_test[:3], weights)):
    T = len(tokens)
    score = tokens @ shared
    ax = axes[0, j]
    ax.bar(np.arange(T), score, color=np.where(score == score.max(), "C3", "0.7"),
           width=0.8)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xticks([])
    ax.set_title(f"test text {j} ({T} tokens, class {y_test[j]})", fontsize=10)
    im = axes[1, j].imshow(w.T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                           interpolation="nearest")
    axes[1, j].set_xlabel("token position")
axes[0, 0].set_ylabel("needle\nscore")
axes[1, 0].set_yticks(range(probe.n_heads),
                      [f"head {h}" for h in range(probe.n_heads)])
fig.colorbar(im, ax=axes[1, :], label="attention weight", fraction=0.025, pad=0.01)
plt.show()

# %%
# How often does the heaviest token carry the needle?
# ---------------------------------------------------
# Summing the heads' weights per token and taking the heaviest token of each
# test text, we compare it with the token of highest needle score.
weights = probe.attention_weights(X_test)
agree = np.mean([np.argmax(w.sum(axis=1)) == np.argmax(t @ shared)
                 for t, w in zip(X_test, weights)])
print(f"heaviest token = highest needle score in {agree:.0%} of test texts")

# %%
# A position-driven task
# ----------------------
# On the ``"last"`` task only the final token carries the class. The query
# alone cannot find it (the final token looks like any other), but the
# learned position bias can (``position_bias=True``, the default): each head adds
# ``slope * p_t`` to its logits, where ``p_t`` is minus the distance to the
# last token, so a positive slope tilts the weights towards the end of the
# text. The fitted slopes are in ``probe.module_.slope``.
X, y = make_planted_task("last", n_texts=300, d_model=16, random_state=0)
probe_last = AttentionProbeClassifier(n_heads=2, max_iter=200, random_state=0)
probe_last.fit(X[:240], y[:240])
slopes = probe_last.module_.slope.detach().numpy()
print(f"test accuracy: {probe_last.score(X[240:], y[240:]):.2f}")
print("learned slopes:", np.round(slopes, 2))

weights = probe_last.attention_weights(X[240:])
n_back = 8  # every text has at least 8 tokens (min_length)
fig, ax = plt.subplots(figsize=(6.5, 3))
for h in range(probe_last.n_heads):
    # average weight of the k-th token from the end, over the test texts
    tail = np.array([w[::-1, h][:n_back] for w in weights]).mean(axis=0)
    ax.plot(-np.arange(n_back), tail, marker="o",
            label=f"head {h} (slope {slopes[h]:.2f})")
ax.set_xlabel("position relative to the last token")
ax.set_ylabel("mean attention weight")
ax.set_title('"last" task: weight on the final tokens')
ax.legend()
fig.tight_layout()
plt.show()
