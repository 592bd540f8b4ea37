"""Length-bucketed packing of ragged texts into padded torch blocks.

Texts are sorted by length and grouped into geometric length buckets (lengths
within a bucket differ by at most a factor ``growth``); each bucket becomes one
zero-padded ``(k, T, d_model)`` block with a boolean mask. Padding therefore
costs at most ``growth - 1`` (25% by default) of the real tokens, whatever the
length distribution: one 4,096-token text does not pad 10,000 short ones.

Peak memory of a fit, in bytes per real token: ``growth * d_model * itemsize``
for the working copy (``itemsize`` of the compute dtype), plus one bucket in the
input dtype while it is being converted.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from ._kernels import relative_positions
from ._ragged import RaggedArray

DEFAULT_GROWTH = 1.25
# Upper bounds on padded elements (k * T * d) per block when predicting and
# training; on a GPU, fewer and bigger blocks cost less than launches.
PREDICT_BLOCK_ELEMENTS = 1 << 24
TRAIN_BLOCK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 30}
# A block costs a fixed ~0.1-0.3 ms per training step in op dispatch and
# kernel launches: about as much as this many padded elements of work on one
# CPU core, or on a GPU that streams activations at terabytes per second.
BLOCK_OVERHEAD_ELEMENTS = {"cpu": 1 << 16, "cuda": 1 << 27}


def block_overhead(device):
    """Padded elements worth one extra block on ``device`` (see above)."""
    return BLOCK_OVERHEAD_ELEMENTS.get(torch.device(device).type, 1 << 16)


@dataclass
class Block:
    """Texts of similar length, zero-padded to a common length ``T``."""

    x: torch.Tensor  # (k, T, d_model), zero at padded positions
    mask: torch.Tensor  # (k, T) bool, True for real tokens
    lengths: torch.Tensor  # (k,) int64
    index: np.ndarray  # (k,) position of each text in the source
    # CV splits whose models give every text of the block zero weight
    # (:func:`pack_by_idle_splits`); a stacked module skips their columns
    idle_splits: tuple = ()
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self):
        return self.x.shape[0]

    def padding(self):
        """``~mask``, computed once per block rather than once per step."""
        if "padding" not in self._cache:
            self._cache["padding"] = ~self.mask
        return self._cache["padding"]

    def positions(self, position, dtype):
        """Cached ``(k, T)`` position term (see :func:`relative_positions`)."""
        key = ("positions", position, dtype)
        if key not in self._cache:
            self._cache[key] = relative_positions(self.lengths, self.x.shape[1],
                                                  position, dtype)
        return self._cache[key]

    def select(self, rows):
        """Sub-block with the given rows (a torch index tensor)."""
        T = int(self.lengths[rows].max()) if len(rows) else 0
        return Block(
            self.x[rows, :T], self.mask[rows, :T], self.lengths[rows],
            self.index[rows.cpu().numpy()], self.idle_splits,
        )


@dataclass
class PackedBatch:
    """A batch of texts as blocks; row order is the blocks' order."""

    blocks: list
    features: torch.Tensor = None  # pooled probes train on (n, d) features
    order: np.ndarray = field(default=None)  # source position of each row

    def __post_init__(self):
        if self.order is None:
            self.order = np.concatenate([b.index for b in self.blocks])

    def __len__(self):
        return len(self.order)


