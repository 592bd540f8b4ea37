"""Training from memory-mapped activations without loading them.

When a fit's texts live in a memory-mapped :class:`RaggedArray` (``RaggedArray.load(
path, mmap_mode="r")`` or the extraction cache's output) and ``batch_size`` is set,
the training loops are fed by a :class:`StreamingTrainingSet` instead of one packed
working copy of every text (AdamW takes its minibatches from it; each L-BFGS
evaluation reads every text once, in file order, ``batch_size`` at a time):

* minibatches are drawn in a *bucketed* order (:func:`bucketed_order`): runs of
  neighbouring texts are shuffled as units, so each minibatch reads a few long
  contiguous stretches of the file instead of ``batch_size`` scattered rows;
* each minibatch is gathered from the mapped file block by block (length buckets,
  as :func:`._packing.pack` does) by a background thread while the current step
  computes (:func:`prefetch`), at most one minibatch ahead, so the anonymous
  memory of a fit is about two minibatches whatever the file's size;
* on a GPU, blocks go through pinned host buffers and are copied on a side CUDA
  stream (``non_blocking``), so transfer overlaps the step's kernels.

The mapped pages themselves are page cache (file-backed), which the kernel drops
under memory pressure; they do not count as the process's anonymous memory.
"""

import queue
import threading

import numpy as np
import torch

from ._packing import (
    DEFAULT_GROWTH,
    PREDICT_BLOCK_ELEMENTS,
    Block,
    PackedBatch,
    _check_finite,
    block_overhead,
    gather_padded,
    length_buckets,
    pack,
    train_block_elements,
)
from ._packing import iter_blocks as pack_blocks
from ._ragged import RaggedArray
from ._training import TrainingSet

#: Texts per bucket of :func:`bucketed_order` is ``batch_size // BUCKETS_PER_BATCH``.
BUCKETS_PER_BATCH = 8
#: :func:`iter_blocks` over a mapped file: the window of consecutive texts cut
#: into length buckets, in blocks (more: less padding, reads less sequential).
CHUNKS_PER_WINDOW = 8


def is_mapped(source):
    """Whether ``source`` is a RaggedArray over a memory-mapped buffer."""
    # in-memory copies of a memmap keep the subclass but lose the file name
    return (isinstance(source, RaggedArray) and isinstance(source.data, np.memmap)
            and getattr(source.data, "filename", None) is not None)


def should_stream(source, batch_size):
    """Streamed training: ``batch_size`` set and a memory-mapped source (AdamW
    minibatches, or L-BFGS evaluations accumulated ``batch_size`` texts at a time)."""
    return batch_size is not None and is_mapped(source)


def random_order(n, batch_size, generator):
    """Minibatches of uniformly shuffled rows (the in-memory path's order).

    Returns a list of sorted int64 arrays of row ranks ``0..n-1``.
    """
    perm = torch.randperm(n, generator=generator).numpy()
    return [np.sort(perm[i : i + batch_size]) for i in range(0, n, batch_size)]


