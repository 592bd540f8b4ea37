"""The study runner (benchmarks/study): protocol, parallel backends, outputs.

The real study runs SmolLM2 for minutes; here the protocol runs on planted
activations, and the whole command end to end on a tiny random model.
"""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sklearn_attnprobe import RaggedArray
from sklearn_attnprobe.datasets import make_planted_task

study = pytest.importorskip("benchmarks.study.protocol",
                            reason="run the tests from the repository root")
from benchmarks.study.figures import head_to_head, markdown_tables  # noqa: E402
from benchmarks.study.protocol import (  # noqa: E402
    Config,
    _jobs,
    run_attention_configs,
    run_config,
    run_configs,
)

# attn-1 and attn-2 run as one job (one stacked search over both head counts)
METHODS = ("mean", "last", "attn-1", "mean-adamw", "attn-2")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    X, y = make_planted_task("needle", n_texts=120, d_model=8, random_state=0,
                             return_ragged=True)
    path = tmp_path_factory.mktemp("acts") / "needle.npz"
    X.save(path)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    train, test = np.sort(idx[:96]), np.sort(idx[96:])
    configs = [Config(task="needle", n_classes=2, layer=0, method=m, data_path=str(path),
                      y=np.asarray(y), train=train, test=test, max_iter=40)
               for m in METHODS]
    return X, y, configs


def _key(row):
    return (row["method"], row["best_weight_decay"], round(row["cv_accuracy"], 12),
            round(row["test_accuracy"], 12))


def test_run_config_row(planted):
    X, y, configs = planted
    row = run_config(configs[2])
    assert row["method"] == "attn-1" and row["n_train"] == 96 and row["n_test"] == 24
    assert row["best_weight_decay"] in (0.0, 1e-3, 1e-2, 1e-1)
    assert 0.0 <= row["test_accuracy"] <= 1.0
    # attention probes report the seed's entropy statistic, pooled ones do not
    assert 0.0 < row["entropy_ratio"] <= 1.0
    assert np.isnan(run_config(configs[0])["entropy_ratio"])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_mean_adamw_search_is_gridsearchcv(n_classes):
    # the batched search trains GridSearchCV(MeanProbeClassifier(solver="adamw"))'s
    # 20 models as one stack: the same scores, choice and refit
    from sklearn.model_selection import GridSearchCV

    from sklearn_attnprobe import MeanProbeClassifier

    rng = np.random.default_rng(n_classes)
    X = [rng.normal(size=(int(rng.integers(3, 9)), 6)).astype(np.float32) for _ in range(90)]
    y = rng.integers(0, n_classes, size=90)
    for x, label in zip(X, y):
        x[:, label] += 0.4
    grid = GridSearchCV(MeanProbeClassifier(solver="adamw", max_iter=60, random_state=0),
                        {"weight_decay": list(study.WEIGHT_DECAYS)}, cv=5).fit(X, y)
    fast = study.make_search("mean-adamw", max_iter=60).fit(X, y)
    np.testing.assert_allclose(fast.cv_results_["mean_test_score"],
                               grid.cv_results_["mean_test_score"])
    assert fast.best_params_ == grid.best_params_
    np.testing.assert_allclose(fast.decision_function(X),
                               grid.best_estimator_.decision_function(X), atol=1e-5)


def test_run_configs_keeps_order_and_matches_serial(planted):
    _, _, configs = planted
    parallel = run_configs(configs, n_jobs=2)
    assert [r["method"] for r in parallel] == list(METHODS)
    serial = [run_config(c) for c in configs]
    assert [_key(r) for r in parallel] == [_key(r) for r in serial]


def test_attention_methods_in_one_search_match_their_own_searches(planted):
    # one search over n_heads=[1, 2] and a refit per head count: each row is
    # the one its own search would give (choice, CV score, test predictions)
    _, _, configs = planted
    attention = [c for c in configs if c.method.startswith("attn-")]
    together = run_attention_configs(attention)
    alone = [run_config(c) for c in attention]
    assert [_key(r) for r in together] == [_key(r) for r in alone]
    for a, b in zip(together, alone):
        assert a["_pred"] == b["_pred"]
        assert a["fit_seconds"] > 0 and a["entropy_ratio"] == pytest.approx(b["entropy_ratio"])


