"""The training candidates of benchmarks/study/candidates.py: each patch does
what its name says while active and is undone afterwards."""

import numpy as np
import pytest
import torch

pytest.importorskip("benchmarks.study.candidates",
                    reason="run the tests from the repository root")
from benchmarks.study import candidates  # noqa: E402

from sklearn_attnprobe import (  # noqa: E402
    AttentionProbeClassifier,
    MeanProbeClassifier,
)
from sklearn_attnprobe._modules import AttentionProbeModule  # noqa: E402
from sklearn_attnprobe.datasets import make_planted_task  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return make_planted_task("shift", n_texts=80, d_model=10, n_classes=3,
                             dtype=np.float64, random_state=0, return_ragged=True)


def test_mean_init_starts_as_the_mean_probe(data):
    X, y = data
    mean = MeanProbeClassifier(weight_decay=1e-2).fit(X, y)
    with candidates.candidate("mean-init", (mean.coef_.T, mean.intercept_)):
        probe = AttentionProbeClassifier(n_heads=4, max_iter=1, n_iter_no_change=None,
                                         learning_rate=1e-12, random_state=0)
        probe.fit(X, y)
    # one step of a vanishing learning rate: the probe is still its start
    np.testing.assert_allclose(probe.decision_function(X), mean.decision_function(X),
                               atol=1e-6)
    values = probe.module_.value.detach()
    assert not torch.allclose(values[0], values[1])  # the heads differ
    fresh = AttentionProbeModule(10, 4, 3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(fresh.value.sum(0), torch.as_tensor(mean.coef_.T,
                                                                  dtype=fresh.value.dtype))


def test_random_query_is_undone_after_the_block():
    with candidates.candidate("random-query"):
        inside = AttentionProbeModule(16, 2, 1)
    after = AttentionProbeModule(16, 2, 1)
    assert float(inside.query.abs().sum()) > 0
    assert float(inside.query.std()) == pytest.approx(1 / 4, rel=0.5)
    assert float(after.query.abs().sum()) == 0.0


def test_unknown_candidate_is_refused():
    with pytest.raises(ValueError, match="unknown candidate"):
        with candidates.candidate("bigger-model"):
            pass


def test_mean_init_in_a_stack_of_mixed_head_counts():
    from sklearn_attnprobe._modules import StackedAttentionProbeModule

    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    with candidates.candidate("mean-init", (W, b)):
        stack = StackedAttentionProbeModule(3, 6, [1, 2, 4], 3, dtype=torch.float64)
    value = stack.value.detach()
    # each model's heads sum to the mean probe's weights (uniform attention at step 0)
    for rows in ([0], [1, 2], [3, 4, 5, 6]):
        np.testing.assert_allclose(value[rows].sum(0).numpy(), W, atol=1e-12)
    assert not torch.allclose(value[1], value[2])
    np.testing.assert_allclose(stack.bias.detach().numpy(), np.tile(b, (3, 1)))
