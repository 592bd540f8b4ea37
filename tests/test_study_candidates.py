"""The training candidates of benchmarks/study/candidates.py: each patch does
what its name says while active and is undone afterwards."""

import numpy as np
import pytest
import torch

pytest.importorskip("benchmarks.study.candidates",
                    reason="run the tests from the repository root")
from benchmarks.study import candidates, candidates_refit  # noqa: E402

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


def test_planted_jobs_cover_the_d128_tasks_of_choose_defaults():
    from benchmarks.study.candidates import planted_jobs

    jobs = planted_jobs()
    tasks = {(j["task"], j["n_classes"]) for j in jobs}
    assert tasks == {("shift", 2), ("shift", 8), ("needle", 2), ("last", 2)}
    assert len(jobs) == len(tasks) * 2 * 2  # 1 and 8 heads, two candidates


def test_defaults_table_has_a_column_per_task(tmp_path):
    from benchmarks.choose_defaults import TASKS, write_table

    rows = [dict(label=label, setting="wd 0", params={"n_heads": 1}, test_accuracy=0.5 + k / 100,
                 fit_s=1.0) for k, (label, *_) in enumerate(TASKS)]
    write_table(rows, str(tmp_path))
    lines = (tmp_path / "defaults.md").read_text().splitlines()
    header, row = lines[2], lines[4]
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [t[0] for t in TASKS]
    assert [c.strip() for c in row.strip("|").split("|")][2:] == [
        f"{0.5 + k / 100:.3f} (1.0 s)" for k in range(len(TASKS))]


def _fit_in(variant, data, **params):
    X, y = data
    calls = []
    with candidates_refit.refit_variant(variant, calls):
        probe = AttentionProbeClassifier(n_heads=3, random_state=0, **params).fit(X, y)
    return probe, calls


def test_tied_values_keep_the_heads_equal(data):
    probe, calls = _fit_in("tied-values", data, max_iter=30, n_iter_no_change=None)
    values = probe.module_.value.detach()
    assert calls  # the CPU step ran, where the gradients are tied
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[0], values[2])
    untied, _ = _fit_in("baseline", data, max_iter=30, n_iter_no_change=None)
    assert not torch.equal(untied.module_.value[0], untied.module_.value[1])


def test_entropy_variant_sharpens_the_attention_and_is_undone(data):
    X, _ = data
    base, _ = _fit_in("baseline", data, max_iter=60, n_iter_no_change=None)
    sharp, calls = _fit_in("entropy-1.0", data, max_iter=60, n_iter_no_change=None)
    assert calls
    assert sharp.attention_entropy(X).entropy.mean() < base.attention_entropy(X).entropy.mean()
    from sklearn_attnprobe._manual_step import _ManualObjective
    assert _ManualObjective.entropy_penalty == 0.0


def test_warmup_and_burnin_change_only_the_start(data):
    from sklearn_attnprobe._adamw import AdamW
    from sklearn_attnprobe._loops import StoppingRule
    step, update = AdamW.step, StoppingRule.update
    base, _ = _fit_in("baseline", data, max_iter=40, n_iter_no_change=None)
    warm, _ = _fit_in("warmup-20", data, max_iter=40, n_iter_no_change=None)
    # the same first objective (step 0 precedes any update), different after
    assert warm.loss_curve_[0] == base.loss_curve_[0]
    assert warm.loss_curve_[5] != base.loss_curve_[5]
    # a rule that would stop at once (patience 0, tol huge) waits out the burn-in
    early, _ = _fit_in("baseline", data, max_iter=100, tol=1e3, n_iter_no_change=1)
    late, _ = _fit_in("burnin-20", data, max_iter=100, tol=1e3, n_iter_no_change=1)
    assert early.n_iter_ == 3 and late.n_iter_ == 22
    assert (AdamW.step, StoppingRule.update) == (step, update)


def test_unknown_refit_variant_is_refused():
    with pytest.raises(ValueError, match="unknown refit variant"):
        with candidates_refit.refit_variant("bigger-model", []):
            pass