def test_attention_jobs_are_grouped_only_with_work_for_every_worker(planted):
    _, _, configs = planted
    twice = configs + [replace(c, layer=1) for c in configs]  # two (task, layer) pairs
    attention = [i for i, c in enumerate(twice) if c.method.startswith("attn-")]
    grouped = _jobs(twice, n_workers=1)
    assert sorted(len(j) for j in grouped if len(j) > 1) == [2, 2]
    assert sorted(i for j in grouped if len(j) > 1 for i in j) == attention
    assert sorted(i for j in grouped for i in j) == list(range(len(twice)))
    # two groups cannot keep two workers busy twice over: one job per config
    assert _jobs(twice, n_workers=2) == [[i] for i in range(len(twice))]


def test_dask_local_cluster_gives_the_same_results(planted):
    """The same jobs on a real dask.distributed LocalCluster (2 processes)."""
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    _, _, configs = planted
    expected = [_key(r) for r in run_configs(configs, n_jobs=1)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, parallel_config(backend="dask"):
        rows = run_configs(configs, n_jobs=-1)
        # the jobs did run on the cluster's workers
        assert len(client.scheduler_info()["workers"]) == 2
    assert [_key(r) for r in rows] == expected


def _rows(values, n_classes=2):
    return [{"task": t, "layer": layer, "n_classes": n_classes, "method": m,
             "test_accuracy": v, "entropy_ratio": 0.5}
            for (t, layer, m), v in values.items()]


def test_head_to_head_counts():
    rows = _rows({("a", 1, "mean"): 0.8, ("a", 1, "attn-8"): 0.9, ("a", 1, "last"): 0.7,
                  ("n", 1, "mean"): 0.6, ("n", 1, "attn-8"): 0.6, ("n", 1, "last"): 0.9})
    acc = {}
    for r in rows:
        acc.setdefault((r["task"], r["layer"]), {})[r["method"]] = r["test_accuracy"]
    lines = head_to_head(acc, needle_tasks=["n"])
    assert "attn-8 beats mean (L-BFGS) on 1 of 2 (task, layer) pairs (1 ties)." in lines[0]
    assert any("last-token beats mean on 1 of 1 needle-task pairs" in s for s in lines)
    assert any("mean beats last-token on 1 of 1 other pairs" in s for s in lines)
    table = markdown_tables(rows, needle_tasks=["n"])
    assert "| a | 2 | 1 |" in table and "**0.900**" in table


def test_default_output_folder_is_outside_the_tracked_results(tmp_path):
    import subprocess

    from benchmarks.study.run import RESULTS, parse_args

    quick, full = parse_args(["--quick"]), parse_args([])
    assert quick.out != full.out
    repo = Path(__file__).resolve().parent.parent
    for args in (quick, full):
        out = (repo / args.out).resolve()  # relative: the folder the command runs in
        assert RESULTS.resolve() not in (out, *out.parents)
        assert args.cache == args.out / "cache"
        # ignored by git when run from the repository root
        rel = out.relative_to(repo) / "results.csv"
        done = subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=repo)
        if done.returncode == 128:
            pytest.skip("not a git checkout")
        assert done.returncode == 0, f"{rel} is not ignored by git"
    assert parse_args(["--out", str(tmp_path)]).out == tmp_path