def bucketed_order(n, batch_size, generator, bucket_size=None):
    """Minibatches made of shuffled runs of neighbouring rows.

    Rows ``0..n-1`` are cut into runs of ``bucket_size`` consecutive rows
    (default ``batch_size // 8``); the runs are shuffled and dealt out in order,
    so a minibatch of 512 texts reads 8 contiguous stretches of the file.

    Parameters
    ----------
    n : int
        Number of rows.
    batch_size : int
        Rows per minibatch (the last one may be smaller).
    generator : torch.Generator
        Source of randomness (one epoch per call).
    bucket_size : int or None, default=None
        Rows per run; ``1`` is a fully random order.

    Returns
    -------
    batches : list of ndarray of int64
        Sorted row ranks of each minibatch; together a permutation of ``range(n)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bucket_size is None:
        bucket_size = max(1, batch_size // BUCKETS_PER_BATCH)
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    starts = np.arange(0, n, bucket_size, dtype=np.int64)
    perm = torch.randperm(len(starts), generator=generator).numpy()
    rows = np.concatenate([np.arange(s, min(s + bucket_size, n)) for s in starts[perm]])
    return [np.sort(rows[i : i + batch_size]) for i in range(0, n, batch_size)]


def prefetch(make_items, depth=1):
    """Iterate ``make_items()`` with a background thread at most ``depth`` items ahead.

    The producer waits for a free slot *before* building an item, so at most
    ``depth`` finished-or-in-progress items exist besides the one the consumer
    holds: memory stays bounded. Exceptions in the producer re-raise here.
    Closing the generator (e.g. a loop that ``break``-s) stops the thread.
    """
    slots = threading.Semaphore(depth)
    out = queue.Queue()
    stop = threading.Event()
    done = object()

    def produce():
        try:
            it = iter(make_items())
            while True:
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    out.put((done, None))
                    return
                out.put((None, item))
        except BaseException as exc:  # handed to the consumer
            out.put((exc, None))

    thread = threading.Thread(target=produce, name="attnprobe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            flag, item = out.get()
            if flag is done:
                return
            if flag is not None:
                raise flag
            slots.release()  # the consumer drops its previous item now
            yield item
            del item
    finally:
        stop.set()
        thread.join()


class _DeviceCopier:
    """Host -> device copies: pinned buffers and a side stream on CUDA."""

    def __init__(self, device, dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def __call__(self, arr):
        """``(tensor, event)``: the array on the device in the compute dtype."""
        x = torch.from_numpy(arr)
        if not self.cuda:
            return x.to(dtype=self.dtype), None
        x = x.pin_memory()  # page-locked, so the copy below is asynchronous
        with torch.cuda.stream(self.stream):
            x = x.to(self.device, non_blocking=True).to(self.dtype)
            event = torch.cuda.Event()
            event.record(self.stream)
        return x, event

    def ready(self, tensors, event):
        """Make the compute stream wait for a prefetched copy (CUDA only)."""
        if event is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in tensors:
            t.record_stream(current)  # its memory is in use on this stream


class StreamingTrainingSet:
    """The texts of a mapped source, served as prefetched minibatches.

    Duck-types :class:`._training.TrainingSet` for the AdamW loop (``y``,
    ``w``, ``generator``, ``epoch``, ``batches``, ``split``). Row ``r`` is the
    ``r``-th selected text in source order; ``y`` and ``w`` follow that order.

    Parameters
    ----------
    source : RaggedArray
        Usually memory-mapped; it is only read, minibatch by minibatch.
    y, w : ndarray
        Targets ``(n,)`` and weights ``(n,)`` or ``(n, n_models)`` in source order.
    device, dtype, param_dtype
        Where and in which dtype blocks are built; dtype of the weights.
    seed : int
        Seeds the minibatch order.
    bucket_size : int or None, default=None
        Run length of :func:`bucketed_order`.
    """

    def __init__(self, source, y, w, *, device, dtype, param_dtype, seed=0,
                 bucket_size=None, rows=None):
        self.source = source
        self.rows = np.arange(len(source), dtype=np.int64) if rows is None else rows
        self.device, self.dtype = torch.device(device), dtype
        self.y = torch.as_tensor(np.asarray(y)[self.rows], device=self.device)
        self.w = torch.as_tensor(np.asarray(w)[self.rows], device=self.device,
                                 dtype=param_dtype)
        self.param_dtype = param_dtype
        self.bucket_size = bucket_size
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps_left = None  # skorch path: AdamW step budget
        self.row_order = None  # callable(n, batch_size, generator); None = bucketed

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        raise TypeError("StreamingTrainingSet is served in whole minibatches")

    def split(self, rows):
        """A new set of some of the rows (ranks), sharing the source."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        part = StreamingTrainingSet.__new__(StreamingTrainingSet)
        part.__dict__.update(self.__dict__)
        part.rows = self.rows[rows]
        rows_t = torch.as_tensor(rows, device=self.device)
        part.y, part.w = self.y[rows_t], self.w[rows_t]
        part.generator = torch.Generator().manual_seed(int(self.generator.initial_seed()))
        return part

    def materialize(self):
        """An in-memory :class:`TrainingSet` of these rows (e.g. a validation split)."""
        batch = pack(self.source[self.rows], self.dtype, self.device)
        y = self.y.cpu().numpy()
        w = self.w.cpu().numpy()
        return TrainingSet(batch, y, w, device=self.device, dtype=self.param_dtype)

    def minibatch(self, ranks, copier=None):
        """``(PackedBatch, (y, w), event)`` of rows ``ranks`` read from the source."""
        copier = copier or _DeviceCopier(self.device, self.dtype)
        src = self.rows[ranks]
        d = self.source.d_model
        limit = train_block_elements(self.device)
        blocks, perm, event = [], [], None
        groups = length_buckets(self.source.lengths[src], d_model=d,
                                block_overhead=block_overhead(self.device))
        for group in groups:
            T = int(self.source.lengths[src[group]].max())
            step = max(1, limit // (T * d))
            for s in range(0, len(group), step):
                part = group[s : s + step]
                idx = src[part]
                x, event = copier(gather_padded(self.source, idx, T))
                _check_finite(x, idx)
                lengths = torch.as_tensor(self.source.lengths[idx], device=self.device)
                mask = torch.arange(T, device=self.device)[None, :] < lengths[:, None]
                blocks.append(Block(x, mask, lengths, idx))
                perm.append(part)
        # y and w rows in the blocks' order (perm indexes ``ranks``)
        perm = torch.as_tensor(np.asarray(ranks)[np.concatenate(perm)], device=self.device)
        return PackedBatch(blocks), (self.y[perm], self.w[perm]), event

    def _order(self, batch_size):
        if self.row_order is not None:
            return self.row_order(len(self), batch_size, self.generator)
        return bucketed_order(len(self), batch_size, self.generator, self.bucket_size)

    def epoch(self, batch_size):
        """One pass of ``(batch, (y, w))`` minibatches, read one step ahead."""
        yield from self._serve(self._order(min(int(batch_size), len(self))))

    def full_pass(self, batch_size):
        """Every text once, in file order, ``batch_size`` at a time (the parts
        of one full-batch L-BFGS evaluation), read one part ahead."""
        n = len(self)
        step = n if batch_size is None else max(1, min(int(batch_size), n))
        yield from self._serve([np.arange(i, min(i + step, n)) for i in range(0, n, step)])

    def _serve(self, order):
        copier = _DeviceCopier(self.device, self.dtype)

        def items():
            for ranks in order:
                yield self.minibatch(ranks, copier)

        for batch, yw, event in prefetch(items):
            copier.ready([b.x for b in batch.blocks], event)
            yield batch, yw

    batches = TrainingSet.batches  # the skorch path's step budget, over epoch()


def _file_chunks(source, max_elements):
    """Consecutive row ranges ``(lo, hi)`` of at most ``max_elements`` values
    each (one text more only when a single text is larger)."""
    ends = np.cumsum(source.lengths) * source.d_model
    lo = 0
    while lo < len(source):
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + max_elements, side="right"))
        hi = max(hi, lo + 1)
        yield lo, hi
        lo = hi


