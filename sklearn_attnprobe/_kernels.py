"""Vectorized kernels over padded blocks of ragged texts.

All functions take a block of ``k`` texts padded to ``T`` tokens:
``x`` of shape ``(k, T, d)``, ``mask`` of shape ``(k, T)`` (True for real
tokens, at least one per row: the packing never builds an empty text, so a
fully masked softmax row cannot occur) and ``lengths`` of shape ``(k,)``.

Heads are a trailing axis everywhere. Several probes over the same activations
(a "model" axis) fold into it: ``M`` models of ``H`` heads are ``M * H`` heads
of :func:`attention_pool`, so stacking models is one wider GEMM, not a loop.
"""

import torch

__all__ = [
    "masked_softmax",
    "relative_positions",
    "attention_logits",
    "attention_pool",
    "mean_pool",
    "last_token_pool",
]


def masked_softmax(logits, mask, padding=None):
    """Softmax over the token axis (the last) of ``(k, H, T)`` logits.

    Padded tokens get exactly zero weight. The maximum is subtracted before
    exponentiating (inside :func:`torch.softmax`), so logits of 1e4 are safe;
    half-precision logits are normalised in float32 and cast back.
    """
    padding = ~mask if padding is None else padding
    filled = logits.masked_fill(padding[:, None, :], float("-inf"))
    return _softmax_last(filled, logits.dtype)


def _softmax_last(filled, dtype):
    if filled.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(filled, dim=-1, dtype=torch.float32).to(dtype)
    return torch.softmax(filled, dim=-1)


def relative_positions(lengths, T, position, dtype):
    """``(k, T)`` position term ``p_t`` for each token.

    ``p_t`` is minus the token's distance to the anchor token: the text's last
    real token for ``"last"``, its first token for ``"first"``. A positive
    slope therefore favours tokens near the anchor, and a large one puts all
    the weight on it (last-token or first-token pooling).
    """
    t = torch.arange(T, device=lengths.device, dtype=dtype)[None, :]
    if position == "last":
        return t - (lengths[:, None] - 1).to(dtype)
    if position == "first":
        return (-t).expand(lengths.shape[0], T)
    raise ValueError(f"unknown position {position!r}")


def attention_logits(x, lengths, query, slope=None, position=None, positions=None):
    """``(k, H, T)`` logits ``x_t @ q_h + slope_h * p_t``.

    Heads come before tokens so that the softmax runs over the contiguous
    last axis (a softmax over a strided middle axis is several times slower).
    """
    k, T, d = x.shape
    logits = (x.reshape(k * T, d) @ query).view(k, T, -1).transpose(1, 2)
    if position is not None:
        p = positions if positions is not None else relative_positions(
            lengths, T, position, logits.dtype)
        logits = torch.addcmul(logits, slope[None, :, None], p[:, None, :])  # one pass
    return logits


def attention_pool(x, mask, lengths, query, slope=None, position=None, *,
                   positions=None, padding=None):
    """Attention-weighted sums of each text's tokens, one per head.

    Parameters
    ----------
    x : Tensor (k, T, d)
    mask : Tensor (k, T) of bool
    lengths : Tensor (k,) of int
    query : Tensor (d, H)
    slope : Tensor (H,) or None
    position : {"last", "first"} or None
    positions, padding : Tensor (k, T), optional
        Precomputed :func:`relative_positions` and ``~mask`` (blocks cache
        them across training steps).

    Returns
    -------
    pooled : Tensor (k, H, d)
        ``sum_t a_th x_t``. The value projection is applied to this afterwards,
        which is the same function as projecting every token first but never
        builds a tokens x heads x classes tensor.
    weights : Tensor (k, H, T)
        Attention weights ``a_th``, zero on padding, summing to 1 over tokens.
    """
    padding = ~mask if padding is None else padding
    if position is not None and positions is None:
        positions = relative_positions(lengths, x.shape[1], position, x.dtype)
    if _cache_blocked(x):
        return _CacheBlockedAttentionPool.apply(
            x, query, slope if position is not None else None,
            positions if position is not None else None, padding)
    logits = attention_logits(x, lengths, query, slope, position, positions)
    # in place: nothing upstream needs the logits for its backward pass
    logits = logits.masked_fill_(padding[:, None, :], float("-inf"))
    weights = _softmax_last(logits, x.dtype)
    pooled = torch.matmul(weights, x)
    return pooled, weights


# Texts per cache block: about this many values of x (2 MiB in float32), so a
# chunk read for the logits is still in cache when the pooling reads it again.
CACHE_BLOCK_ELEMENTS = 1 << 19


def _cache_blocked(x):
    """The cache-blocked path: CPU, full precision, activations without grad."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not x.requires_grad and x.shape[0] > 1)


class _CacheBlockedAttentionPool(torch.autograd.Function):
    """:func:`attention_pool` reading the activations twice per step, not four times.

    On a CPU the probe is memory-bound: the plain formulation streams ``x``
    through memory for the logits, the pooling, and in the backward pass for
    the weights' gradient and the query's gradient. Here both forward products
    and both backward products run chunk by chunk (a few texts whose tokens
    fit in cache), so each pass brings ``x`` from memory once. The softmax
    backward uses the saved weights. Gradients flow to ``query`` and ``slope``
    only (activations are data).
    """

    @staticmethod
    def forward(ctx, x, query, slope, positions, padding):
        k, T, d = x.shape
        H = query.shape[1]
        step = max(1, CACHE_BLOCK_ELEMENTS // (T * d))
        pooled = x.new_empty(k, H, d)
        weights = x.new_empty(k, H, T)
        for s in range(0, k, step):
            xc = x[s : s + step]
            logits = torch.matmul(query.t(), xc.transpose(1, 2))  # (c, H, T)
            if slope is not None:
                logits = torch.addcmul(logits, slope[None, :, None],
                                       positions[s : s + step, None, :])
            logits.masked_fill_(padding[s : s + step, None, :], float("-inf"))
            w = torch.softmax(logits, dim=-1)
            weights[s : s + step] = w
            torch.matmul(w, xc, out=pooled[s : s + step])
        ctx.save_for_backward(x, query, slope, positions, weights)
        ctx.step = step
        return pooled, weights

    @staticmethod
    def backward(ctx, d_pooled, d_weights):
        x, query, slope, positions, weights = ctx.saved_tensors
        k, T, d = x.shape
        d_query = torch.zeros_like(query)
        d_slope = torch.zeros_like(slope) if slope is not None else None
        for s in range(0, k, ctx.step):
            xc, w = x[s : s + ctx.step], weights[s : s + ctx.step]
            dw = (torch.matmul(d_pooled[s : s + ctx.step], xc.transpose(1, 2))
                  if d_pooled is not None else torch.zeros_like(w))
            if d_weights is not None:
                dw = dw + d_weights[s : s + ctx.step]
            d_logits = w * (dw - (w * dw).sum(dim=-1, keepdim=True))  # softmax backward
            d_query += torch.matmul(xc.transpose(1, 2), d_logits.transpose(1, 2)).sum(0)
            if slope is not None:
                d_slope += (d_logits * positions[s : s + ctx.step, None, :]).sum(dim=(0, 2))
        return None, d_query, d_slope, None, None


def mean_pool(x, lengths):
    """``(k, d)`` mean of each text's real tokens (padding is zero).

    Half-precision blocks are summed in float32 and the mean returned in float32.
    """
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return x.sum(dim=1, dtype=acc) / lengths[:, None].to(acc)


def last_token_pool(x, lengths):
    """``(k, d)`` last real token of each text."""
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, lengths - 1]
