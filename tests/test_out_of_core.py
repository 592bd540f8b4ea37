"""Streamed training from memory-mapped RaggedArrays (sklearn_attnprobe._streaming)."""

import gc
import threading
import time

import numpy as np
import pytest
import torch

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    MeanProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe._streaming import (
    StreamingTrainingSet,
    bucketed_order,
    is_mapped,
    prefetch,
    random_order,
)
from sklearn_attnprobe._packing import pack
from sklearn_attnprobe._training import TrainingSet, fit_module
from sklearn_attnprobe._modules import AttentionProbeModule
from sklearn_attnprobe.datasets import make_planted_task


@pytest.fixture
def mapped_task(tmp_path):
    X, y = make_planted_task("needle", n_texts=160, d_model=16, return_ragged=True,
                             random_state=0)
    path = tmp_path / "acts.npz"
    X.save(path)
    return RaggedArray.load(path, mmap_mode="r"), X, y


def test_bucketed_order_is_a_permutation_of_runs():
    g = torch.Generator().manual_seed(0)
    batches = bucketed_order(100, 16, g, bucket_size=4)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(100))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 4
    for b in batches:  # made of whole runs of 4 neighbours
        assert set((b // 4).tolist()) == {int(r) // 4 for r in b}
        assert len(b) == 4 * len(set((b // 4).tolist())) or b is batches[-1]
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_order(10, 0, g)
    assert len(random_order(10, 3, g)) == 4


def test_prefetch_bounds_and_errors():
    made, held = [], []

    def items():
        for i in range(6):
            made.append(i)
            yield i

    for i in prefetch(items):
        time.sleep(0.02)  # the producer may be at most one item ahead
        held.append(len(made) - i)
    assert held and max(held) <= 2

    def failing():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(failing))
    n_threads = threading.active_count()
    for _ in prefetch(lambda: iter(range(100))):
        break  # closing early stops the thread
    gc.collect()
    assert threading.active_count() <= n_threads


def test_streamed_minibatches_equal_in_memory_fit(mapped_task):
    """Same minibatch order -> same parameters as the packed in-memory path."""
    Xm, X, y = mapped_task
    assert is_mapped(Xm) and not is_mapped(X)
    y = np.asarray(y)
    w = np.ones(len(y))
    params = {}
    for name in ("memory", "stream"):
        module = AttentionProbeModule(16, 2, 1, position="last",
                                      generator=torch.Generator().manual_seed(3),
                                      dtype=torch.float64)
        if name == "memory":
            ts = TrainingSet(pack(X, torch.float64, "cpu"), y, w, device="cpu",
                             dtype=torch.float64, seed=5)
        else:
            ts = StreamingTrainingSet(Xm, y, w, device="cpu", dtype=torch.float64,
                                      param_dtype=torch.float64, seed=5)
        ts.row_order = lambda n, bs, g: bucketed_order(n, bs, g, bucket_size=5)
        fit_module(module, ts, solver="adamw", learning_rate=0.05, max_iter=30,
                   batch_size=32, weight_decay=1e-3, n_iter_no_change=None)
        params[name] = {k: v.detach().clone() for k, v in module.named_parameters()}
    for k in params["memory"]:
        torch.testing.assert_close(params["stream"][k], params["memory"][k],
                                   rtol=1e-9, atol=1e-10)


def test_estimators_stream_from_a_mapped_file(mapped_task, monkeypatch):
    Xm, X, y = mapped_task
    calls = []
    original = StreamingTrainingSet.minibatch

    def spy(self, ranks, copier=None):
        calls.append(len(ranks))
        return original(self, ranks, copier)

    monkeypatch.setattr(StreamingTrainingSet, "minibatch", spy)
    est = AttentionProbeClassifier(n_heads=2, batch_size=32, max_iter=40,
                                   n_iter_no_change=None, random_state=0).fit(Xm, y)
    assert calls and max(calls) <= 32  # minibatches, never the whole file
    assert est.score(Xm, y) > 0.7
    np.testing.assert_allclose(est.predict_proba(Xm), est.predict_proba(X))
    assert len(est.attention_weights(Xm)) == len(y)
    # early stopping: the held-out part is materialized, the rest streamed
    AttentionProbeClassifier(batch_size=32, max_iter=20, early_stopping=True,
                             random_state=0).fit(Xm, y)
    n = len(calls)
    cv = AttentionProbeClassifierCV(weight_decays=(0.0, 1e-2), cv=2, batch_size=40, max_iter=20,
                          random_state=0).fit(Xm, y)
    assert len(calls) > n and cv.predict(Xm).shape == (len(y),)
    # pooled probes pool in one bounded pass; no token minibatches
    n = len(calls)
    mean_m = MeanProbeClassifier(batch_size=32).fit(Xm, y)
    mean = MeanProbeClassifier(batch_size=32).fit(X, y)
    assert len(calls) == n
    np.testing.assert_allclose(mean_m.coef_, mean.coef_, rtol=1e-6, atol=1e-8)


def _rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"),
                    reason="needs /proc (Linux)")
def test_anonymous_memory_stays_below_the_file_size(tmp_path):
    """A 600 MB float16 file; the streamed fit's RssAnon growth stays < 120 MB
    (prediction blocks hold up to 2**24 values: 64 MB in float32)."""
    rng = np.random.default_rng(0)
    d, n = 256, 9000
    lengths = rng.integers(16, 250, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    path = tmp_path / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                     shape=(int(offsets[-1]), d))
    for s in range(0, len(data), 1 << 16):  # written in chunks: bounded memory
        data[s : s + (1 << 16)] = rng.standard_normal((min(1 << 16, len(data) - s), d))
    data.flush()
    del data
    gc.collect()
    X = RaggedArray(np.load(path, mmap_mode="r"), offsets)
    file_bytes = X.data.nbytes
    assert file_bytes > 550e6
    y = rng.integers(0, 2, size=n)
    budget = 120e6
    # compile the kernels and warm the allocator first: that is not data memory
    AttentionProbeClassifier(n_heads=2, max_iter=2, n_iter_no_change=None).fit(
        X[:64].pack(), y[:64]).predict(X[:64])
    gc.collect()
    peak, stop = [0], threading.Event()
    base = _rss_anon()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon() - base)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        est = AttentionProbeClassifier(n_heads=2, batch_size=64, max_iter=12,
                                       n_iter_no_change=None, random_state=0)
        est.fit(X, y)
        est.predict(X[:500])
    finally:
        stop.set()
        sampler.join()
    assert est.n_iter_ == 12
    assert peak[0] < budget < file_bytes / 4, (peak[0], file_bytes)



def test_lbfgs_streams_the_same_objective(mapped_task, monkeypatch):
    """L-BFGS on a mapped file reads it in parts of ``batch_size`` texts and
    accumulates their gradients: the full-batch objective, never all texts."""
    Xm, X, y = mapped_task
    calls = []
    original = StreamingTrainingSet.minibatch

    def spy(self, ranks, copier=None):
        calls.append(np.asarray(ranks).copy())
        return original(self, ranks, copier)

    monkeypatch.setattr(StreamingTrainingSet, "minibatch", spy)
    params = dict(n_heads=2, solver="lbfgs", batch_size=48, max_iter=25,
                  compute_dtype="float64", random_state=0)
    streamed = AttentionProbeClassifier(**params).fit(Xm, y)
    assert calls and max(len(c) for c in calls) <= 48
    # each evaluation walks the file front to back
    assert np.array_equal(np.concatenate(calls[:4]), np.arange(len(y)))
    n = len(calls)
    in_memory = AttentionProbeClassifier(**params).fit(X, y)
    assert len(calls) == n
    assert streamed.n_iter_ == in_memory.n_iter_
    np.testing.assert_allclose(streamed.decision_function(X),
                               in_memory.decision_function(X), rtol=1e-6, atol=1e-8)
    cv_params = dict(weight_decays=(0.0, 1e-2), cv=2, solver="lbfgs", max_iter=15,
                     compute_dtype="float64", random_state=0)
    cv_streamed = AttentionProbeClassifierCV(batch_size=64, **cv_params).fit(Xm, y)
    assert len(calls) > n
    cv_memory = AttentionProbeClassifierCV(**cv_params).fit(X, y)
    np.testing.assert_allclose(cv_streamed.cv_results_["mean_test_score"],
                               cv_memory.cv_results_["mean_test_score"])
    np.testing.assert_allclose(cv_streamed.decision_function(X),
                               cv_memory.decision_function(X), rtol=1e-6, atol=1e-8)


def test_blocks_of_a_mapped_file_are_read_front_to_back(mapped_task, monkeypatch):
    from sklearn_attnprobe import _streaming

    Xm, X, y = mapped_task
    limit = 4096  # values per block: a few texts each
    blocks = list(_streaming.iter_blocks(Xm, torch.float32, "cpu", max_elements=limit))
    index = np.concatenate([b.index for b in blocks])
    assert sorted(index.tolist()) == list(range(len(y)))  # every text once
    assert all(b.x.numel() <= limit or len(b) == 1 for b in blocks)
    windows = list(_streaming._file_chunks(Xm, _streaming.CHUNKS_PER_WINDOW * limit))
    assert len(windows) > 2
    window_of = np.searchsorted([hi for _, hi in windows], index, side="right")
    block_window = [window_of[np.isin(index, b.index)] for b in blocks]
    assert all(len(set(w.tolist())) == 1 for w in block_window)  # a block: one window
    order = [int(w[0]) for w in block_window]
    assert order == sorted(order)  # windows in file order
    for b in blocks:  # and the values are the texts'
        for j, i in enumerate(b.index):
            np.testing.assert_array_equal(b.x[j, : X.lengths[i]].numpy(), X[int(i)])
    # an in-memory source keeps the global length buckets (least padding)
    mem = list(_streaming.iter_blocks(X, torch.float32, "cpu", max_elements=limit))
    assert sum(b.x.numel() for b in mem) <= sum(b.x.numel() for b in blocks)


def test_auto_compute_dtype_keeps_float16_activations(mapped_task):
    """float16 input trains in float16 where the fused kernel reads it directly;
    the kernel accumulates in float32, so the fit is that of a float32 copy."""
    from sklearn_attnprobe._fused import reads_half_directly

    _, X, y = mapped_task
    X16 = RaggedArray(X.data.astype(np.float16), X.offsets)
    params = dict(n_heads=2, max_iter=30, n_iter_no_change=None, random_state=0)
    auto = AttentionProbeClassifier(**params).fit(X16, y)
    wide = AttentionProbeClassifier(compute_dtype="float32", **params).fit(X16, y)
    if not reads_half_directly("cpu"):
        pytest.skip("no fused CPU backend (numba): 'auto' widens to float32")
    assert auto.compute_dtype_ == torch.float16
    assert wide.compute_dtype_ == torch.float32
    np.testing.assert_allclose(auto.decision_function(X16), wide.decision_function(X16),
                               rtol=1e-4, atol=1e-5)
    for a, b in zip(auto.attention_weights(X16[:20]), wide.attention_weights(X16[:20])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert auto.attention_weights(X16[:1])[0].dtype == np.float64
