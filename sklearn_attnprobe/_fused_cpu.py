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

import numba
import numpy as np
import torch

from . import _fused_numba as kernels

_KIND = {torch.float16: 1, torch.bfloat16: 2}


@functools.cache
def _blas_libraries():
    """threadpoolctl's handles on the loaded BLAS libraries (found once)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a scikit-learn dependency
        return ()
    return tuple(lib for lib in ThreadpoolController().lib_controllers
                 if lib.user_api == "blas")


@contextlib.contextmanager
def _one_blas_thread():
    libs = _blas_libraries()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def _threads():
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _arrays(x):
    """``(xf, xh, kind)``: the block as floats or as 16-bit patterns."""
    kind = _KIND.get(x.dtype, 0)
    if kind:
        xh = x.detach().view(torch.int16).numpy().view(np.uint16)
        return np.empty((xh.shape[0], 0, 0), np.float32), xh, kind
    xf = x.detach().numpy()
    return xf, np.empty((xf.shape[0], 0, 0), np.uint16), 0


def _np(t):
    return np.ascontiguousarray(t.detach().cpu().numpy())


def forward(x, lengths, query, slope, code):
    xf, xh, kind = _arrays(x)
    k, _, d = x.shape
    H = query.shape[1]
    acc = query.dtype
    pooled = torch.empty(k, H, d, dtype=acc)
    lse = torch.empty(k, H, dtype=acc)
    n = _threads()
    run = kernels.forward if n > 1 else kernels.forward_serial
    if n > 1:
        numba.set_num_threads(n)
    with _one_blas_thread():
        run(xf, xh, _np(lengths), kind, _np(query.T), _np(slope), code, pooled.numpy(),
            lse.numpy(), n)
    return pooled, lse


def backward(x, lengths, query, slope, code, pooled, lse, dpooled):
    xf, xh, kind = _arrays(x)
    d, H = query.shape
    n = _threads()
    dq = np.empty((n, H, d), dtype=_np(query).dtype)
    ds = np.empty((n, H), dtype=dq.dtype)
    run = kernels.backward if n > 1 else kernels.backward_serial
    if n > 1:
        numba.set_num_threads(n)
    with _one_blas_thread():
        run(xf, xh, _np(lengths), kind, _np(query.T), _np(slope), code, pooled.numpy(),
            lse.numpy(), _np(dpooled.to(query.dtype)), dq, ds)
    return torch.from_numpy(dq.sum(0).T.copy()), torch.from_numpy(ds.sum(0))
