"""CPU kernels of the fused attention pooling, compiled by numba.

One text at a time (texts run in parallel under ``prange``): the text's
``(L, d)`` activations are read from memory once per pass and stay in the
core's L2 cache while the logits, the softmax and the pooled sums (forward) or
the recomputed weights, ``dA`` and the ``dQ`` update (backward) use them.
Half-precision activations arrive as their raw 16-bit patterns (numba has no
float16 type) and are widened to float32 into a per-text scratch buffer, so no
float32 copy of the data set ever exists.

Inner loops run over tokens in groups of four so that each load of a query
row, a pooled row or a ``dQ`` row serves four tokens; ``fastmath`` lets LLVM
vectorise the reductions over ``d``.

Position codes: 0 none, 1 "last" (``p_t = t - (L - 1)``), 2 "first"
(``p_t = -t``), computed from integers in the accumulation dtype.
Input kinds: 0 float32/float64 as they are, 1 float16 bits, 2 bfloat16 bits.
"""

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise the reductions; infinities and NaNs keep
# their IEEE meaning (no "nnan"/"ninf") so that overflowing activations reach
# the estimators' finiteness checks, and a division by zero gives inf, not a
# Python ZeroDivisionError (error_model="numpy").
_OPTS = dict(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, nogil=True,
             error_model="numpy")
_HALF_SCALE = np.float32(2.0**112)


@njit(**_OPTS)
def _widen(src, dst, L, kind):
    """float32 values of the first ``L`` rows of 16-bit patterns ``src``."""
    d = src.shape[1]
    bits = dst.view(np.uint32)
    for t in range(L):
        for j in range(d):
            h = np.uint32(src[t, j])
            if kind == 2:
                bits[t, j] = h << 16
            else:  # float16: move the exponent, rescale by 2**112 (subnormals too)
                bits[t, j] = ((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)
    if kind == 1:
        for t in range(L):
            for j in range(d):
                dst[t, j] *= _HALF_SCALE


@njit(**_OPTS)
def _position(t, L, code):
    if code == 1:
        return t - (L - 1)
    if code == 2:
        return -t
    return 0


@njit(**_OPTS)
def _text(xf, xh, i, L, kind, scratch):
    """Text ``i`` as floats: a view of ``xf`` or ``xh`` widened into ``scratch``."""
    if kind == 0:
        return xf[i]
    _widen(xh[i], scratch, L, kind)
    return scratch


@njit(**_OPTS)
def _dots(xt, t, n, u, v, out_u, out_v):
    """``out_u[r] = x_{t+r} . u`` and ``out_v[r] = x_{t+r} . v`` for ``r < n <= 2``
    (four dot products per pass: four loads per four multiply-adds; wider
    blocks measured slower, as their accumulators no longer fit in registers)."""
    zero = u.dtype.type(0)
    if n == 2:
        x0, x1 = xt[t], xt[t + 1]
        a0 = a1 = b0 = b1 = zero
        for j in range(u.shape[0]):
            p, q = u[j], v[j]
            a0 += x0[j] * p
            a1 += x1[j] * p
            b0 += x0[j] * q
            b1 += x1[j] * q
        out_u[0], out_u[1], out_v[0], out_v[1] = a0, a1, b0, b1
        return
    x0 = xt[t]
    a0 = b0 = zero
    for j in range(u.shape[0]):
        a0 += x0[j] * u[j]
        b0 += x0[j] * v[j]
    out_u[0], out_v[0] = a0, b0


@njit(**_OPTS)
def _logits(xt, L, qT, slope, code, out):
    """``out[h, t] = x_t . q_h + slope_h * p_t`` for the ``L`` real tokens."""
    H = qT.shape[0]
    bu = np.empty(2, qT.dtype)
    bv = np.empty(2, qT.dtype)
    for t in range(0, L, 2):
        n = min(2, L - t)
        for h in range(0, H, 2):
            h2 = min(h + 1, H - 1)  # odd H: the last head twice
            _dots(xt, t, n, qT[h], qT[h2], bu, bv)
            for r in range(n):
                out[h, t + r] = bu[r] + slope[h] * _position(t + r, L, code)
                out[h2, t + r] = bv[r] + slope[h2] * _position(t + r, L, code)


@njit(**_OPTS)
def _weighted_sum(xt, L, w, out):
    """``out[h] += sum_t w[h, t] x_t`` (a ``(H, L) @ (L, d)`` product), four
    tokens per pass over a row of ``out`` (one head at a time: with two, LLVM
    stops vectorising, as it would need too many run-time aliasing checks)."""
    H, d = out.shape
    t = 0
    while t + 4 <= L:
        x0, x1, x2, x3 = xt[t], xt[t + 1], xt[t + 2], xt[t + 3]
        for h in range(H):
            o = out[h]
            w0, w1, w2, w3 = w[h, t], w[h, t + 1], w[h, t + 2], w[h, t + 3]
            for j in range(d):
                o[j] += w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j]
        t += 4
    for r in range(t, L):
        xr = xt[r]
        for h in range(H):
            o = out[h]
            w0 = w[h, r]
            for j in range(d):
                o[j] += w0 * xr[j]


