"""The objective and gradients of one attention probe without autograd (CPU).

On small data a training step is almost all overhead: 200 texts x 40 tokens
x d 32 are 1.3 million multiply-adds per step (tens of microseconds of
arithmetic), yet the autograd step took 1.55 ms, and the two numba kernels
only about half of it. The rest was torch's per-operator dispatch, the
autograd graph and the tensor conversions around the kernels. Here the same
objective (:func:`._training.objectives`) and its gradients are formed by a
numba kernel and a few numpy operations, and the gradients are handed to the
parameters for the optimizer:

    logits = pooled V + b,   G = dloss/dlogits (softmax or sigmoid, weighted),
    dV = pooled^T G + wd V,   db = sum_i G_i,   dpooled = G V^T,
    dQ, dslope as the backward kernel forms them (+ wd_q Q).

The whole step runs text by text in one kernel pass
(:mod:`._fused_step_numba`): each text goes forward, through its loss (which
needs only the batch's total weight from the other texts) and back while its
activations are in cache, so they are read, and half-precision ones widened,
once per step instead of twice. Against the earlier two passes (the forward
kernel over every block, the loss and the value products as numpy GEMMs over
all pooled states, then the backward kernel), measured on one thread: the
speed benchmark's step (1,500 texts x 16-128 tokens x d 384, 8 heads, 10
classes) 61.4 -> 48.6 ms with float16 activations and 77.7 -> 59.2 ms with
float32; 1,000 texts at d 128, 26.0 -> 15.3 ms; 200 texts x 16-64 tokens x
d 32, 0.72 -> 0.61 ms; no size tried was slower.

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

    # A penalty on the attention's entropy, ``entropy_penalty * sum_i w_i
    # mean_h H_ih / sum_i w_i`` with ``H_ih = -sum_t a_th log a_th``: a
    # research hook that issue 14's candidates benchmark sets on this class
    # (benchmarks/study/candidates_refit.py); no estimator parameter reaches it.
    entropy_penalty = 0.0

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
        H = value.shape[0]
        dtype = value.dtype
        qT = np.ascontiguousarray(query.T)
        slope = (m.slope.detach().numpy() if self.code
                 else np.zeros(H, dtype))
        loss, d_query_t, d_slope, d_values, d_bias = self._one_pass(
            batch, y.numpy(), w.numpy().astype(dtype, copy=False), qT, slope, value)
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
        m.bias.grad = torch.from_numpy(d_bias)
        return torch.tensor(objective, dtype=torch.float64)

    def _one_pass(self, batch, y, w, qT, slope, value):
        """``(loss, dQ^T, dslope, dV (H, d, C), dbias)``, block by block
        through the one-pass step kernel (the loss and gradients those of
        the whole batch's weighted mean)."""
        Vt = np.ascontiguousarray(value.transpose(0, 2, 1))  # (H, C, d)
        bias = self.module.bias.detach().numpy()
        total = self.backend.total_weight(w)
        H, d, C = value.shape
        loss, row = 0.0, 0
        d_query_t = np.zeros((H, d), value.dtype)
        d_slope = np.zeros(H, value.dtype)
        d_values_t = np.zeros((H, C, d), value.dtype)
        d_bias = np.zeros(C, value.dtype)
        for block in batch.blocks:
            k = len(block)
            part, dq, ds, dv, db = self.backend.step_arrays(
                self.backend.block_arrays(block), qT, slope, self.code, Vt, bias,
                y[row:row + k], w[row:row + k], total, self.entropy_penalty)
            loss += part
            d_query_t += dq
            d_slope += ds
            d_values_t += dv
            d_bias += db
            row += k
        return (loss / total, d_query_t, d_slope,
                np.ascontiguousarray(d_values_t.transpose(0, 2, 1)), d_bias)
