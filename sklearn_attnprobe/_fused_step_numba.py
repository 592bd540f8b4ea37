"""A single probe's whole training step, text by text, in one numba kernel.

:mod:`._manual_step` used to evaluate a probe's objective and gradients
with two kernel passes over a block (:mod:`._fused_numba`): the forward
wrote every text's pooled states and attention weights, the loss gradient
was formed over the block, then the backward read each text again, widening
half-precision activations a second time. But a text's gradient needs
nothing from other texts except the batch's total weight, which is known
before the step: here each text goes forward, through its loss and back
while its activations are still in the core's cache, so they are read (and
widened) once per step and nothing per text is written out but the gradient
sums. The forward and backward kernels remain for autograd (the CV stacks,
inspection).

Per text the arithmetic is that of the forward and backward kernels of
:mod:`._fused_numba` (the same BLAS calls and helpers: softmax, head
logits, ``dlogit``); the loss and the bias gradient are summed text by text
(float64 for the loss), in chunks of texts when the chunks run in parallel.
"""

import numpy as np
from numba import njit, prange

from ._fused_numba import (
    _OPTS,
    _dlogits,
    _head_values,
    _text,
    _value_grads,
    pool_text,
    query_grads,
    row_loss_grad,
)


@njit(**_OPTS)
def _step_chunk(xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w, total, ent, start,
                stop, dq, dslope, dV, dbias):
    """Texts ``start:stop``: their summed ``w_i loss_i`` (float64, returned)
    and, added into ``dq (H, d)``, ``dslope (H,)``, ``dV (H, C, d)`` and
    ``dbias (C,)``, the gradients of the weighted mean loss. ``ent`` > 0 adds
    ``ent`` times each text's mean attention entropy over the heads to its
    loss (:func:`_entropy_grad`; the candidates benchmark's hook, 0 in fits)."""
    T, d = (xh.shape[1], xh.shape[2]) if kind else (xf.shape[1], xf.shape[2])
    H, C = Vt.shape[0], Vt.shape[1]
    dtype = qT.dtype
    wide = np.empty((T if kind else 0, d), dtype=dtype)
    S = np.empty((T, H), dtype=dtype)
    G = np.empty((T, H), dtype=dtype)
    dA = np.empty((T, H), dtype=dtype)
    bits = np.empty(T * H, dtype=np.int32)
    top, norm = np.empty(H, dtype=dtype), np.empty(H, dtype=dtype)
    lse = np.empty(H, dtype=dtype)
    pooled = np.empty((H, d), dtype=dtype)
    dp = np.empty((H, d), dtype=dtype)
    part = np.empty((H, d), dtype=dtype)
    zh = np.empty((H, C), dtype=dtype)
    dzh = np.empty((H, C), dtype=dtype)
    z = np.empty(C, dtype=dtype)
    gz = np.empty(C, dtype=dtype)
    c = np.empty(H, dtype=dtype)
    loss = 0.0
    for i in range(start, stop):
        L = lengths[i]
        xt = _text(xf, xh, i, L, kind, wide)[:L]
        # forward: logits, softmax down the columns, pooled states, head logits
        a = S[:L]
        pool_text(xt, qT, slope, code, a, lse, pooled, bits, top, norm)
        _head_values(pooled, Vt, zh)
        # the probe's logits (heads summed in order, then the bias) and their
        # gradient, as the two-pass path forms them over the whole batch
        for k in range(C):
            s = zh[0, k]
            for h in range(1, H):
                s += zh[h, k]
            z[k] = s + bias[k]
        loss += row_loss_grad(z, y[i], w[i], w[i] / total, gz)
        for k in range(C):
            dbias[k] += gz[k]
            # every head's class logits get that gradient
            for h in range(H):
                dzh[h, k] = gz[k]
        _value_grads(pooled, Vt, dzh, dp, dV)  # dpooled and dV
        # backward, the activations still in cache
        b = dA[:L]
        g = G[:L]
        np.dot(xt, dp.T, b)
        if ent != 0:
            loss += _entropy_grad(a, b, ent * w[i] / H, ent * w[i] / (H * total))
        _dlogits(a, b, g, c, norm)
        query_grads(xt, g, code, dslope, dq, part)
    return loss


@njit(**_OPTS)
def _entropy_grad(a, b, value_scale, grad_scale):
    """The attention-entropy penalty of one text: returns ``value_scale *
    sum_h H_h`` (``H_h = -sum_t a_th log a_th``) and adds its gradient with
    respect to the weights, ``-grad_scale * log a_th`` (the softmax Jacobian
    drops the constant), into ``b = dA``. Weights that underflowed to zero
    count with ``log`` of the smallest normal, so their ``a * log a`` is 0."""
    L, H = a.shape
    tiny = np.finfo(a.dtype).tiny
    total = 0.0
    for t in range(L):
        for h in range(H):
            la = np.log(max(a[t, h], tiny))
            total -= a[t, h] * la
            b[t, h] -= grad_scale * la
    return value_scale * total


@njit(parallel=True, **_OPTS)
def step(xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w, total, ent, dq_parts,
         dslope_parts, dV_parts, dbias_parts, loss_parts):
    """:func:`_step_chunk` over a block's texts in ``dq_parts.shape[0]``
    chunks run in parallel; per-chunk sums (zeroed here)."""
    k = lengths.shape[0]
    n_chunks = dq_parts.shape[0]
    per = (k + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        dq_parts[ch] = 0
        dslope_parts[ch] = 0
        dV_parts[ch] = 0
        dbias_parts[ch] = 0
        loss_parts[ch] = _step_chunk(
            xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w, total, ent, ch * per,
            min(k, (ch + 1) * per), dq_parts[ch], dslope_parts[ch], dV_parts[ch],
            dbias_parts[ch])


@njit(**_OPTS)
def step_serial(xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w, total, ent, dq_parts,
                dslope_parts, dV_parts, dbias_parts, loss_parts):
    """:func:`step` on the calling thread, one chunk."""
    dq_parts[0] = 0
    dslope_parts[0] = 0
    dV_parts[0] = 0
    dbias_parts[0] = 0
    loss_parts[0] = _step_chunk(xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w,
                                total, ent, 0, lengths.shape[0], dq_parts[0], dslope_parts[0],
                                dV_parts[0], dbias_parts[0])
