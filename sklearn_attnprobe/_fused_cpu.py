"""The CPU backend of :mod:`._fused`: torch tensors in, numba kernels run.

Importing this module imports numba (an ImportError here sends the caller to
the reference path). The kernels run serially on one torch thread and over
``torch.get_num_threads()`` chunks of texts otherwise. Their products are
BLAS calls (numba's ``np.dot``, through SciPy's BLAS), held to one BLAS
thread while a kernel runs: the parallelism is ours, over texts, and a
one-thread probe stays on one thread.
"""

import contextlib
import functools
import threading

import numba
import numpy as np
import torch

from . import _fused_numba as kernels
from . import _fused_step_numba as step_kernels
from . import _scratch

_KIND = {torch.float16: 1, torch.bfloat16: 2}
adamw_update = kernels.adamw_update
total_weight = kernels.total_weight


@functools.cache
def _blas_libraries():
    """threadpoolctl's handles on the loaded BLAS libraries (found once)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a scikit-learn dependency
        return ()
    return tuple(lib for lib in ThreadpoolController().lib_controllers
                 if lib.user_api == "blas")


_blas_state = threading.local()


@contextlib.contextmanager
def one_blas_thread():
    """BLAS held to one thread inside (re-entrant: only the outermost call
    sets and restores the libraries' thread counts)."""
    depth = getattr(_blas_state, "depth", 0)
    libs = _blas_libraries() if depth == 0 else ()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    _blas_state.depth = depth + 1
    try:
        yield
    finally:
        _blas_state.depth = depth
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def _threads():
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _kernel(parallel, serial):
    """``(kernel, n_chunks)``: the ``prange`` kernel over torch's thread count
    (numba's threads set to it), or the serial one on a single thread."""
    n = _threads()
    if n == 1:
        return serial, 1
    numba.set_num_threads(n)
    return parallel, n


def _arrays(x, lengths):
    """``(xf, xh, kind, lengths)``: the block as floats or as 16-bit
    patterns, and its lengths, as numpy arrays (views, no copies)."""
    kind = _KIND.get(x.dtype, 0)
    lengths = _np(lengths)
    if kind:
        xh = x.detach().view(torch.int16).numpy().view(np.uint16)
        return np.empty((xh.shape[0], 0, 0), np.float32), xh, kind, lengths
    xf = x.detach().numpy()
    return xf, np.empty((xf.shape[0], 0, 0), np.uint16), 0, lengths


def block_arrays(block):
    """:func:`_arrays` of a packed block, kept in the block's cache."""
    if "numba_arrays" not in block._cache:
        block._cache["numba_arrays"] = _arrays(block.x, block.lengths)
    return block._cache["numba_arrays"]


def _np(t):
    return np.ascontiguousarray(t.detach().cpu().numpy())


def keeps_weights(T, d):
    """Whether a training forward keeps its ``(k, T, H)`` weights for the
    backward, which then skips recomputing the logits (half of its first
    product's columns and the exponentials).

    On CPU the kernels are arithmetic-bound (at 160 stacked heads they ran at
    about 90% of the BLAS rate of the same products), so the recomputation
    costs time, not bandwidth. Kept only where the weights take no more memory
    than the pooled states the backward keeps anyway (``(k, H, d)``): padded
    length ``T <= d``.
    """
    return T <= d


def _none(dtype):
    return np.empty((0, 0, 0), dtype=dtype)


def forward_arrays(arrays, qT, slope, code, keep=False, Vt=None):
    """A block given as :func:`_arrays` through the forward kernel:
    ``(pooled (k, H, d), lse (k, H), weights (k, T, H) or None, zh (k, H, C)
    or None)``. ``qT`` is the ``(H, d)`` query in the accumulation dtype; the
    weights are kept with ``keep``; with the values ``Vt (H, C, d)`` each
    head's class logits ``zh`` are formed too. Call inside
    :func:`one_blas_thread`."""
    xf, xh, kind, lengths = arrays
    k, T, d = (xh if kind else xf).shape
    H = qT.shape[0]
    dtype = qT.dtype
    pooled = _scratch.empty((k, H, d), dtype)
    lse = np.empty((k, H), dtype=dtype)
    weights = _scratch.empty((k, T, H), dtype) if keep else _none(dtype)
    if Vt is None:
        Vt, zh = _none(dtype), _none(dtype)
    else:
        zh = np.empty((k, H, Vt.shape[1]), dtype=dtype)
    run, n = _kernel(kernels.forward, kernels.forward_serial)
    run(xf, xh, lengths, kind, qT, slope, code, pooled, lse, weights, Vt, zh, n)
    return pooled, lse, (weights if keep else None), (zh if Vt.shape[0] else None)


def backward_arrays(arrays, qT, slope, code, pooled, lse, dpooled, weights=None, Vt=None,
                    dzh=None):
    """``dQ^T (H, d)``, ``dslope (H,)`` and ``dV (H, C, d)`` (None without
    values) of a block given as :func:`_arrays`: from ``dpooled`` (contiguous,
    in the accumulation dtype), or, with the values ``Vt``, from each head's
    class-logit gradient ``dzh (k, H, C)``. ``weights`` as kept by
    :func:`forward_arrays`, or None to recompute them. Call inside
    :func:`one_blas_thread`."""
    xf, xh, kind, lengths = arrays
    H, d = qT.shape
    dtype = qT.dtype
    weights = _none(dtype) if weights is None else weights
    run, n = _kernel(kernels.backward, kernels.backward_serial)
    dq = np.empty((n, H, d), dtype=dtype)
    ds = np.empty((n, H), dtype=dtype)
    if Vt is None:
        Vt, dzh, dV = _none(dtype), _none(dtype), np.empty((n, 0, 0, 0), dtype)
    else:
        dpooled = _none(dtype)
        dV = np.empty((n, *Vt.shape), dtype=dtype)
    run(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled, weights, Vt, dzh,
        dq, ds, dV)
    return dq.sum(0), ds.sum(0), (dV.sum(0) if Vt.shape[0] else None)


def step_arrays(arrays, qT, slope, code, Vt, bias, y, w, total, entropy=0.0):
    """A single probe's training step over a block given as :func:`_arrays`
    (:mod:`._fused_step_numba`): ``(sum_i w_i loss_i, dQ^T (H, d), dslope
    (H,), dV (H, C, d), dbias (C,))``, the gradients those of the batch's
    weighted mean loss (``total``: the batch's summed weight, see
    :func:`total_weight`). Call inside :func:`one_blas_thread`."""
    xf, xh, kind, lengths = arrays
    H, d = qT.shape
    dtype = qT.dtype
    run, n = _kernel(step_kernels.step, step_kernels.step_serial)
    dq = np.empty((n, H, d), dtype=dtype)
    ds = np.empty((n, H), dtype=dtype)
    dV = np.empty((n, *Vt.shape), dtype=dtype)
    db = np.empty((n, Vt.shape[1]), dtype=dtype)
    loss = np.empty(n, dtype=np.float64)
    run(xf, xh, lengths, kind, qT, slope, code, Vt, bias, y, w, total, entropy, dq, ds, dV, db,
        loss)
    return float(loss.sum()), dq.sum(0), ds.sum(0), dV.sum(0), db.sum(0)


def _tensor(a):
    return None if a is None else torch.from_numpy(a)


def forward(x, lengths, query, slope, code, keep_weights=False, value_t=None):
    """Pooled states, log-sum-exp, the weights kept for :func:`backward` (with
    ``keep_weights``, where :func:`keeps_weights` allows) and, given the
    values ``value_t (H, C, d)``, each head's class logits, as tensors."""
    keep = keep_weights and keeps_weights(x.shape[1], x.shape[2])
    Vt = None if value_t is None else _np(value_t)
    with one_blas_thread():
        out = forward_arrays(_arrays(x, lengths), _np(query.T), _np(slope), code, keep, Vt)
    return tuple(_tensor(a) for a in out)


def backward(x, lengths, query, slope, code, pooled, lse, dpooled, weights=None,
             value_t=None, dzh=None):
    """``(dQ (d, H), dslope (H,), dV (H, C, d) or None)``: from ``dpooled``, or
    from ``dzh`` given the values ``value_t``."""
    qT = _np(query.T)
    if value_t is not None:
        Vt, dzh, dpooled = _np(value_t), _np(dzh.to(query.dtype)), None
    else:
        Vt, dpooled = None, _np(dpooled.to(query.dtype))
    with one_blas_thread():
        dq, ds, dV = backward_arrays(_arrays(x, lengths), qT, _np(slope), code,
                                     pooled.numpy(), lse.numpy(), dpooled,
                                     None if weights is None else weights.numpy(), Vt, dzh)
    return torch.from_numpy(dq.T.copy()), torch.from_numpy(ds), _tensor(dV)
