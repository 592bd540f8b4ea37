"""Torch modules of the probes. Each maps a :class:`PackedBatch` to logits.

``n_outputs`` is 1 for binary problems (one logit, as in logistic regression)
and the number of classes otherwise.
"""

import math

import torch
from torch import nn

from ._kernels import attention_pool, last_token_pool, mean_pool

POSITIONS = ("last", "first", None)


class AttentionProbeModule(nn.Module):
    """Multi-head attention probe with a learned ALiBi-style position bias.

    Per head ``h``: logits ``x_t @ query[:, h] + slope[h] * p_t``, a masked
    softmax over the text's tokens, then ``sum_t a_th x_t @ value[h]``; the
    heads' outputs are summed and ``bias`` added.
    """

    def __init__(self, d_model, n_heads, n_outputs, position="last",
                 generator=None, dtype=torch.float32):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}; got {position!r}")
        self.position = position
        # The seed's initialisation: zero query (uniform attention, i.e. mean
        # pooling at step 0), zero position slopes, random values.
        self.query = nn.Parameter(torch.zeros(d_model, n_heads, dtype=dtype))
        self.slope = nn.Parameter(torch.zeros(n_heads, dtype=dtype))
        bound = 1.0 / math.sqrt(d_model)
        value = torch.rand(n_heads, d_model, n_outputs, generator=generator,
                           dtype=torch.float64) * (2 * bound) - bound
        self.value = nn.Parameter(value.to(dtype))
        self.bias = nn.Parameter(torch.zeros(n_outputs, dtype=dtype))

    @property
    def n_heads(self):
        return self.query.shape[1]

    @property
    def d_model(self):
        return self.query.shape[0]

    def penalized_parameters(self):
        """Weights under the L2 penalty (not the intercept, not the slopes)."""
        return [self.query, self.value]

    def pool_block(self, block):
        """``(k, H, d)`` pooled states and ``(k, H, T)`` weights of one block."""
        slope = self.slope if self.position is not None else None
        return attention_pool(block.x, block.mask, block.lengths, self.query,
                              slope, self.position)

    def forward(self, batch):
        outs = []
        H, d, C = self.value.shape
        value = self.value.reshape(H * d, C)
        for block in batch.blocks:
            pooled, _ = self.pool_block(block)
            outs.append(pooled.reshape(len(block), H * d) @ value)
        return torch.cat(outs) + self.bias


class LinearProbeModule(nn.Module):
    """Linear classifier on pooled features; weights start at zero."""

    def __init__(self, d_model, n_outputs, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_model, n_outputs, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(n_outputs, dtype=dtype))

    @property
    def d_model(self):
        return self.weight.shape[0]

    def penalized_parameters(self):
        return [self.weight]

    def forward(self, batch):
        return batch.features @ self.weight + self.bias


POOLERS = {"mean": mean_pool, "last": last_token_pool}
