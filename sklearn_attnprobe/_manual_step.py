"""The objective and gradients of one attention probe without autograd (CPU).

On small data a training step is almost all overhead: 200 texts x 40 tokens
x d 32 are 1.3 million multiply-adds per step (tens of microseconds of
arithmetic), yet the autograd step took 1.55 ms, and the two numba kernels
only about half of it. The rest was torch's per-operator dispatch, the
autograd graph and the tensor conversions around the kernels. Here the same
objective (:func:`._training.objectives`) and its gradients are formed in
numpy around the same kernels (:mod:`._fused_numba`), and the gradients are
handed to the parameters for the optimizer:

    logits = pooled V + b,   G = dloss/dlogits (softmax or sigmoid, weighted),
    dV = pooled^T G + wd V,   db = sum_i G_i,   dpooled = G V^T,
    dQ, dslope from the backward kernel (+ wd_q Q);

where the pooled states of a batch are large, the products with the values
(``pooled V``, ``dV`` and ``dpooled``) run inside the kernels, text by text
while a text's pooled states are in cache, as
:func:`._fused.fused_head_logits` does for the CV stacks. In numpy they are
three thin GEMMs over all pooled states: on the speed benchmark's step
(1,500 texts, d 384, 8 heads, 10 classes) 9-11 ms of a 65-70 ms step, but
faster than the kernels' per-text products where all pooled states fit in
cache (``IN_KERNEL_MIN_POOLED_BYTES``).

With it (and the kernel and AdamW changes made with it) the step took 0.79
ms in ``bench_fit.py`` (0.1.0: 2.38 ms in the same run).

The plain AdamW loop uses it for a single :class:`~._modules.AttentionProbeModule`
whose blocks run on the numba backend; everything else (stacked CV modules,
GPU, the reference kernels, skorch callbacks) keeps autograd. The tests
check it against the autograd objective and gradients.
"""

import numpy as np
import torch

from . import _fused
from ._modules import AttentionProbeModule, _penalty, query_decay

# Pooled states (texts x heads x d) of at least this many bytes take the value
# products inside the kernels; smaller ones, which stay in cache, one numpy
# GEMM each way (bench_fit.py's step, 200 texts x 8 heads x d 32, 200 KB:
# 0.82 ms a step against 0.95 ms in the kernels; the speed benchmark's step,
# 1,500 x 8 x 384, 18 MB: the kernels' way 9-11 ms faster).
IN_KERNEL_MIN_POOLED_BYTES = 1 << 21


def manual_objective(module, weight_decay):
    """A callable ``(batch, y, w) -> objective`` that also sets the
    parameters' ``.grad``, or None where autograd must run (see module doc)."""
    if type(module) is not AttentionProbeModule or torch.is_tensor(weight_decay):
        return None
    params = list(module.parameters())
    if any(p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64)
           for p in params):
        return None
    backend = _fused.load_backend("numba")
    if backend is None:
        return None
    return _ManualObjective(module, float(weight_decay), backend)


