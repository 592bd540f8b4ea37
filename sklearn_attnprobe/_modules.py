"""Torch modules of the probes. Each maps a :class:`PackedBatch` to logits.

``n_outputs`` is 1 for binary problems (one logit, as in logistic regression)
and the number of classes otherwise.
"""

import math

import numpy as np

import torch
from torch import nn

from ._fused import backend_for, fused_attention_pool, fused_head_logits
from ._head_layout import _head_counts, _uniform, head_columns, sum_heads
from ._numerics import HALF_DTYPES
from ._packing import Block
from ._kernels import (
    attention_logits,
    attention_pool,
    binary_attention_outputs,
    last_token_pool,
    masked_softmax,
    mean_pool,
    position_dtype,
)

POSITIONS = ("last", "first", None)
# heads (models x heads) from which a binary stack trains through the direct
# per-token-value GEMMs rather than the fused kernels (see _direct)
DIRECT_MIN_HEADS = 32


def init_values(d_model, n_heads, n_outputs, generator, dtype):
    """Random value projections, uniform in +-1/sqrt(d_model), as nn.Linear."""
    bound = 1.0 / math.sqrt(d_model)
    value = torch.rand(n_heads, d_model, n_outputs, generator=generator,
                       dtype=torch.float64) * (2 * bound) - bound
    return value.to(dtype)


def query_decay(query_weight_decay, weight_decay):
    """The query's L2 coefficient: ``query_weight_decay``, or ``weight_decay``
    where it is None."""
    return weight_decay if query_weight_decay is None else query_weight_decay


def _penalty(query_weight_decay, weight_decay, sq_query, sq_value):
    """``weight_decay / 2 * ||V||^2`` plus the query's term, at
    :func:`query_decay`."""
    q = query_decay(query_weight_decay, weight_decay)
    return 0.5 * (weight_decay * sq_value + q * sq_query)


class _ThinMatmul(torch.autograd.Function):
    """``a @ b`` for a ``b`` of few columns (class logits from pooled states),
    every product in the layout torch's CPU GEMM runs fast. Plain autograd
    matches the operands' strides instead: measured on ``(302, 3072) @
    (3072, 10)`` it runs the forward at 7 GFMA/s and the weight gradient at
    3.4, against 22-25 here."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return (b.mT @ a.mT).mT

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = grad @ b.mT if ctx.needs_input_grad[0] else None
        grad_b = (grad.mT @ a).mT if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def thin_matmul(a, b):
    """``a @ b`` (batched or not) for a ``b`` with few columns; see :class:`_ThinMatmul`."""
    return _ThinMatmul.apply(a, b)


def _check_position(position):
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}; got {position!r}")


def _widened(block):
    """``block`` with half-precision activations as float32 (exact), else itself."""
    if block.x.dtype not in HALF_DTYPES:
        return block
    return Block(block.x.float(), block.mask, block.lengths, block.index)


class _AttentionPooling:
    """Pooling and scoring of a block from ``query``, ``slope`` and
    ``position`` attributes: shared by the single and the stacked modules
    (whose models fold into the head axis) and by a stack's model subsets."""

    def _kernel_args(self, block):
        """Query, slope and positions for the reference kernels in the block's
        dtype (half-precision compute, float64 inspection: the parameters are
        cast, not the data); slope and positions in :func:`position_dtype`."""
        dtype = block.x.dtype
        if self.position is None:
            return self.query.to(dtype), None, None
        return (self.query.to(dtype), self.slope.to(position_dtype(dtype)),
                block.positions(self.position, dtype))

    def _fused(self, block):
        """``(pooled, lse)`` through the fused operator, or None where it does
        not apply (no backend for the block)."""
        backend = backend_for(block.x)
        if backend is None:
            return None
        slope = self.slope if self.position is not None else None
        return fused_attention_pool(block.x, block.lengths, self.query, slope,
                                    self.position, backend=backend)

    def _pooled(self, block):
        """``(k, H, d)`` pooled states for training and prediction: the fused
        operator (no weights kept) where available, else the reference kernel."""
        fused = self._fused(block)
        if fused is not None:
            return fused[0]
        return self._reference_pool(block)[0]

    def _reference_pool(self, block):
        query, slope, positions = self._kernel_args(block)
        return attention_pool(block.x, block.mask, block.lengths, query, slope,
                              self.position, positions=positions, padding=block.padding())

    def attention_scores(self, block):
        """``(k, H, T)`` attention logits (position bias included) of one block.

        Half-precision blocks are scored in float32 (one block at a time), so
        inspected weights do not depend on the compute dtype."""
        block = _widened(block)
        query, slope, positions = self._kernel_args(block)
        return attention_logits(block.x, block.lengths, query, slope, self.position,
                                positions=positions)

    def content_scores(self, block):
        """``(k, H, T)`` content part ``x_t @ q_h`` of the logits, without the
        position bias: the part that is comparable across texts (the softmax
        leaves the position term defined only up to a per-text constant)."""
        block = _widened(block)
        return attention_logits(block.x, block.lengths, self.query.to(block.x.dtype))

    def pool_block(self, block):
        """``(k, H, d)`` pooled states and ``(k, H, T)`` weights of one block.

        For inspection: the pooled states from the fused operator, the weights
        a softmax of :meth:`attention_scores` (normalised exactly, float32 or
        float64). Under autograd (gradients through the weights) the reference
        kernel runs instead.
        """
        if torch.is_grad_enabled() and self.query.requires_grad:
            return self._reference_pool(block)
        fused = self._fused(block)
        if fused is None:
            return self._reference_pool(block)
        scores = self.attention_scores(block).to(fused[0].dtype)
        return fused[0], masked_softmax(scores, block.mask, block.padding())


