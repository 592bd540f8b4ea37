"""The CUDA backend of :mod:`._fused`: Triton kernels.

One program per text. The forward pass walks the text in tiles of ``BT``
tokens; each tile of activations is loaded ``BD`` columns at a time, its
``(BT, BH)`` logits formed by ``tl.dot`` against the query tile (heads, and the
stacked CV models folded into them, are the small inner dimension ``BH``), and
an online softmax (running maximum and sum per head) rescales the pooled
accumulator as the tiles pass. The accumulator lives in the output row
``pooled[i]`` (``H x d`` floats, cache-resident): ``d`` of several thousand
does not fit in registers. The backward pass recomputes the logits from the
saved log-sum-exp, forms ``dlogit`` and adds each text's ``dQ`` and ``dslope``
into the outputs atomically.

Half-precision activations are widened in registers and multiplied in TF32
(exact for float16 and bfloat16 values; query and gradients keep float32's
range); float32 activations are multiplied in full float32 precision.

Tested on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _positions(offs_t, L, CODE: tl.constexpr):
    t = offs_t.to(tl.float32)
    if CODE == 1:
        return t - (L - 1).to(tl.float32)
    if CODE == 2:
        return -t
    return t * 0.0


@triton.jit
def _tile_logits(x_ptr, q_ptr, i, offs_t, tmask, offs_h, hmask, stride_k, stride_t, d, H,
                 BD: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr,
                 PRECISION: tl.constexpr):
    s = tl.zeros([BT, BH], dtype=tl.float32)
    for d0 in range(0, d, BD):
        offs_d = d0 + tl.arange(0, BD)
        dmask = offs_d < d
        xt = tl.load(x_ptr + i * stride_k + offs_t[:, None] * stride_t + offs_d[None, :],
                     mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        qt = tl.load(q_ptr + offs_d[:, None] * H + offs_h[None, :],
                     mask=dmask[:, None] & hmask[None, :], other=0.0)
        s += tl.dot(xt, qt, input_precision=PRECISION)
    return s


@triton.jit
def _forward_kernel(x_ptr, len_ptr, q_ptr, slope_ptr, pooled_ptr, lse_ptr,
                    d, H, stride_k, stride_t,
                    CODE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                    BH: tl.constexpr, PRECISION: tl.constexpr):
    i = tl.program_id(0)
    L = tl.load(len_ptr + i)
    offs_h = tl.arange(0, BH)
    hmask = offs_h < H
    slope = tl.load(slope_ptr + offs_h, mask=hmask, other=0.0)
    m = tl.full([BH], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BH], dtype=tl.float32)
    out = pooled_ptr + i * H * d
    for t0 in range(0, L, BT):
        offs_t = t0 + tl.arange(0, BT)
        tmask = offs_t < L
        s = _tile_logits(x_ptr, q_ptr, i, offs_t, tmask, offs_h, hmask, stride_k, stride_t,
                         d, H, BD, BT, BH, PRECISION)
        s += slope[None, :] * _positions(offs_t, L, CODE)[:, None]
        s = tl.where(tmask[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[None, :])
        total = total * alpha + tl.sum(p, axis=0)
        for d0 in range(0, d, BD):
            offs_d = d0 + tl.arange(0, BD)
            dmask = offs_d < d
            xt = tl.load(x_ptr + i * stride_k + offs_t[:, None] * stride_t + offs_d[None, :],
                         mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            ptrs = out + offs_h[:, None] * d + offs_d[None, :]
            omask = hmask[:, None] & dmask[None, :]
            acc = tl.load(ptrs, mask=omask, other=0.0) * alpha[:, None]
            acc += tl.dot(tl.trans(p), xt, input_precision=PRECISION)
            tl.store(ptrs, acc, mask=omask)
        m = m_new
    inv = 1.0 / total
    for d0 in range(0, d, BD):
        offs_d = d0 + tl.arange(0, BD)
        ptrs = out + offs_h[:, None] * d + offs_d[None, :]
        omask = hmask[:, None] & (offs_d < d)[None, :]
        tl.store(ptrs, tl.load(ptrs, mask=omask, other=0.0) * inv[:, None], mask=omask)
    tl.store(lse_ptr + i * H + offs_h, m + tl.log(total), mask=hmask)


@triton.jit
def _backward_kernel(x_ptr, len_ptr, q_ptr, slope_ptr, pooled_ptr, lse_ptr, dp_ptr,
                     dq_ptr, dslope_ptr, d, H, stride_k, stride_t,
                     CODE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                     BH: tl.constexpr, PRECISION: tl.constexpr):
    i = tl.program_id(0)
    L = tl.load(len_ptr + i)
    offs_h = tl.arange(0, BH)
    hmask = offs_h < H
    slope = tl.load(slope_ptr + offs_h, mask=hmask, other=0.0)
    lse = tl.load(lse_ptr + i * H + offs_h, mask=hmask, other=0.0)
    c = tl.zeros([BH], dtype=tl.float32)
    for d0 in range(0, d, BD):
        offs_d = d0 + tl.arange(0, BD)
        omask = hmask[:, None] & (offs_d < d)[None, :]
        rows = i * H * d + offs_h[:, None] * d + offs_d[None, :]
        c += tl.sum(tl.load(pooled_ptr + rows, mask=omask, other=0.0)
                    * tl.load(dp_ptr + rows, mask=omask, other=0.0), axis=1)
    dslope = tl.zeros([BH], dtype=tl.float32)
    for t0 in range(0, L, BT):
        offs_t = t0 + tl.arange(0, BT)
        tmask = offs_t < L
        s = tl.zeros([BT, BH], dtype=tl.float32)
        g = tl.zeros([BT, BH], dtype=tl.float32)
        for d0 in range(0, d, BD):
            offs_d = d0 + tl.arange(0, BD)
            dmask = offs_d < d
            xt = tl.load(x_ptr + i * stride_k + offs_t[:, None] * stride_t + offs_d[None, :],
                         mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            qt = tl.load(q_ptr + offs_d[:, None] * H + offs_h[None, :],
                         mask=dmask[:, None] & hmask[None, :], other=0.0)
            dpt = tl.load(dp_ptr + i * H * d + offs_h[None, :] * d + offs_d[:, None],
                          mask=dmask[:, None] & hmask[None, :], other=0.0)
            s += tl.dot(xt, qt, input_precision=PRECISION)
            g += tl.dot(xt, dpt, input_precision=PRECISION)
        pos = _positions(offs_t, L, CODE)
        s += slope[None, :] * pos[:, None]
        a = tl.where(tmask[:, None], tl.exp(s - lse[None, :]), 0.0)
        dl = a * (g - c[None, :])
        dslope += tl.sum(dl * pos[:, None], axis=0)
        for d0 in range(0, d, BD):
            offs_d = d0 + tl.arange(0, BD)
            dmask = offs_d < d
            xt = tl.load(x_ptr + i * stride_k + offs_t[:, None] * stride_t + offs_d[None, :],
                         mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            part = tl.dot(tl.trans(xt), dl, input_precision=PRECISION)  # (BD, BH)
            tl.atomic_add(dq_ptr + offs_d[:, None] * H + offs_h[None, :], part,
                          mask=dmask[:, None] & hmask[None, :])
    tl.atomic_add(dslope_ptr + offs_h, dslope, mask=hmask)


def _config(x, H):
    BH = max(16, triton.next_power_of_2(H))
    BD = 64 if BH <= 32 else 32
    BT = 32 if BH <= 64 else 16
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    return dict(BT=BT, BD=BD, BH=BH, PRECISION=precision)


def forward(x, lengths, query, slope, code, keep_weights=False):
    """Pooled states and log-sum-exp, as :func:`._fused_cpu.forward` returns
    them; the weights are never kept on the GPU (memory-bound there: the
    backward recomputes them) and there is no value-projection form."""
    k, _, d = x.shape
    H = query.shape[1]
    pooled = torch.zeros(k, H, d, dtype=torch.float32, device=x.device)
    lse = torch.empty(k, H, dtype=torch.float32, device=x.device)
    _forward_kernel[(k,)](x, lengths, query.contiguous(), slope.contiguous(), pooled, lse,
                          d, H, x.stride(0), x.stride(1), CODE=code, **_config(x, H))
    return pooled, lse, None, None


def backward(x, lengths, query, slope, code, pooled, lse, dpooled, weights=None):
    k, _, d = x.shape
    H = query.shape[1]
    dq = torch.zeros(d, H, dtype=torch.float32, device=x.device)
    dslope = torch.zeros(H, dtype=torch.float32, device=x.device)
    _backward_kernel[(k,)](x, lengths, query.contiguous(), slope.contiguous(), pooled, lse,
                           dpooled.float().contiguous(), dq, dslope, d, H, x.stride(0),
                           x.stride(1), CODE=code, **_config(x, H))
    return dq.to(query.dtype), dslope.to(query.dtype), None
