"""CPU kernels of the fused attention pooling, compiled by numba.

One text at a time (texts run in parallel under ``prange``): the text's
``(L, d)`` activations are read from memory once per pass and stay in the
core's L2 cache while the logits, the softmax and the pooled sums (forward) or
the recomputed weights, ``dA`` and the ``dQ`` update (backward) use them.
Half-precision activations arrive as their raw 16-bit patterns (numba has no
float16 type) and are widened to float32 into a per-text scratch buffer
(:mod:`._half_numba`), so no float32 copy of the data set ever exists.

The products with the activations (logits, pooled sums, ``dA`` and the
``dQ`` update) are per-text BLAS calls through numba's ``np.dot``, written
into per-chunk scratch (``np.dot(a, b, out)``); a text's logits stay in the
``(L, H)`` layout the call writes (token-major), and the element-wise work
between the products (position term, softmax down the columns, ``dlogit``)
is compiled loops. The exponentials of float32 softmaxes go through
:func:`_exp_row`, a polynomial that LLVM vectorises, instead of libm's scalar
``expf`` (numba without Intel's SVML): the forward kernel on 1,000 texts x
16-128 tokens x d 128 with 8 heads went from 8.0 to 6.6 ms.

Helpers of the CPU training step live here too, so that numba is imported in
one place: ``adamw_update`` (:mod:`._adamw`), and ``row_loss_grad`` and
``total_weight`` (the one-pass step of :mod:`._fused_step_numba`).

Position codes: 0 none, 1 "last" (``p_t = t - (L - 1)``), 2 "first"
(``p_t = -t``), computed from integers in the accumulation dtype.
Input kinds: 0 float32/float64 as they are, 1 float16 bits, 2 bfloat16 bits.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._half_numba import widen

# Reassociation lets LLVM vectorise the reductions; infinities and NaNs keep
# their IEEE meaning (no "nnan"/"ninf") so that overflowing activations reach
# the estimators' finiteness checks, and a division by zero gives inf, not a
# Python ZeroDivisionError (error_model="numpy").
_OPTS = dict(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, nogil=True,
             error_model="numpy")

# exp(x) = 2^z * exp(r), z = round(x / ln 2), |r| <= ln(2) / 2: ln 2 in two
# parts (exact products with z), and Cephes' degree-7 polynomial for expf on
# that interval (relative error about 1.2e-7, measured against float64 exp).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                        4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXP_LO, _EXP_HI = np.float32(-87.33654), np.float32(88.37626)  # float32's range
_JOINT_MAX = 2048  # see _backward_chunk


def _exp_row(v, n, bits):
    """In place: ``v[:n] = exp(v[:n])``; ``bits`` is int32 scratch of length
    >= ``n``. float64 rows use libm's exp (gradcheck needs it exact)."""


@overload(_exp_row, jit_options=dict(fastmath=_OPTS["fastmath"]))
def _exp_row_impl(v, n, bits):
    if v.dtype != types.float32:
        def exact(v, n, bits):
            for t in range(n):
                v[t] = np.exp(v[t])
        return exact
    p0, p1, p2, p3, p4, p5 = _EXP_P

    def vectorised(v, n, bits):
        for t in range(n):
            x = v[t]
            under = x < _EXP_LO  # exp underflows to 0 (and -inf gives 0)
            x = _EXP_LO if under else x
            x = _EXP_HI if x > _EXP_HI else x
            z = np.floor(x * _LOG2E + np.float32(0.5))
            r = x - z * _LN2_HI - z * _LN2_LO
            y = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
            v[t] = y * r * r + r + np.float32(1)
            # 2^z as float32 bits (0.0 where exp underflows)
            bits[t] = 0 if under else (np.int32(z) + np.int32(127)) << np.int32(23)
        scale = bits.view(np.float32)
        for t in range(n):
            v[t] *= scale[t]
    return vectorised