def iter_blocks(source, dtype, device, growth=DEFAULT_GROWTH,
                max_elements=PREDICT_BLOCK_ELEMENTS):
    """Blocks covering every text of ``source``, each of at most ``max_elements``
    padded values (prediction, inspection, pooling: bounded memory).

    In memory: :func:`._packing.iter_blocks` (length buckets over all texts,
    the least padding). Memory-mapped: the file is walked front to back in
    chunks of ``CHUNKS_PER_WINDOW * max_elements`` values, each chunk cut into
    length buckets, and blocks are read one ahead by a background thread, so
    the disk reads sequentially and the read overlaps the compute.
    """
    if not is_mapped(source):
        yield from pack_blocks(source, dtype, device, growth, max_elements)
        return

    def items():
        for lo, hi in _file_chunks(source, CHUNKS_PER_WINDOW * max_elements):
            yield from pack_blocks(source, dtype, device, growth, max_elements,
                                   rows=np.arange(lo, hi, dtype=np.int64))

    yield from prefetch(items)


def make_training_set(source, y, w, *, batch_size, device, dtype, param_dtype, seed,
                      stream=None, pack_source=pack):
    """A :class:`StreamingTrainingSet` when ``stream`` (default:
    :func:`should_stream`), else the in-memory :class:`._training.TrainingSet`
    of ``pack_source(source, dtype, device)``."""
    if stream is None:
        stream = should_stream(source, batch_size)
    if stream:
        return StreamingTrainingSet(source, y, w, device=device, dtype=dtype,
                                    param_dtype=param_dtype, seed=seed)
    batch = pack_source(source, dtype, device)
    return TrainingSet(batch, y, w, device=device, dtype=param_dtype, seed=seed)