def test_command_end_to_end_on_a_tiny_model(tmp_path, capsys):
    """``python -m benchmarks.study`` with every output, on a tiny random model."""
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    from benchmarks.study import tasks
    from benchmarks.study.run import main

    name = "natural_language"
    try:
        tasks.build_task(name, n_per_class=2)
    except ValueError as exc:  # its source package is missing
        pytest.skip(str(exc))
    argv = ["--model", "tiny-random", "--tasks", name, "--n-per-class", "10",
            "--max-iter", "15", "--n-jobs", "2", "--out", str(tmp_path)]
    rows = main(argv)
    printed = capsys.readouterr().out
    # the closing lines name every file the run wrote (the cache apart)
    listed = printed[printed.index(f"files in {tmp_path}/:"):].splitlines()[1:]
    listed = {line.strip() for line in listed if line.startswith("  ")}
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
               if p.is_file() and "cache" not in p.relative_to(tmp_path).parts}
    assert listed == on_disk
    assert f"wrote {len(on_disk)} files" in printed
    assert f"activation cache (a rerun skips the model): {tmp_path / 'cache'}/" in printed
    n_layers, n_methods = 2, 6
    assert len(rows) == n_layers * n_methods
    with open(tmp_path / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    with open(tmp_path / "accuracy.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["layer"]) for r in table] == [1, 3]
    assert float(table[0]["attn-8"]) == pytest.approx(next(
        r["test_accuracy"] for r in rows if r["layer"] == 1 and r["method"] == "attn-8"),
        abs=5e-4)
    md = (tmp_path / "results.md").read_text()
    assert "Test accuracy" in md and "attn-8" in md and "tiny random" in md
    for fig in ("accuracy_pairs.png", "entropy_pairs.png"):
        assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG"
    reports = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert f"{name}_L1_attn-8.html" in reports and f"{name}_L3_attn-1.txt" in reports
    manifest = json.loads((tmp_path / "datasets.json").read_text())
    assert manifest[0]["name"] == name
    # a second run reuses the activation files of the first
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("layer*.npz")}
    main(argv + ["--methods", "mean"])
    # the cached run still names the model that made the activations
    assert "tiny random" in (tmp_path / "results.md").read_text()
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("layer*.npz")}
    assert before == after and len(before) == n_layers
    X = RaggedArray.load(next(iter(before)), mmap_mode="r")
    assert X.d_model == 32 and len(X) == len(tasks.build_task(name, n_per_class=10).y)


def test_paired_bootstrap_separates_a_real_difference_from_a_tie():
    from benchmarks.study import stats

    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    b = rng.random(400) < 0.6
    diff, low, high = stats.paired_bootstrap(a, b)
    assert low <= diff <= high
    assert stats.verdict(low, high) == "win"
    assert stats.verdict(*stats.paired_bootstrap(b, a)[1:]) == "loss"
    # the same predictions shuffled: no difference the interval can see
    c = a.copy()
    rng.shuffle(c[:10])
    assert stats.verdict(*stats.paired_bootstrap(a, c)[1:]) == "tie"


def test_claims_count_wins_ties_and_losses():
    from benchmarks.study import stats

    y = np.arange(200) % 2
    rows = []
    for task, good in (("t1", "mean"), ("t2", "last")):
        for m in ("mean", "last"):
            pred = y if m == good else 1 - y
            rows += [{"task": task, "layer": 1, "method": m, "text": i,
                      "y_true": int(y[i]), "y_pred": int(pred[i]), "entropy_ratio": ""}
                     for i in range(200)]
    ivs = stats.pairwise_intervals(rows, n_boot=200)
    assert {(r["task"], r["verdict"]) for r in ivs} == {("t1", "win"), ("t2", "loss")}
    table = stats.claims_markdown(ivs)
    assert "| mean beats last-token (mean vs last) | 1 | 0 | 1 |" in table


def test_position_figure_only_for_the_position_family(tmp_path):
    from benchmarks.study.position_figure import plot_position

    rows = [{"task": "bbc_topic", "layer": 1, "method": "mean", "text": i,
             "y_true": 0, "y_pred": i % 2} for i in range(10)]
    assert plot_position(rows, tmp_path / "none.png") is None
    rows = [dict(r, task=f"needle_{p}") for p in ("start", "middle", "end") for r in rows]
    out = plot_position(rows, tmp_path / "pos.png")
    assert out is not None and (tmp_path / "pos.png").stat().st_size > 1000


def _interval(task, layer, a, b, low, high, statistic="accuracy"):
    return {"task": task, "layer": layer, "claim": f"{a} vs {b}", "statistic": statistic,
            "a": a, "b": b, "n_test": 50, "difference": (low + high) / 2,
            "low": low, "high": high, "verdict": "tie"}