@njit(**_OPTS)
def _position_line(L, code):
    """``(p_0, step)``: the position of token ``t`` is ``p_0 + step * t``."""
    if code == 1:
        return -(L - 1), 1
    if code == 2:
        return 0, -1
    return 0, 0


@njit(**_OPTS)
def _text(xf, xh, i, L, kind, scratch):
    """Text ``i`` as floats: a view of ``xf`` or ``xh`` widened into ``scratch``."""
    if kind == 0:
        return xf[i]
    widen(xh[i], scratch, L, kind)
    return scratch


@njit(**_OPTS)
def _add_positions(S, L, slope, code):
    """``S[t, h] += slope_h * p_t`` for the ``L`` real tokens (positions exact:
    integers converted to the accumulation dtype)."""
    if code == 0:
        return
    p0, step = _position_line(L, code)
    one = S.dtype.type(1)
    for t in range(L):
        p = one * (p0 + step * t)
        for h in range(S.shape[1]):
            S[t, h] += slope[h] * p


@njit(**_OPTS)
def _softmax_columns(S, L, lse_out, bits, top, total):
    """In place: each column of ``S[:L]`` (tokens x heads) -> softmax weights;
    ``lse_out[h]`` set. ``top`` and ``total`` are ``(H,)`` scratch."""
    H = S.shape[1]
    # reductions down a column keep their accumulator in a register (head
    # outer): head-inner loops carried it through memory, 2.5x slower
    for h in range(H):
        m = S[0, h]
        for t in range(1, L):
            m = max(m, S[t, h])
        top[h] = m
    for t in range(L):
        for h in range(H):
            S[t, h] -= top[h]
    _exp_row(S[:L].reshape(L * H), L * H, bits)
    for h in range(H):
        s = S.dtype.type(0)
        for t in range(L):
            s += S[t, h]
        total[h] = s
    for h in range(H):
        lse_out[h] = top[h] + np.log(total[h])
        total[h] = 1 / total[h]
    for t in range(L):
        for h in range(H):
            S[t, h] *= total[h]


@njit(**_OPTS)
def _head_values(pooled, Vt, zh):
    """``zh[h, c] = pooled[h] . Vt[h, c]``: each head's class logits, while
    the text's pooled states are still in cache."""
    acc = pooled.dtype.type
    for h in range(Vt.shape[0]):
        for c in range(Vt.shape[1]):
            s = acc(0)
            for j in range(Vt.shape[2]):
                s += pooled[h, j] * Vt[h, c, j]
            zh[h, c] = s


@njit(**_OPTS)
def pool_text(xt, qT, slope, code, a, lse, pooled, bits, top, total):
    """One text's forward, ``xt`` its ``(L, d)`` real tokens: the logits as one
    ``(L, d) @ (d, H)`` BLAS call into ``a (L, H)``, the softmax down its
    columns (``a`` then holds the weights, ``lse (H,)`` their log-sum-exp) and
    the pooled states as one ``(H, L) @ (L, d)`` call into ``pooled (H, d)``.
    ``bits``, ``top`` and ``total`` are scratch (see :func:`_softmax_columns`)."""
    L = xt.shape[0]
    np.dot(xt, qT.T, a)
    _add_positions(a, L, slope, code)
    _softmax_columns(a, L, lse, bits, top, total)
    np.dot(a.T, xt, pooled)


@njit(**_OPTS)
def _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights, Vt, zh, i,
                  wide, S, bits, top, total):
    """Text ``i``, token-major: logits ``(L, H)`` as one ``(L, d) @ (d, H)``
    BLAS call into scratch (or into ``weights[i]`` when the weights are kept
    for the backward), the softmax down its columns, and the pooled states as
    one ``(H, L) @ (L, d)`` call written straight into ``pooled[i]`` (no
    per-text allocations or transposes)."""
    L = lengths[i]
    xt = _text(xf, xh, i, L, kind, wide)[:L]
    a = weights[i, :L] if weights.shape[0] else S[:L]
    pool_text(xt, qT, slope, code, a, lse[i], pooled[i], bits, top, total)
    if Vt.shape[0]:
        _head_values(pooled[i], Vt, zh[i])