def length_buckets(lengths, growth=DEFAULT_GROWTH, d_model=1,
                   block_overhead=BLOCK_OVERHEAD_ELEMENTS["cpu"]):
    """Split text positions into buckets of similar length (sorted, stable).

    Geometric bins first; then neighbouring bins merge while the padding the
    merge adds (in elements, ``* d_model``) costs less than one more block's
    fixed per-step overhead, so small datasets are not cut into many tiny blocks.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    bins = np.floor(np.log(lengths[order]) / np.log(growth)).astype(np.int64)
    cuts = np.flatnonzero(np.diff(bins)) + 1
    kept = []
    count = cuts[0] if len(cuts) else len(order)  # texts in the current block
    for i, cut in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else len(order)
        extra = count * (lengths[order[end - 1]] - lengths[order[cut - 1]]) * d_model
        if extra < block_overhead:
            count += end - cut
        else:
            kept.append(cut)
            count = end - cut
    return np.split(order, kept)


def gather_padded(source, idx, T):
    """Zero-padded ``(len(idx), T, d)`` numpy copy of texts ``idx`` of a source."""
    lengths = source.lengths[idx]
    if isinstance(source, RaggedArray):
        pos = np.arange(T)
        rows = source.starts[idx, None] + np.minimum(pos[None, :], lengths[:, None] - 1)
        out = np.take(source.data, rows.reshape(-1), axis=0)
        out = out.reshape(len(idx), T, source.d_model)
        pad = pos[None, :] >= lengths[:, None]
        if pad.any():
            out[pad] = 0
        return out
    out = np.zeros((len(idx), T, source.d_model), dtype=source.dtype)
    for j, i in enumerate(idx):
        out[j, : lengths[j]] = source.arrays[i]
    return out


def _check_finite(x, idx):
    # A finite sum proves every value finite (NaN and inf propagate) at the
    # cost of one reduction; only a non-finite sum (or an overflowing one)
    # pays for the element-wise check.
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x).flatten(1).all(dim=1)
        first = int(idx[int(torch.nonzero(bad)[0, 0])])
        raise ValueError(
            f"X contains NaN or infinity (first in text {first}), or values too "
            f"large for {x.dtype}"
        )


def make_block(source, idx, dtype, device):
    """Build one block from source texts ``idx`` (all in one bucket)."""
    lengths = source.lengths[idx]
    T = int(lengths.max())
    arr = gather_padded(source, idx, T)
    x = torch.from_numpy(arr).to(device=device, dtype=dtype)
    del arr
    _check_finite(x, idx)
    lengths_t = torch.as_tensor(lengths, device=device)
    mask = torch.arange(T, device=device)[None, :] < lengths_t[:, None]
    return Block(x, mask, lengths_t, np.asarray(idx))


def _block_indices(source, growth, device, max_elements, rows=None):
    """Text positions of each block (of all texts, or of ``rows``): length
    buckets cut to ``max_elements``."""
    d = source.d_model
    lengths = source.lengths if rows is None else source.lengths[rows]
    for idx in length_buckets(lengths, growth, d, block_overhead(device)):
        if rows is not None:
            idx = rows[idx]
        T = int(source.lengths[idx].max())
        per_chunk = max(1, max_elements // (T * d))
        for start in range(0, len(idx), per_chunk):
            yield idx[start : start + per_chunk]


def train_block_elements(device):
    """Most padded values in one training block on ``device``."""
    return TRAIN_BLOCK_ELEMENTS.get(torch.device(device).type, 1 << 24)


def pack(source, dtype, device, growth=DEFAULT_GROWTH):
    """All texts of a source as a :class:`PackedBatch` (the fit's working copy).

    Blocks hold at most ``TRAIN_BLOCK_ELEMENTS`` padded values, which bounds
    the per-step temporaries (and, on a CPU, the float32 copies its half
    precision matrix products make) whatever the longest bucket.
    """
    return PackedBatch(list(iter_blocks(source, dtype, device, growth,
                                        train_block_elements(device))))


def pack_by_idle_splits(source, fold_weights, dtype, device, growth=DEFAULT_GROWTH,
                        max_groups=16):
    """:func:`pack` for a CV stack: texts left out by the same CV splits
    (``fold_weights[i, s] == 0``) share blocks, and each block records those
    splits in ``idle_splits``. More than ``max_groups`` such patterns (many
    splits that overlap, as with ShuffleSplit) would cut the blocks small:
    then it is plain :func:`pack`."""
    idle = np.asarray(fold_weights) == 0
    patterns, group = np.unique(idle, axis=0, return_inverse=True)
    group = np.asarray(group).reshape(-1)
    if len(patterns) > max_groups or not idle.any():
        return pack(source, dtype, device, growth)
    blocks = []
    for g, pattern in enumerate(patterns):
        key = tuple(int(s) for s in np.flatnonzero(pattern))
        for block in iter_blocks(source, dtype, device, growth,
                                 train_block_elements(device),
                                 rows=np.flatnonzero(group == g)):
            block.idle_splits = key
            blocks.append(block)
    return PackedBatch(blocks)


def iter_blocks(source, dtype, device, growth=DEFAULT_GROWTH,
                max_elements=PREDICT_BLOCK_ELEMENTS, rows=None):
    """Yield blocks covering all texts (or ``rows``), each at most
    ``max_elements`` padded values.

    Used at prediction time so memory stays bounded whatever the test set's size.
    """
    for idx in _block_indices(source, growth, device, max_elements, rows):
        yield make_block(source, idx, dtype, device)


def inverse_order(order):
    """Permutation that puts rows in ``order`` back to source order."""
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return inv