class _ManualObjective:
    """The penalised objective of one module (decays fixed at construction),
    evaluated batch by batch with its gradients; see the module doc."""

    def __init__(self, module, weight_decay, backend):
        self.module = module
        self.backend = backend
        self.code = _fused.POSITION_CODES[module.position]
        self.wd_value = weight_decay
        self.wd_query = float(query_decay(module.query_weight_decay, weight_decay))

    def blas_context(self):
        """Hold BLAS to one thread around the whole loop (the kernels' rule,
        set once per fit instead of once per step: 0.03 ms a step here)."""
        return self.backend.one_blas_thread()

    def __call__(self, batch, y, w):
        """The objective of ``batch`` (a 0-d float64 tensor), gradients set;
        None (nothing set) when a block is not for the numba backend. Call
        inside :meth:`blas_context`."""
        m = self.module
        if any(_fused.backend_for(b.x) is not self.backend
               or _fused.accumulation_dtype(b.x.dtype) != m.value.dtype
               for b in batch.blocks):
            return None
        query = m.query.detach().numpy()
        value = m.value.detach().numpy()
        H, d, C = value.shape
        dtype = value.dtype
        qT = np.ascontiguousarray(query.T)
        # the values as the kernels take them, (H, C, d): each head's class
        # logits, dpooled and dV are formed text by text while its pooled
        # states are in cache (no numpy pass over all the pooled states)
        Vt = np.ascontiguousarray(value.transpose(0, 2, 1))
        # ... unless all pooled states fit in cache: then one numpy GEMM over
        # them beats the per-text products (see IN_KERNEL_MIN_POOLED_BYTES)
        in_kernel = len(batch) * H * d * dtype.itemsize >= IN_KERNEL_MIN_POOLED_BYTES
        values = value.reshape(H * d, C)
        slope = (m.slope.detach().numpy() if self.code
                 else np.zeros(H, dtype))
        logits = np.empty((len(batch), C), dtype)
        saved, row = [], 0
        for block in batch.blocks:
            k = len(block)
            keep = self.backend.keeps_weights(block.x.shape[1], d)
            pooled, lse, weights, zh = self.backend.forward_arrays(
                self.backend.block_arrays(block), qT, slope, self.code, keep,
                Vt=Vt if in_kernel else None)
            if in_kernel:
                np.sum(zh, axis=1, out=logits[row:row + k])
            else:
                np.matmul(pooled.reshape(k, H * d).astype(dtype, copy=False), values,
                          out=logits[row:row + k])
            saved.append((block, pooled, lse, weights, row))
            row += k
        logits += m.bias.detach().numpy()
        grad = np.empty_like(logits)
        loss = self.backend.weighted_log_loss_grad(logits, y.numpy(),
                                                   w.numpy().astype(dtype, copy=False), grad)
        d_query_t = np.zeros((H, d), dtype)
        d_slope = np.zeros(H, dtype)
        # the value gradient as the kernels accumulate it, or as the GEMM does
        d_values_acc = np.zeros((H, C, d) if in_kernel else (H * d, C), dtype)
        for block, pooled, lse, weights, row in saved:
            k = len(block)
            g = grad[row:row + k]
            if in_kernel:
                # every head's class logits get the probe's logit gradient
                dzh = np.ascontiguousarray(np.broadcast_to(g[:, None, :], (k, H, C)))
                dq, ds, dv = self.backend.backward_arrays(
                    self.backend.block_arrays(block), qT, slope, self.code, pooled, lse,
                    None, weights, Vt=Vt, dzh=dzh)
                d_values_acc += dv
            else:
                flat = pooled.reshape(k, H * d).astype(dtype, copy=False)
                d_values_acc += flat.T @ g
                d_pooled = (g @ values.T).reshape(k, H, d).astype(pooled.dtype, copy=False)
                dq, ds, _ = self.backend.backward_arrays(
                    self.backend.block_arrays(block), qT, slope, self.code, pooled, lse,
                    d_pooled, weights)
            d_query_t += dq
            d_slope += ds
        d_values = (np.ascontiguousarray(d_values_acc.transpose(0, 2, 1)) if in_kernel
                    else d_values_acc.reshape(H, d, C))  # (H, d, C)
        d_query = d_query_t.T
        objective = float(loss)
        if self.wd_value or self.wd_query:
            objective += _penalty(self.wd_query, self.wd_value,
                                  float(np.vdot(query, query)), float(np.vdot(value, value)))
            d_values += self.wd_value * value
            d_query = d_query + self.wd_query * query
        m.query.grad = torch.from_numpy(np.ascontiguousarray(d_query, dtype))
        m.slope.grad = torch.from_numpy(d_slope) if self.code else None
        m.value.grad = torch.from_numpy(d_values)
        m.bias.grad = torch.from_numpy(grad.sum(axis=0))
        return torch.tensor(objective, dtype=torch.float64)
