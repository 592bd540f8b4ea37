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

_KIND = {torch.float16: 1, torch.bfloat16: 2}
adamw_update = kernels.adamw_update
weighted_log_loss_grad = kernels.weighted_log_loss_grad


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


def forward_arrays(arrays, qT, slope, code):
    """``pooled (k, H, d)`` and ``lse (k, H)`` of a block given as
    :func:`_arrays`; ``qT`` is the ``(H, d)`` query, in the accumulation dtype.
    Call inside :func:`one_blas_thread`."""
    xf, xh, kind, lengths = arrays
    k = lengths.shape[0]
    d = (xh if kind else xf).shape[2]
    H = qT.shape[0]
    pooled = np.empty((k, H, d), dtype=qT.dtype)
    lse = np.empty((k, H), dtype=qT.dtype)
    n = _threads()
    if n > 1:
        numba.set_num_threads(n)
        kernels.forward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, n)
    else:
        kernels.forward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse, 1)
    return pooled, lse


def backward_arrays(arrays, qT, slope, code, pooled, lse, dpooled):
    """``dQ^T (H, d)`` and ``dslope (H,)`` of a block given as :func:`_arrays`
    (``dpooled`` contiguous, in the accumulation dtype). Call inside
    :func:`one_blas_thread`."""
    xf, xh, kind, lengths = arrays
    H, d = qT.shape
    n = _threads()
    dq = np.empty((n, H, d), dtype=qT.dtype)
    ds = np.empty((n, H), dtype=qT.dtype)
    if n > 1:
        numba.set_num_threads(n)
        kernels.backward(xf, xh, lengths, kind, qT, slope, code, pooled, lse, dpooled,
                         dq, ds)
    else:
        kernels.backward_serial(xf, xh, lengths, kind, qT, slope, code, pooled, lse,
                                dpooled, dq, ds)
    return dq.sum(0), ds.sum(0)


def forward(x, lengths, query, slope, code):
    with one_blas_thread():
        pooled, lse = forward_arrays(_arrays(x, lengths), _np(query.T), _np(slope), code)
    return torch.from_numpy(pooled), torch.from_numpy(lse)


def backward(x, lengths, query, slope, code, pooled, lse, dpooled):
    with one_blas_thread():
        dq, ds = backward_arrays(_arrays(x, lengths), _np(query.T), _np(slope), code,
                                 pooled.numpy(), lse.numpy(),
                                 _np(dpooled.to(query.dtype)))
    return torch.from_numpy(dq.T.copy()), torch.from_numpy(ds)
