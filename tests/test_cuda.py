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


def test_inspection_of_a_cuda_probe_matches_cpu():
    from sklearn_attnprobe.inspection import max_activating_examples, token_contributions

    X, y = make_planted_task("needle", n_texts=120, d_model=16, n_classes=3,
                             dtype=np.float64, random_state=0, return_ragged=True)
    cpu = MAKERS["attention"]("cpu").fit(X, y)
    gpu = MAKERS["attention"]("cuda").fit(X, y)
    for a, b in zip(token_contributions(gpu, X[:10]), token_contributions(cpu, X[:10])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    found_gpu = max_activating_examples(gpu, X, n_examples=5)
    found_cpu = max_activating_examples(cpu, X, n_examples=5)
    for h in range(4):
        assert ([(e.text, e.token) for e in found_gpu.attention[h]]
                == [(e.text, e.token) for e in found_cpu.attention[h]])


def test_study_protocol_on_cuda(tmp_path):
    protocol = pytest.importorskip("benchmarks.study.protocol")
    X, y = make_planted_task("needle", n_texts=120, d_model=8, random_state=0,
                             return_ragged=True)
    X.save(tmp_path / "x.npz")
    idx = np.random.default_rng(0).permutation(len(y))
    for method in ("mean", "attn-2"):
        row = protocol.run_config(protocol.Config(
            task="needle", n_classes=2, layer=0, method=method,
            data_path=str(tmp_path / "x.npz"), y=np.asarray(y),
            train=np.sort(idx[:96]), test=np.sort(idx[96:]), max_iter=60,
            device="cuda"))
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["method"] == method
