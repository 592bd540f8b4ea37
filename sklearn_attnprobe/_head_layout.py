"""How a stack of attention probes lays out its heads: model ``m`` owns
``head_counts[m]`` consecutive query columns (value rows), model by model."""

import functools

import numpy as np
import torch


def _head_counts(n_heads, n_models):
    """``(n_models,)`` heads per model from an int or one count per model."""
    counts = np.broadcast_to(np.asarray(n_heads, dtype=np.int64), (n_models,)).copy()
    if counts.min(initial=1) < 1:
        raise ValueError(f"every model needs at least one head, got {n_heads!r}")
    return counts


def _uniform(head_counts):
    """The common head count, or None where the models differ."""
    return int(head_counts[0]) if len(head_counts) and (head_counts == head_counts[0]).all() \
        else None


def head_columns(head_counts, models):
    """Query columns (value rows) of ``models`` in a stack with ``head_counts``
    heads per model, model by model."""
    starts = np.concatenate([[0], np.cumsum(head_counts)])
    models = np.asarray(models, dtype=np.int64).reshape(-1)
    counts = np.asarray(head_counts)[models]
    # each model's first column, repeated over its heads, plus 0, 1, ... within it
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return torch.as_tensor(np.repeat(starts[models], counts) + within)


def sum_heads(per_head, head_counts, by_matmul=None):
    """``(k, n_columns, ...)`` per-head terms -> ``(k, n_models, ...)`` sums
    over each model's ``head_counts[m]`` consecutive columns.

    Models of one head count: a reshape and a sum. Mixed counts: on the CPU
    an ``index_add`` (deterministic there); elsewhere, or with ``by_matmul``,
    a product with a 0/1 (columns x models) matrix kept on the device:
    CUDA's ``index_add`` and the backward of ``gather`` accumulate with
    atomics, so their sums vary from run to run."""
    H = _uniform(head_counts)
    if H is not None and by_matmul is None:
        return per_head.reshape(per_head.shape[0], -1, H, *per_head.shape[2:]).sum(2)
    counts = tuple(int(c) for c in head_counts)
    if by_matmul is None:
        by_matmul = per_head.device.type != "cpu"
    if by_matmul:
        owner = _owner_matrix(counts, per_head.device, per_head.dtype)
        return (per_head.movedim(1, -1) @ owner).movedim(-1, 1)
    owner = torch.as_tensor(np.repeat(np.arange(len(counts)), counts))
    out = per_head.new_zeros(per_head.shape[0], len(counts), *per_head.shape[2:])
    return out.index_add(1, owner, per_head)


@functools.lru_cache(maxsize=32)
def _owner_matrix(counts, device, dtype):
    """``(n_columns, n_models)``: 1 where a column is one of the model's heads."""
    owner = np.repeat(np.arange(len(counts)), counts)
    matrix = np.zeros((len(owner), len(counts)))
    matrix[np.arange(len(owner)), owner] = 1
    return torch.as_tensor(matrix, dtype=dtype, device=device)