class AttentionProbeModule(_AttentionPooling, nn.Module):
    """Multi-head attention probe with a learned ALiBi-style position bias.

    Per head ``h``: logits ``x_t @ query[:, h] + slope[h] * p_t``, a masked
    softmax over the text's tokens, then ``sum_t a_th x_t @ value[h]``; the
    heads' outputs are summed and ``bias`` added.
    """

    def __init__(self, d_model, n_heads, n_outputs, position="last",
                 generator=None, dtype=torch.float32):
        super().__init__()
        _check_position(position)
        self.position = position
        # The seed's initialisation: zero query (uniform attention, i.e. mean
        # pooling at step 0), zero position slopes, random values.
        self.query = nn.Parameter(torch.zeros(d_model, n_heads, dtype=dtype))
        self.slope = nn.Parameter(torch.zeros(n_heads, dtype=dtype))
        self.value = nn.Parameter(init_values(d_model, n_heads, n_outputs, generator, dtype))
        self.bias = nn.Parameter(torch.zeros(n_outputs, dtype=dtype))
        # the query's own L2 penalty, None: the values' (the estimators set it)
        self.query_weight_decay = None

    @property
    def n_heads(self):
        return self.query.shape[1]

    @property
    def d_model(self):
        return self.query.shape[0]

    def penalty(self, weight_decay):
        """``weight_decay / 2 * ||V||^2 + q / 2 * ||Q||^2``, ``q`` the module's
        ``query_weight_decay`` (``weight_decay`` where None); intercept and
        slopes are free."""
        return _penalty(self.query_weight_decay, weight_decay,
                        (self.query**2).sum(), (self.value**2).sum())

    def forward(self, batch):
        outs = []
        H, d, C = self.value.shape
        value = self.value.reshape(H * d, C)
        for block in batch.blocks:
            pooled = self._pooled(block)
            outs.append(thin_matmul(pooled.reshape(len(block), H * d).to(value.dtype), value))
        return torch.cat(outs) + self.bias


