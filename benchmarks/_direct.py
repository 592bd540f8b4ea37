"""The baseline: a direct implementation of the seed's attention-probe pseudocode.

Every text is padded to the longest one; values are computed per token,
giving a (texts, tokens, heads, classes) tensor, which the attention weights
then reduce. This is what a straightforward port of the pseudocode does, and
what ``bench_speed.py`` compares ``AttentionProbeClassifier`` against.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class DirectAttentionProbe(nn.Module):
    def __init__(self, query, slope, value, bias, position="last"):
        super().__init__()
        self.query = nn.Parameter(query.clone())  # (d, H)
        self.slope = nn.Parameter(slope.clone())  # (H,)
        self.value = nn.Parameter(value.clone())  # (H, d, C)
        self.bias = nn.Parameter(bias.clone())  # (C,)
        self.position = position

    def forward(self, x, mask, lengths):
        T = x.shape[1]
        logits = x @ self.query  # (n, T, H)
        t = torch.arange(T, dtype=x.dtype)[None, :]
        pos = t - (lengths[:, None] - 1) if self.position == "last" else -t
        logits = logits + pos[:, :, None] * self.slope
        logits = logits.masked_fill(~mask[:, :, None], float("-inf"))
        weights = torch.softmax(logits, dim=1)  # (n, T, H)
        values = torch.einsum("ntd,hdc->nthc", x, self.value)  # tokens x heads x classes
        return (weights[..., None] * values).sum(dim=(1, 2)) + self.bias


def padded(texts, dtype=torch.float32):
    """Pad every text to the longest: (n, T_max, d), mask, lengths."""
    lengths = torch.tensor([len(t) for t in texts])
    T = int(lengths.max())
    x = torch.zeros(len(texts), T, texts[0].shape[1], dtype=dtype)
    for i, t in enumerate(texts):
        x[i, : len(t)] = torch.as_tensor(t, dtype=dtype)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return x, mask, lengths


def log_loss(logits, y):
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def train(module, x, mask, lengths, y, steps, lr, weight_decay=0.0):
    """Full-batch AdamW with the same L2-penalised objective as ours."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    y = torch.as_tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        loss = log_loss(module(x, mask, lengths), y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * (module.query.pow(2).sum()
                                                + module.value.pow(2).sum())
        loss.backward()
        opt.step()
    return module


def predict(module, x, mask, lengths):
    with torch.no_grad():
        logits = module(x, mask, lengths)
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long().numpy()
    return logits.argmax(1).numpy()


def accuracy(module, texts, y):
    x, mask, lengths = padded(texts)
    return float(np.mean(predict(module, x, mask, lengths) == np.asarray(y)))