@njit(parallel=True, **_OPTS)
def forward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights, Vt, zh,
            n_chunks):
    """Fill ``pooled (k, H, d)`` and ``lse (k, H)`` for a block of ``k`` texts
    (``xf`` or, for half precision, ``xh``: ``(k, T, d)``), texts in parallel;
    also the weights ``(k, T, H)`` unless ``weights`` is empty (first axis 0),
    and each head's class logits ``zh (k, H, C)`` from the values ``Vt (H, C,
    d)`` unless ``Vt`` is empty."""
    k, T, d = xh.shape if kind else xf.shape
    H = qT.shape[0]
    per = (k + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        wide = np.empty((T if kind else 0, d), dtype=qT.dtype)
        S = np.empty((T, H), dtype=qT.dtype)
        bits = np.empty(T * H, dtype=np.int32)
        top, total = np.empty(H, dtype=qT.dtype), np.empty(H, dtype=qT.dtype)
        for i in range(ch * per, min(k, (ch + 1) * per)):
            _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights,
                          Vt, zh, i, wide, S, bits, top, total)


@njit(**_OPTS)
def forward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights, Vt, zh,
                   n_chunks):
    """:func:`forward` on the calling thread (no threading layer involved)."""
    k, T, d = xh.shape if kind else xf.shape
    H = qT.shape[0]
    wide = np.empty((T if kind else 0, d), dtype=qT.dtype)
    S = np.empty((T, H), dtype=qT.dtype)
    bits = np.empty(T * H, dtype=np.int32)
    top, total = np.empty(H, dtype=qT.dtype), np.empty(H, dtype=qT.dtype)
    for i in range(k):
        _forward_text(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights, Vt,
                      zh, i, wide, S, bits, top, total)