class StackedAttentionProbeModule(_AttentionPooling, nn.Module):
    """``n_models`` independent attention probes over the same activations.

    The models fold into the kernel's head axis: every block costs one GEMM
    against all models' query columns and one batched value projection, so
    the activations are read once per step for all models. Models may differ
    in their number of heads (a search over ``n_heads`` trains in the same
    stack). Model ``m`` owns the query columns, slopes and value rows
    ``head_columns(head_counts, [m])`` and ``bias[m]``; ``forward`` returns
    ``(n, n_models, n_outputs)`` logits.
    """

    def __init__(self, n_models, d_model, n_heads, n_outputs, position="last",
                 generators=None, dtype=torch.float32):
        super().__init__()
        _check_position(position)
        self.position = position
        self.head_counts = _head_counts(n_heads, n_models)
        generators = generators or [None] * n_models
        n_columns = int(self.head_counts.sum())
        self.query = nn.Parameter(torch.zeros(d_model, n_columns, dtype=dtype))
        self.slope = nn.Parameter(torch.zeros(n_columns, dtype=dtype))
        # (all heads, d, C): each model's rows as a stand-alone probe's values
        self.value = nn.Parameter(torch.cat([
            init_values(d_model, int(h), n_outputs, g, dtype)
            for h, g in zip(self.head_counts, generators)
        ]))
        self.bias = nn.Parameter(torch.zeros(n_models, n_outputs, dtype=dtype))
        self.query_weight_decay = None
        # each model's CV split (set by the CV class); None: no blocks skipped
        self.model_split = None

    @property
    def d_model(self):
        return self.query.shape[0]

    @property
    def n_models(self):
        """Models in the stack (fewer while finished ones are set aside)."""
        return len(self.head_counts)

    @property
    def n_heads(self):
        """Heads per model where all models have the same number, else None."""
        return _uniform(self.head_counts)

    def penalty(self, weight_decay):
        """``(n_models,)``: model ``m``'s penalty as in
        :meth:`AttentionProbeModule.penalty`, ``weight_decay`` a scalar or
        one value per model."""
        per_head = torch.stack([(self.query**2).sum(0), (self.value**2).sum(dim=(1, 2))])
        sq_query, sq_value = sum_heads(per_head, self.head_counts)
        return _penalty(self.query_weight_decay, weight_decay, sq_query, sq_value)

    def _direct(self, block):
        """Binary stack wide enough for :func:`binary_attention_outputs` (CPU,
        float32/float64 blocks). Against the fused kernels with the value
        product inside (:func:`._fused.fused_head_logits`), 20 CV steps on 800
        study texts at d 576 (float32): 20 heads 3.3 s direct / 2.6 s fused,
        40 heads 4.9 / 5.2, 80 heads 7.6 / 7.6, 160 heads 13.8 / 15.0."""
        C = self.value.shape[-1]
        return (C == 1 and self.query.shape[1] >= DIRECT_MIN_HEADS
                and block.x.device.type == "cpu"
                and block.x.dtype in (torch.float32, torch.float64))

    def _block_logits(self, block):
        """``(k, M, C)`` logits of one block from this module's parameters."""
        _, d, C = self.value.shape
        if self._direct(block):
            query, slope, positions = self._kernel_args(block)
            heads = binary_attention_outputs(
                block.x, block.padding(), query, self.value[..., 0].to(block.x.dtype),
                slope, positions)
            return sum_heads(heads, self.head_counts)[..., None].to(self.value.dtype)
        slope = self.slope if self.position is not None else None
        heads = fused_head_logits(block.x, block.lengths, self.query, slope,
                                  self.value, self.position)
        if heads is None:  # no CPU kernel: pooled states, then the values
            pooled = self._pooled(block)  # (k, MH, d)
            H = self.n_heads
            if H is not None:  # one (H d) x C product per model
                per_model = pooled.reshape(len(block), -1, H * d).transpose(0, 1)
                value = self.value.reshape(-1, H * d, C)
                return thin_matmul(per_model.to(value.dtype), value).transpose(0, 1)
            heads = torch.bmm(pooled.transpose(0, 1).to(self.value.dtype),
                              self.value).transpose(0, 1)
        return sum_heads(heads, self.head_counts).to(self.value.dtype)

    def _live_models(self, block):
        """Models that weigh some text of ``block`` (None: all of them).

        A CV stack's model trains on its split's training texts only; a block
        packed from texts that splits ``block.idle_splits`` all leave out
        needs no columns for those splits' models (a fifth of the work at 5
        folds). ``model_split`` (set by the CV class) names each model's split.
        """
        splits = self.model_split
        if splits is None or not block.idle_splits:
            return None
        live = np.flatnonzero(~np.isin(splits, block.idle_splits))
        return None if len(live) == len(splits) else live

    def models_block_logits(self, block, models):
        """``(k, len(models), C)`` logits of ``models`` (a numpy array of
        indices) on ``block``, without the bias."""
        return _ModelSubset(self, models)._block_logits(block)

    def forward(self, batch):
        M, C = self.n_models, self.value.shape[-1]
        outs = []
        for block in batch.blocks:
            live = self._live_models(block)
            if live is None:
                outs.append(self._block_logits(block))
                continue
            # idle models' logits stay 0: their loss weights here are 0
            out = self.value.new_zeros(len(block), M, C)
            if len(live):
                idx = torch.as_tensor(live, device=self.value.device)
                part = self.models_block_logits(block, live)
                out = out.index_copy(1, idx, part.to(out.dtype))
            outs.append(out)
        return torch.cat(outs) + self.bias


class _ModelSubset(_AttentionPooling):
    """Some models of a stack, with the stack's forward code and parameters
    sliced (autograd reaches the stack's own parameters)."""

    _direct = StackedAttentionProbeModule._direct
    _block_logits = StackedAttentionProbeModule._block_logits

    def __init__(self, stack, models):
        # ``models`` a numpy array: the columns are built on the host and
        # sent once (no device-to-host copy on GPU)
        cols = head_columns(stack.head_counts, models).to(stack.query.device)
        self.query = stack.query.index_select(1, cols)
        self.slope = stack.slope.index_select(0, cols)
        self.value = stack.value.index_select(0, cols)
        self.position = stack.position
        self.head_counts = stack.head_counts[models]

    n_heads = StackedAttentionProbeModule.n_heads


class LinearProbeModule(nn.Module):
    """Linear classifier on pooled features; weights start at zero."""

    def __init__(self, d_model, n_outputs, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_model, n_outputs, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(n_outputs, dtype=dtype))

    @property
    def d_model(self):
        return self.weight.shape[0]

    def penalty(self, weight_decay):
        """``weight_decay / 2 * ||W||^2``; the intercept is free."""
        return 0.5 * weight_decay * (self.weight**2).sum()

    def forward(self, batch):
        return batch.features @ self.weight + self.bias


POOLERS = {"mean": mean_pool, "last": last_token_pool}
