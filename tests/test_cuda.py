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


def test_cv_classes_on_cuda_match_cpu():
    from sklearn_attnprobe import AttentionProbeClassifierCV, MeanProbeClassifierCV

    X, y = make_planted_task("needle", n_texts=120, d_model=12, dtype=np.float64,
                             random_state=0)
    for CV, params in [(AttentionProbeClassifierCV, dict(n_heads=2, max_iter=40,
                                                         random_state=0)),
                       (MeanProbeClassifierCV, {})]:
        cpu = CV(cv=3, **params).fit(X, y)
        gpu = CV(cv=3, device="cuda", **params).fit(X, y)
        np.testing.assert_allclose(gpu.cv_results_["mean_test_score"],
                                   cpu.cv_results_["mean_test_score"], atol=1 / 40)
        assert gpu.best_estimator_.module_.bias.device.type == "cuda"


def test_half_precision_compute_on_cuda():
    X, y = make_planted_task("needle", n_texts=300, d_model=16, dtype=np.float16,
                             random_state=0)
    for dtype in ("float16", "bfloat16"):
        est = AttentionProbeClassifier(n_heads=2, compute_dtype=dtype, device="cuda",
                                       random_state=0).fit(X, y)
        assert est.module_.query.dtype == torch.float32
        assert est.score(X, y) > 0.8