def test_interval_bars_follow_the_plotted_orientation():
    from benchmarks.study.figures import interval_bars

    ivs = [_interval("t", 1, "attn-8", "mean", 0.02, 0.10),
           _interval("t", 2, "mean", "attn-8", -0.05, 0.01),
           _interval("t", 1, "attn-8", "mean", 0.3, 0.4, statistic="entropy")]
    # plotted as x = mean, y = attn-8: the interval of y - x
    assert interval_bars(ivs, "mean", "attn-8", "accuracy") == {
        ("t", 1): (0.02, 0.10), ("t", 2): (-0.01, 0.05)}
    assert interval_bars(ivs, "attn-8", "mean", "accuracy")[("t", 1)] == (-0.10, -0.02)
    assert interval_bars(ivs, "mean", "attn-8", "entropy") == {("t", 1): (0.3, 0.4)}
    assert interval_bars(None, "mean", "attn-8", "accuracy") == {}


def test_every_plotted_pair_gets_an_interval():
    from benchmarks.study import stats
    from benchmarks.study.figures import ACCURACY_PAIRS, ENTROPY_PAIRS, figure_claims

    claims = stats.CLAIMS + figure_claims()
    have = {(s, a, b) for _, s, a, b in claims} | {(s, b, a) for _, s, a, b in claims}
    assert all(("accuracy", x, y) in have for x, y in ACCURACY_PAIRS)
    assert all(("entropy", x, y) in have for x, y in ENTROPY_PAIRS)
    assert not figure_claims(claims)


def test_scatter_figures_draw_interval_bars(tmp_path, monkeypatch):
    """One bar per point whose pair has an interval, from x + low to x + high."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from benchmarks.study import stats
    from benchmarks.study.figures import figure_claims, plot_figures

    y = np.arange(60) % 2
    rng = np.random.default_rng(0)
    pred_rows, rows = [], []
    for task, k in (("a", 2), ("b", 3)):
        for m in ("mean", "last", "attn-8"):
            pred = np.where(rng.random(60) < 0.8, y, 1 - y)
            pred_rows += [{"task": task, "layer": 1, "method": m, "text": i,
                           "y_true": int(y[i]), "y_pred": int(pred[i]),
                           "entropy_ratio": ""} for i in range(60)]
            rows.append({"task": task, "layer": 1, "n_classes": k, "method": m,
                         "test_accuracy": float(np.mean(pred == y)),
                         "entropy_ratio": float("nan")})
    ivs = stats.pairwise_intervals(pred_rows, n_boot=200,
                                   claims=stats.CLAIMS + figure_claims())
    drawn = []
    real = matplotlib.axes.Axes.vlines

    def spy(self, x, ymin, ymax, *args, **kwargs):
        drawn.append((list(x), list(ymin), list(ymax)))
        return real(self, x, ymin, ymax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "vlines", spy)
    paths = plot_figures(rows, tmp_path, ivs)
    # no attention probe with 1 or 2 heads ran: no entropy figure
    assert [p.name for p in paths] == ["accuracy_pairs.png"]
    assert (tmp_path / "accuracy_pairs.png").read_bytes()[:4] == b"\x89PNG"
    # the pairs among mean, last and attn-8: (last, mean), (mean, attn-8),
    # (last, attn-8), two points each, every one with its bar
    assert len(drawn) == 3 and all(len(x) == 2 for x, _, _ in drawn)
    acc = {(r["task"], r["method"]): r["test_accuracy"] for r in rows}
    assert all(lo <= hi for _, low, high in drawn for lo, hi in zip(low, high))
    # (mean, attn-8) is the second pair plotted: x = mean accuracy, y = attn-8
    x, low, high = drawn[1]
    for task, xi, lo, hi in zip(("a", "b"), x, low, high):
        assert xi == pytest.approx(acc[(task, "mean")])
        assert lo - 1e-3 <= acc[(task, "attn-8")] <= hi + 1e-3
    # without intervals: the same figures, no bars
    drawn.clear()
    plot_figures(rows, tmp_path)
    assert drawn == []


def test_attention_search_stops_on_held_out_loss_and_refits_for_the_cv_steps():
    # the study's two departures from the seed: its CV models also stop on
    # their held-out loss, and the refits train for the steps the CV chose
    # (plain probes with a step count: no such parameters of their own)
    search = study.make_search("attn-2")
    assert search.held_out_stopping == study.HELD_OUT_PATIENCE
    assert search.refit_steps == "cv"
    assert not {"held_out_stopping", "refit_steps"} & set(search._estimator_params())
    assert study.make_search("mean").get_params().get("held_out_stopping") is None