def test_learning_rate_screen_rules_and_restore(tmp_path):
    from benchmarks.study import learning_rate

    from sklearn_attnprobe import _attention
    from sklearn_attnprobe._training import auto_learning_rate

    X, y = make_planted_task("needle", n_texts=60, d_model=300, random_state=0,
                             return_ragged=True)
    auto = auto_learning_rate(X)
    assert learning_rate.learning_rate_of("fixed-1e-2", X) == 1e-2
    assert learning_rate.learning_rate_of("auto", X) == "auto"
    assert learning_rate.learning_rate_of("auto-values", X) == {**auto, "query": 1e-2}
    X.save(tmp_path / "x.npz")
    original = _attention.auto_learning_rate
    rows = []
    for rule in learning_rate.RULES:
        job = {"model": "m", "task": "needle_x", "layer": 1, "path": str(tmp_path / "x.npz"),
               "train": np.arange(40), "test": np.arange(40, 60), "y": np.asarray(y),
               "rule": rule, "seed": 0, "weight_decay": 1e-2}
        rows.append(learning_rate.run_job(job))
        assert _attention.auto_learning_rate is original  # the patch is undone
    by_rule = {r["candidate"]: r for r in rows}
    assert by_rule["fixed-1e-2"]["value_learning_rate"] == 1e-2
    assert by_rule["auto"]["query_learning_rate"] == pytest.approx(auto["query"], abs=1e-6)
    assert by_rule["auto-values"]["query_learning_rate"] == 1e-2
    assert by_rule["auto-values"]["value_learning_rate"] == pytest.approx(auto["value"],
                                                                          abs=1e-6)
    table = learning_rate.summary_markdown(rows).splitlines()
    assert [line.split(" | ")[2] for line in table[2:]] == list(learning_rate.RULES)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_stopping_screen_rules_and_restore(tmp_path, monkeypatch):
    """The refit-stopping screen: only ``settle`` fits with the settling
    rule, and runs at least as long as ``rule``; ``best-iterate`` ends at the
    ``rule`` fit's lowest objective; the settling patch is undone."""
    from benchmarks.study import learning_rate, stopping

    from sklearn_attnprobe import AttentionProbeClassifier
    from sklearn_attnprobe._loops import StoppingRule

    X, y = make_planted_task("needle", n_texts=60, d_model=32, random_state=0,
                             return_ragged=True)
    X.save(tmp_path / "x.npz")
    settled = set()
    update = StoppingRule.update

    def spy(self, loss, rows):
        settled.add(self.settle)
        return update(self, loss, rows)

    monkeypatch.setattr(StoppingRule, "update", spy)
    init = StoppingRule.__init__
    rows, flags = {}, {}
    for rule in stopping.RULES:
        job = {"model": "m", "task": "needle_x", "layer": 1, "path": str(tmp_path / "x.npz"),
               "train": np.arange(40), "test": np.arange(40, 60), "y": np.asarray(y),
               "rule": rule, "seed": 0, "weight_decay": 1e-2}
        settled.clear()
        rows[rule] = stopping.run_job(job)
        flags[rule] = settled.copy()
        assert StoppingRule.__init__ is init
    assert flags == {"rule": {False}, "settle": {True}, "best-iterate": {False}}
    plain = AttentionProbeClassifier(n_heads=8, weight_decay=1e-2, random_state=0)
    plain.fit(X[np.arange(40)], np.asarray(y)[:40])
    assert rows["rule"]["n_iter"] == plain.n_iter_
    assert rows["settle"]["n_iter"] >= plain.n_iter_
    curve = np.asarray(plain.loss_curve_)
    assert rows["best-iterate"]["n_iter"] == int(np.argmin(curve)) + 1
    assert rows["best-iterate"]["final_objective"] == pytest.approx(curve.min(), abs=1e-5)
    table = learning_rate.summary_markdown(list(rows.values()), rules=stopping.RULES)
    assert [line.split(" | ")[2] for line in table.splitlines()[2:]] == list(stopping.RULES)
