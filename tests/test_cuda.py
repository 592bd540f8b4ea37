"""CUDA paths; skipped (by conftest) on machines without a GPU."""

import numpy as np
import pytest
import torch

from sklearn_attnprobe import (
    AttentionProbeClassifier,
    LastTokenProbeClassifier,
    MeanProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe.datasets import make_planted_task

pytestmark = pytest.mark.cuda

MAKERS = {
    "attention": lambda device: AttentionProbeClassifier(
        n_heads=4, max_iter=100, random_state=0, device=device),
    "mean": lambda device: MeanProbeClassifier(device=device),
    "last": lambda device: LastTokenProbeClassifier(device=device),
}


@pytest.mark.parametrize("name", MAKERS)
def test_cuda_matches_cpu_in_float64(name):
    X, y = make_planted_task("needle", n_texts=120, d_model=16, n_classes=3,
                             dtype=np.float64, random_state=0, return_ragged=True)
    cpu = MAKERS[name]("cpu").fit(X, y)
    gpu = MAKERS[name]("cuda").fit(X, y)
    assert gpu.module_.bias.device.type == "cuda"
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("name", MAKERS)
def test_auto_device_picks_cuda_and_float16_input_trains(name):
    X, y = make_planted_task("needle", n_texts=200, d_model=16, dtype=np.float16,
                             random_state=0)
    est = MAKERS[name]("auto").fit(X, y)
    assert est.module_.bias.device.type == "cuda"
    assert est.module_.bias.dtype == torch.float32
    proba = est.predict_proba(RaggedArray.from_list(X))
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_cuda_probe_pickles_and_predicts():
    import pickle

    X, y = make_planted_task("last", n_texts=80, d_model=8, random_state=0)
    est = MAKERS["attention"]("cuda").fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
