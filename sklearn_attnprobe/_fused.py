"""Fused attention pooling: one autograd operator, a backend per device.

``fused_attention_pool(x, lengths, query, slope, position)`` returns the
pooled states ``sum_t a_th x_t`` of a block and each head's log-sum-exp,
never the ``(k, H, T)`` weights. Its backward pass recomputes the logits from
the saved log-sum-exp (on CPU, where the kernels are arithmetic-bound, the
forward keeps the weights instead when they are no larger than the pooled
states: :func:`._fused_cpu.keeps_weights`) and forms

    dA_th = x_t . dpooled_h,    dlogit_th = a_th (dA_th - pooled_h . dpooled_h),
    dQ = sum_t x_t dlogit_t,    dslope_h = sum_t dlogit_th p_t;

nothing is differentiated with respect to ``x`` (the activations are data).

Backends: numba kernels on CPU (:mod:`._fused_cpu`, :mod:`._fused_numba`), Triton on
CUDA (:mod:`._triton_pool`). Half-precision activations are read as they are
and accumulated in float32; float64 blocks accumulate in float64. Where no
backend applies (numba or Triton not importable, ``x`` requiring grad, or
``SKLEARN_ATTNPROBE_FUSED=0``), :func:`backend_for` returns None and callers
use the reference kernels of :mod:`._kernels`.
"""

import os

import torch

from ._numerics import HALF_DTYPES

POSITION_CODES = {None: 0, "last": 1, "first": 2}
_disabled = os.environ.get("SKLEARN_ATTNPROBE_FUSED", "1") == "0"


def accumulation_dtype(dtype):
    """float64 for float64 blocks, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _numba_backend():
    try:
        from . import _fused_cpu
    except ImportError:  # numba missing or broken: the reference path
        return None
    return _fused_cpu


def _triton_backend():
    try:
        from . import _triton_pool
    except ImportError:
        return None
    return _triton_pool


_BACKENDS = {"numba": _numba_backend, "triton": _triton_backend}
_loaded = {}


def load_backend(name):
    """The backend module ``name`` ("numba" or "triton"), or None if unavailable."""
    if name not in _loaded:
        _loaded[name] = _BACKENDS[name]()
    return _loaded[name]


def _backend_name(device_type, dtype):
    """Which backend runs blocks of ``dtype`` on ``device_type``, if any."""
    if device_type == "cpu" and dtype in (torch.float32, torch.float64, *HALF_DTYPES):
        return "numba"
    if device_type == "cuda" and dtype in (torch.float32, *HALF_DTYPES):
        return "triton"
    return None


def reads_half_directly(device):
    """Whether blocks of float16 on ``device`` train through a fused backend,
    which reads them as they are (float32 accumulation): then a float32
    working copy of float16 activations would only double the memory."""
    name = _backend_name(torch.device(device).type, torch.float16)
    return not _disabled and name is not None and load_backend(name) is not None


def backend_for(x):
    """The backend that runs blocks like ``x``, or None for the reference path."""
    if _disabled or x.requires_grad:
        return None
    name = _backend_name(x.device.type, x.dtype)
    return None if name is None else load_backend(name)


class _FusedPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lengths, query, slope, code, backend):
        # a backend may keep the weights for a backward that will run (CPU)
        training = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        pooled, lse, weights, _ = backend.forward(x, lengths, query, slope, code,
                                                  keep_weights=training)
        ctx.save_for_backward(x, lengths, query, slope, pooled, lse, weights)
        ctx.code, ctx.backend = code, backend
        ctx.mark_non_differentiable(lse)
        return pooled, lse

    @staticmethod
    def backward(ctx, dpooled, _dlse):
        x, lengths, query, slope, pooled, lse, weights = ctx.saved_tensors
        if dpooled is None:
            return None, None, None, None, None, None
        dquery, dslope, _ = ctx.backend.backward(x, lengths, query, slope, ctx.code,
                                                 pooled, lse, dpooled.contiguous(), weights)
        if not ctx.code:
            dslope = None
        return None, None, dquery, dslope, None, None


class _FusedHeadLogits(torch.autograd.Function):
    """Each head's class logits ``pooled_h . V_hc``, the value projection done
    by the kernels while each text's pooled states are in cache (CPU)."""

    @staticmethod
    def forward(ctx, x, lengths, query, slope, value_t, code, backend):
        training = any(ctx.needs_input_grad[2:5])
        pooled, lse, weights, zh = backend.forward(x, lengths, query, slope, code,
                                                   keep_weights=training, value_t=value_t)
        ctx.save_for_backward(x, lengths, query, slope, value_t, pooled, lse, weights)
        ctx.code, ctx.backend = code, backend
        return zh

    @staticmethod
    def backward(ctx, dzh):
        x, lengths, query, slope, value_t, pooled, lse, weights = ctx.saved_tensors
        dquery, dslope, dvalue = ctx.backend.backward(
            x, lengths, query, slope, ctx.code, pooled, lse, None, weights,
            value_t=value_t, dzh=dzh.contiguous())
        return (None, None, dquery, dslope if ctx.code else None, dvalue.to(value_t.dtype),
                None, None)


def fused_attention_pool(x, lengths, query, slope=None, position=None, backend=None):
    """Pooled states and log-sum-exp of a block, through the fused operator.

    Parameters
    ----------
    x : Tensor (k, T, d), float16, bfloat16, float32 or float64; padded
        tokens are never read.
    lengths : Tensor (k,) of int, each >= 1
    query : Tensor (d, H)
    slope : Tensor (H,) or None
    position : {"last", "first"} or None
    backend : module, optional
        Defaults to :func:`backend_for(x) <backend_for>`, which must not be None.

    Returns
    -------
    pooled : Tensor (k, H, d) in :func:`accumulation_dtype` of ``x``
    lse : Tensor (k, H), the log-sum-exp of each head's logits over real tokens
    """
    backend = backend or backend_for(x)
    if backend is None:
        raise RuntimeError("no fused backend for this block; use _kernels.attention_pool")
    acc, slope, code = _operator_args(x, query, slope, position)
    return _FusedPool.apply(x.contiguous(), lengths, query.to(acc), slope, code, backend)


def _operator_args(x, query, slope, position):
    """``(accumulation dtype, slope in it, position code)``; zero slopes and
    code 0 without a position bias."""
    acc = accumulation_dtype(x.dtype)
    code = POSITION_CODES[position]
    if slope is None or not code:
        return acc, torch.zeros(query.shape[1], dtype=acc, device=x.device), 0
    return acc, slope.to(acc), code


def fused_head_logits(x, lengths, query, slope, value, position=None):
    """Each head's class logits ``(k, H, C)`` of a block, ``sum_t a_th x_t .
    value[h, :, c]``, or None where the block has no CPU kernel.

    The same values as :func:`fused_attention_pool` followed by the value
    product, without the ``(k, H, d)`` pooled states leaving the kernels: the
    products with the values (and, backward, ``dpooled`` and ``dV``) are
    formed per text while its pooled states are in cache. Measured on a
    stacked CV step (800 study texts, 160 heads, 5 classes) the separate
    value products and their copies had taken a quarter of the step.

    ``value`` is ``(H, d, C)``; the rest as in :func:`fused_attention_pool`.
    """
    backend = backend_for(x)
    if backend is None or backend is not load_backend("numba"):
        return None
    acc, slope, code = _operator_args(x, query, slope, position)
    value_t = value.to(acc).transpose(1, 2).contiguous()
    return _FusedHeadLogits.apply(x.contiguous(), lengths, query.to(acc), slope, value_t,
                                  code, backend)