@njit(**_OPTS)
def _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled, weights,
                    Vt, dzh, start, stop, dq, dslope, dV):
    """Texts ``start:stop``, token-major: ``g_th = a_th (dA_th - pooled_h .
    dp_h)``, ``dslope_h += sum_t g_th p_t`` and ``dQ^T += g^T x``.

    ``dp`` is ``dpooled[i]``, or, with the values ``Vt (H, C, d)`` given (first
    axis not 0), formed per text from the head logits' gradient ``dzh`` as
    ``dp_h = sum_c dzh_hc Vt_hc``, with ``dV_hc += dzh_hc pooled_h``.

    With the forward's ``weights`` kept (first axis not 0), ``dA = x dp^T`` is
    the one product before ``g``. Without them the weights are recomputed from
    the saved log-sum-exp (logits, then the exponentials).

    ``dp^T`` enters BLAS as a transposed view and ``pooled_h . dp_h`` is formed
    from ``dA`` (below): copying ``dp`` transposed into a ``(d, H)`` operand and
    the ``H x d`` dot products took a third of the kernel at study scale (176
    stacked heads, d 576, 100 texts of 16-128 tokens: 39.0 -> 27.9 ms with
    the weights kept, 50.0 -> 39.2 ms without)."""
    T, d = (xh.shape[1], xh.shape[2]) if kind else (xf.shape[1], xf.shape[2])
    H = qT.shape[0]
    acc = qT.dtype.type
    kept = weights.shape[0] > 0
    with_values = Vt.shape[0] > 0
    dq[:, :] = 0
    dslope[:] = 0
    dV[:, :, :] = 0
    formed = np.empty((H if with_values else 0, d), dtype=qT.dtype)
    wide = np.empty((T if kind else 0, d), dtype=qT.dtype)
    G = np.empty((T, H), dtype=qT.dtype)
    dA = np.empty((T, H), dtype=qT.dtype)
    # recomputed weights, small (H, d): one call over [query | dpooled^T]
    # copied side by side and c_h from the pooled states, where per-call and
    # per-loop overheads dominate (bench_fit's tiny step: 0.83 ms this way,
    # 0.87-0.90 with the large case's way); larger: two calls on transposed
    # views, c_h from dA (_dlogits)
    joint = not kept and H * d <= _JOINT_MAX
    logits = np.empty((0 if kept or joint else T, H), dtype=qT.dtype)
    w = np.empty((d, 2 * H if joint else 0), dtype=qT.dtype)
    both = np.empty((T if joint else 0, 2 * H), dtype=qT.dtype)
    if joint:
        for j in range(d):
            for h in range(H):
                w[j, h] = qT[h, j]
    bits = np.empty(T * H, dtype=np.int32)
    c = np.empty(H, dtype=qT.dtype)
    norm = np.empty(H, dtype=qT.dtype)
    part = np.empty((H, d), dtype=qT.dtype)
    for i in range(start, stop):
        L = lengths[i]
        xt = _text(xf, xh, i, L, kind, wide)[:L]
        if with_values:
            dp = formed
            _value_grads(pooled[i], Vt, dzh[i], dp, dV)
        else:
            dp = dpooled[i]
        b = dA[:L]
        g = G[:L]
        if kept:
            np.dot(xt, dp.T, b)
            _dlogits(weights[i, :L], b, g, c, norm)
        elif joint:
            for j in range(d):
                for h in range(H):
                    w[j, H + h] = dp[h, j]
            np.dot(xt, w, both[:L])
            for h in range(H):
                s = acc(0)
                for j in range(d):
                    s += pooled[i, h, j] * dp[h, j]
                c[h] = s
            for t in range(L):
                for h in range(H):
                    g[t, h] = both[t, h] - lse[i, h]
            _add_positions(g, L, slope, code)
            _exp_row(g.reshape(L * H), L * H, bits)
            for t in range(L):
                for h in range(H):
                    g[t, h] *= both[t, H + h] - c[h]
        else:
            np.dot(xt, dp.T, b)
            np.dot(xt, qT.T, logits[:L])
            for t in range(L):
                for h in range(H):
                    g[t, h] = logits[t, h] - lse[i, h]
            _add_positions(g, L, slope, code)
            _exp_row(g.reshape(L * H), L * H, bits)
            _dlogits(g, b, g, c, norm)
        query_grads(xt, g, code, dslope, dq, part)


@njit(**_OPTS)
def query_grads(xt, g, code, dslope, dq, part):
    """Add one text's ``dslope_h += sum_t g_th p_t`` and ``dQ^T += g^T x``
    (``part (H, d)`` scratch), ``g (L, H)`` its logits' gradient."""
    L, H = g.shape
    acc = g.dtype.type
    if code:
        p0, step = _position_line(L, code)
        for h in range(H):
            s = acc(0)
            for t in range(L):
                s += g[t, h] * acc(p0 + step * t)
            dslope[h] += s
    np.dot(g.T, xt, part)
    dq += part


@njit(**_OPTS)
def _dlogits(a, b, g, c, norm):
    """``g_th = a_th (b_th - c_h)`` (``g`` may be ``a``), with ``c_h = pooled_h .
    dp_h`` formed as ``sum_t a_th b_th / sum_t a_th`` from ``b = dA``: L x H
    products instead of H x d, and the division keeps ``sum_t g_th`` at zero
    where recomputed weights are off by a rounding (logits of 1e4)."""
    L, H = a.shape
    for h in range(H):
        c[h] = 0
        norm[h] = 0
    for t in range(L):
        for h in range(H):
            c[h] += a[t, h] * b[t, h]
            norm[h] += a[t, h]
    for h in range(H):
        c[h] /= norm[h]
    for t in range(L):
        for h in range(H):
            g[t, h] = a[t, h] * (b[t, h] - c[h])


