"""Vectorized kernels over padded blocks of ragged texts.

All functions take a block of ``k`` texts padded to ``T`` tokens:
``x`` of shape ``(k, T, d)``, ``mask`` of shape ``(k, T)`` (True for real
tokens, at least one per row: the packing never builds an empty text, so a
fully masked softmax row cannot occur) and ``lengths`` of shape ``(k,)``.

These are the reference implementation: the estimators train through the
fused operator of :mod:`._fused` where it is available and fall back to these.

Heads are a trailing axis everywhere. Several probes over the same activations
(a "model" axis) fold into it: ``M`` models of ``H`` heads are ``M * H`` heads
of :func:`attention_pool`, so stacking models is one wider GEMM, not a loop.
"""

import torch

__all__ = [
    "masked_softmax",
    "position_dtype",
    "relative_positions",
    "attention_logits",
    "attention_pool",
    "binary_attention_outputs",
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
    return torch.softmax(filled, dim=-1).to(dtype)


def position_dtype(dtype):
    """dtype of the position term for a compute dtype: float32 for half precision.

    bfloat16 holds integers exactly only up to 256 (float16 up to 2,048): in
    it, the positions of a 2,000-token text would round to multiples of 8 and
    its last tokens tie. Positions are therefore formed from integers and kept
    in float32 (float64 for float64 blocks).
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def relative_positions(lengths, T, position, dtype):
    """``(k, T)`` position term ``p_t`` for each token.

    ``p_t`` is minus the token's distance to the anchor token: the text's last
    real token for ``"last"``, its first token for ``"first"``. A positive
    slope therefore favours tokens near the anchor, and a large one puts all
    the weight on it (last-token or first-token pooling).

    Computed in integers, returned in :func:`position_dtype` of ``dtype``.
    """
    t = torch.arange(T, device=lengths.device)[None, :]
    out = position_dtype(dtype)
    if position == "last":
        return (t - (lengths[:, None].long() - 1)).to(out)
    if position == "first":
        return (-t).to(out).expand(lengths.shape[0], T)
    raise ValueError(f"unknown position {position!r}")


def attention_logits(x, lengths, query, slope=None, position=None, positions=None):
    """``(k, H, T)`` logits ``x_t @ q_h + slope_h * p_t``.

    With a position term and half-precision ``x``, the logits are float32.

    Heads come before tokens so that the softmax runs over the contiguous
    last axis (a softmax over a strided middle axis is several times slower).
    """
    k, T, d = x.shape
    logits = (x.reshape(k * T, d) @ query).view(k, T, -1).transpose(1, 2)
    if position is not None:
        p = positions if positions is not None else relative_positions(
            lengths, T, position, logits.dtype)
        # half precision: the position term (and the sum) in float32, so
        # that the positions of long texts are not rounded
        logits = logits.to(p.dtype)
        logits = torch.addcmul(logits, slope.to(p.dtype)[None, :, None],
                               p[:, None, :])  # one pass
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
    logits = attention_logits(x, lengths, query, slope, position, positions)
    padding = ~mask if padding is None else padding
    # in place: nothing upstream needs the logits for its backward pass
    logits = logits.masked_fill_(padding[:, None, :], float("-inf"))
    weights = _softmax_last(logits, x.dtype)
    pooled = torch.matmul(weights, x)
    return pooled, weights


def binary_attention_outputs(x, padding, query, value, slope=None, positions=None):
    """Each head's output of stacked *binary* attention probes, per token values.

    The direct form of the probe: per head ``h``, ``sum_t a_th (x_t . v_h)``,
    with ``a`` the masked softmax of ``x_t . q_h + slope_h p_t`` over the
    tokens (a stacked model's logit is the sum over its heads). Query and
    value columns are one ``(k T, d) @ (d, 2 H)`` GEMM, and autograd's
    backward is one more (``x^T @ dS``): 4 passes of ``H`` columns over the
    activations against the fused operator's 5 thin ones, at big-GEMM
    efficiency when ``H`` is wide (the cross-validation stack). With one
    output per model (binary problems) the per-token values are no wider than
    the logits.

    Parameters
    ----------
    x : Tensor (k, T, d)
    padding : Tensor (k, T) of bool, True at padded tokens
    query : Tensor (d, H), all heads of all models
    value : Tensor (H, d)
    slope, positions : Tensor (H,) and (k, T), or None (no position term)

    Returns
    -------
    Tensor (k, H): each head's output.
    """
    k, T, d = x.shape
    H = value.shape[0]
    weights = torch.cat([query, value.T], dim=1)
    scores = (x.reshape(k * T, d) @ weights).view(k, T, 2 * H)
    logits = scores[..., :H]
    if slope is not None:
        logits = torch.addcmul(logits, positions.to(logits.dtype)[..., None], slope)
    logits = logits.masked_fill(padding[..., None], float("-inf"))
    attn = torch.softmax(logits, dim=1)
    return (attn * scores[..., H:]).sum(dim=1)


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