@njit(**_OPTS)
def _softmax_rows(logits, L, lse_out):
    """In place: ``logits[h, :L]`` -> softmax weights; ``lse_out[h]`` set."""
    H = logits.shape[0]
    for h in range(H):
        m = logits[h, 0]
        for t in range(1, L):
            m = max(m, logits[h, t])
        s = logits.dtype.type(0)
        for t in range(L):
            e = np.exp(logits[h, t] - m)
            logits[h, t] = e
            s += e
        inv = 1 / s
        for t in range(L):
            logits[h, t] *= inv
        lse_out[h] = m + np.log(s)


@njit(**_OPTS)
def _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, i, scratch):
    L = lengths[i]
    xt = _text(xf, xh, i, L, kind, scratch)
    w = np.empty((qT.shape[0], L), dtype=qT.dtype)
    _logits(xt, L, qT, slope, code, w)
    _softmax_rows(w, L, lse[i])
    pooled[i, :, :] = 0
    _weighted_sum(xt, L, w, pooled[i])


@njit(parallel=True, **_OPTS)
def forward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, n_chunks):
    """Fill ``pooled (k, H, d)`` and ``lse (k, H)`` for a block of ``k`` texts
    (``xf`` or, for half precision, ``xh``: ``(k, T, d)``), texts in parallel."""
    k, T, d = xh.shape if kind else xf.shape
    per = (k + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        scratch = np.empty((T if kind else 0, d), dtype=qT.dtype)
        for i in range(ch * per, min(k, (ch + 1) * per)):
            _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, i,
                          scratch)


@njit(**_OPTS)
def forward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse, n_chunks):
    """:func:`forward` on the calling thread (no threading layer involved)."""
    k, T, d = xh.shape if kind else xf.shape
    scratch = np.empty((T if kind else 0, d), dtype=qT.dtype)
    for i in range(k):
        _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, i, scratch)


@njit(**_OPTS)
def _dlogits(xt, L, qT, dpT, slope, code, lse, c, out):
    """``out[h, t] = a_th (x_t . dp_h - c_h)`` with ``a`` recomputed from ``lse``."""
    H = qT.shape[0]
    bu = np.empty(2, qT.dtype)
    bv = np.empty(2, qT.dtype)
    for t in range(0, L, 2):
        n = min(2, L - t)
        for h in range(H):
            _dots(xt, t, n, qT[h], dpT[h], bu, bv)
            for r in range(n):
                s = bu[r] + slope[h] * _position(t + r, L, code)
                out[h, t + r] = np.exp(s - lse[h]) * (bv[r] - c[h])


@njit(**_OPTS)
def _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                    start, stop, dq, dslope):
    T, d = (xh.shape[1], xh.shape[2]) if kind else (xf.shape[1], xf.shape[2])
    H = qT.shape[0]
    dq[:, :] = 0
    dslope[:] = 0
    scratch = np.empty((T if kind else 0, d), dtype=qT.dtype)
    g = np.empty((H, T), dtype=qT.dtype)
    c = np.empty(H, dtype=qT.dtype)
    for i in range(start, stop):
        L = lengths[i]
        xt = _text(xf, xh, i, L, kind, scratch)
        for h in range(H):
            acc = qT.dtype.type(0)
            for j in range(d):
                acc += pooled[i, h, j] * dpooled[i, h, j]
            c[h] = acc
        _dlogits(xt, L, qT, dpooled[i], slope, code, lse[i], c, g)
        if code:
            for h in range(H):
                acc = qT.dtype.type(0)
                for t in range(L):
                    acc += g[h, t] * _position(t, L, code)
                dslope[h] += acc
        _weighted_sum(xt, L, g, dq)


@njit(parallel=True, **_OPTS)
def backward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled, dq_parts,
             dslope_parts):
    """Per-chunk sums ``dQ^T (n_chunks, H, d)`` and ``dslope (n_chunks, H)``;
    the chunks (runs of texts) run in parallel."""
    k = lengths.shape[0]
    n_chunks = dq_parts.shape[0]
    per = (k + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                        ch * per, min(k, (ch + 1) * per), dq_parts[ch], dslope_parts[ch])


@njit(**_OPTS)
def backward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                    dq_parts, dslope_parts):
    """:func:`backward` on the calling thread, one chunk."""
    _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                    0, lengths.shape[0], dq_parts[0], dslope_parts[0])