@njit(**_OPTS)
def _value_grads(pooled, Vt, dz, dp, dV):
    """One text: ``dp_h = sum_c dz_hc Vt_hc`` and ``dV_hc += dz_hc pooled_h``."""
    H, C, d = Vt.shape
    for h in range(H):
        for j in range(d):
            dp[h, j] = 0
        for c in range(C):
            g = dz[h, c]
            for j in range(d):
                dp[h, j] += g * Vt[h, c, j]
                dV[h, c, j] += g * pooled[h, j]


@njit(parallel=True, **_OPTS)
def backward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled, weights, Vt,
             dzh, dq_parts, dslope_parts, dV_parts):
    """Per-chunk sums ``dQ^T (n_chunks, H, d)``, ``dslope (n_chunks, H)`` and
    (with values) ``dV (n_chunks, H, C, d)``;
    the chunks (runs of texts) run in parallel."""
    k = lengths.shape[0]
    n_chunks = dq_parts.shape[0]
    per = (k + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                        weights, Vt, dzh, ch * per, min(k, (ch + 1) * per), dq_parts[ch],
                        dslope_parts[ch], dV_parts[ch])


@njit(**_OPTS)
def backward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                    weights, Vt, dzh, dq_parts, dslope_parts, dV_parts):
    """:func:`backward` on the calling thread, one chunk."""
    _backward_chunk(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                    weights, Vt, dzh, 0, lengths.shape[0], dq_parts[0], dslope_parts[0],
                    dV_parts[0])


@njit(cache=True, nogil=True, error_model="numpy")
def adamw_update(p, g, m, v, weight1, beta2, weight2, bc2_sqrt, eps, neg_step_size):
    """One AdamW update (no weight decay) of flat arrays, in place, in their
    dtype (the scalars come in it too): torch's single-tensor formulas

        m <- lerp(m, g, weight1),   v <- v beta2 + weight2 g g,
        p <- p + neg_step_size * m / (sqrt(v) / bc2_sqrt + eps),

    in one pass instead of a dozen torch operators (for :mod:`._adamw` on
    CPU). No fastmath: the same operations in the same order as torch."""
    one = p.dtype.type(1)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i]
        if weight1 < 0.5:
            mi = mi + weight1 * (gi - mi)
        else:
            mi = gi - (gi - mi) * (one - weight1)
        m[i] = mi
        vi = v[i] * beta2 + weight2 * gi * gi
        v[i] = vi
        p[i] = p[i] + neg_step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


@njit(**_OPTS)
def row_loss_grad(z, yi, wi, scale, grad):
    """One text's ``w_i loss_i`` (float64) from its logits ``z (C,)`` (one
    entry: binary, sigmoid; else softmax) and, into ``grad (C,)``, the
    gradient of ``loss_i`` with respect to them times ``scale``."""
    C = z.shape[0]
    if C == 1:
        v = np.float64(z[0])
        t = np.float64(yi)
        grad[0] = (0.5 * (1.0 + np.tanh(0.5 * v)) - t) * scale
        return wi * (max(v, 0.0) - v * t + np.log1p(np.exp(-abs(v))))
    top = np.float64(z[0])
    for c in range(1, C):
        top = max(top, np.float64(z[c]))
    s = 0.0
    for c in range(C):
        s += np.exp(np.float64(z[c]) - top)
    lse = top + np.log(s)
    for c in range(C):
        grad[c] = np.exp(np.float64(z[c]) - lse) * scale
    grad[yi] -= scale
    return wi * (lse - z[yi])


@njit(**_OPTS)
def total_weight(w):
    """``sum_i w_i`` in float64 (at least the dtype's smallest normal)."""
    total = 0.0
    for i in range(w.shape[0]):
        total += w[i]
    return max(total, np.finfo(w.dtype).tiny)
